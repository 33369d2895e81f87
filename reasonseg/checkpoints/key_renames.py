"""Key renames between an original checkpoint layout and reasonseg's, written once and read both ways.

A table is a list of ``(original, native)`` templates. Text outside braces is literal; ``{...}`` is a regex group
that both templates hold in the same order and that carries over. A template ending with ``.`` renames a prefix;
any other names a whole key.
"""

from __future__ import annotations

import re

_GROUP = re.compile(r"(\{[^{}]*\})")


def _compile(source: str, target: str) -> tuple[re.Pattern, str]:
    pattern = "".join(f"({part[1:-1]})" if part.startswith("{") else re.escape(part) for part in _GROUP.split(source))
    numbers = iter(range(1, 100))
    replacement = _GROUP.sub(lambda _: f"\\g<{next(numbers)}>", target.replace("\\", "\\\\"))
    return re.compile("^" + pattern + ("" if source.endswith(".") else "$")), replacement


class RenameTable:
    def __init__(self, pairs: list[tuple[str, str]]):
        self._to_native = [_compile(original, native) for original, native in pairs]
        self._to_original = [_compile(native, original) for original, native in pairs]

    @staticmethod
    def _apply(key: str, rules) -> str | None:
        for pattern, replacement in rules:
            new_key, count = pattern.subn(replacement, key)
            if count:
                return new_key
        return None

    def to_native(self, key: str) -> str | None:
        """The native name of an original key; None when no rule applies."""
        return self._apply(key, self._to_native)

    def to_original(self, key: str) -> str | None:
        """The original name of a native key; None when no rule applies."""
        return self._apply(key, self._to_original)
