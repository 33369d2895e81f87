"""What a server allows: upload limits, the model-call queue, sessions and generation defaults."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

MB = 1024 * 1024


@dataclass
class ServeSettings:
    """Limits and defaults of one server.

    max_image_bytes: largest image file accepted (after base64 decoding); larger uploads get 413.
    max_pixels: largest ``width * height`` accepted (checked from the header, before decoding); larger get 413.
    max_concurrency: how many requests may *wait* for the model while one runs; one more gets 503 + Retry-After.
    session_ttl: seconds a session may sit idle (no request) before it is dropped; later use of its id gets 404.
    max_sessions: live sessions at most; creating one more evicts the least recently used idle session (429 only
        when every session is in the middle of a request).
    max_new_tokens: default and upper bound of a request's ``max_new_tokens``.
    force_seg: default of a request's ``force_seg``.
    model_name: what ``GET /v1/model`` calls the model (default: the checkpoint's ``name_or_path``).
    clock: monotonic seconds; tests inject a fake one to expire sessions without sleeping.
    """

    max_image_bytes: int = 20 * MB
    max_pixels: int = 40_000_000
    max_concurrency: int = 8
    session_ttl: float = 600.0
    max_sessions: int = 16
    max_new_tokens: int = 512
    force_seg: bool = False
    model_name: str | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        from ..errors import InputError

        for name in ("max_image_bytes", "max_pixels", "max_sessions", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_concurrency < 0:
            raise InputError(f"max_concurrency must be 0 or more, got {self.max_concurrency}")
        if self.session_ttl <= 0:
            raise InputError(f"session_ttl must be positive, got {self.session_ttl}")

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: one image as base64 (4/3 of its bytes) plus room for the other fields."""
        return self.max_image_bytes * 4 // 3 + 64 * 1024
