"""HTTP serving: a FastAPI app (JSON API + a small web page) around one :class:`~reasonseg.inference.Segmenter`.

``create_app(segmenter, settings)`` builds the app; ``reasonseg serve`` runs it under uvicorn. FastAPI is only
imported when the app is built, so ``ServeSettings`` and the helpers here load without the ``serve`` extra.
"""

from __future__ import annotations

from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
