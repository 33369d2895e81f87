"""How every reader reports a bad record: raise with ``strict``, else collect (or warn) and skip it."""

from __future__ import annotations

import warnings

from ..errors import InputError


def report_problem(message: str, strict: bool, problems: list[str] | None) -> None:
    """``message`` is one line naming the file and the reason."""
    if strict:
        raise InputError(message)
    if problems is not None:
        problems.append(message)
    else:
        warnings.warn(message, stacklevel=3)


def one_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_coco_image_entry(info) -> bool:
    """A COCO ``images`` entry with integer ``id``/``height``/``width`` (positive sizes) and a ``file_name``."""
    return (
        isinstance(info, dict)
        and is_int(info.get("id"))
        and isinstance(info.get("file_name"), str)
        and is_int(info.get("height"))
        and is_int(info.get("width"))
        and info["height"] > 0
        and info["width"] > 0
    )


class ImageFiles:
    """The image files a COCO-style reader has met: each looked up on disk once (a stat, no read); a missing one is
    reported once and every record of it is skipped."""

    def __init__(self, image_root, source, check: bool, strict: bool, problems: list[str] | None):
        self.image_root, self.source, self.check = image_root, source, check
        self.strict, self.problems = strict, problems
        self.missing: set[int] = set()

    def path(self, info: dict):
        """The path of COCO image entry ``info``, or None when its file is missing."""
        image_id = info["id"]
        if image_id in self.missing:
            return None
        path = self.image_root / info["file_name"]
        if self.check and not path.is_file():
            self.missing.add(image_id)
            report_problem(f"{path}: image file not found (image {image_id} of {self.source})", self.strict, self.problems)
            return None
        return path
