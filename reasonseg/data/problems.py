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
