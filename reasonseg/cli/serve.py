"""`reasonseg serve`: the HTTP API and web page (FastAPI under uvicorn) around one loaded model."""

from __future__ import annotations

import sys

from ..errors import InputError, UnsupportedError
from .common import add_model_arguments, load_segmenter

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="serve the model over HTTP: JSON API and a web page")
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-image-mb", type=float, default=20.0, help="largest image upload, in MiB")
    parser.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, width x height")
    parser.add_argument(
        "--max-concurrency", type=int, default=8, metavar="N",
        help="requests that may wait for the model while one runs; more get 503 + Retry-After",
    )
    parser.add_argument("--session-ttl", type=float, default=600.0, metavar="SECONDS", help="idle time before a session is dropped")
    parser.add_argument(
        "--max-sessions", type=int, default=16, metavar="N",
        help="live sessions at most (each holds image features and a KV cache); the least recently used idle one is evicted",
    )
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(func=run)


def settings_from_args(args):
    from ..serving.settings import ServeSettings

    if args.max_image_mb <= 0:
        raise InputError(f"--max-image-mb must be positive, got {args.max_image_mb}")
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be between 1 and 65535, got {args.port}")
    return ServeSettings(
        max_image_bytes=int(args.max_image_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        max_concurrency=args.max_concurrency,
        session_ttl=args.session_ttl,
        max_sessions=args.max_sessions,
        max_new_tokens=args.max_new_tokens,
        force_seg=args.force_seg,
        model_name=str(args.model) if args.model else None,
    )


def run(args) -> int:
    try:
        import uvicorn

        from ..serving.app import create_app
    except ModuleNotFoundError as err:
        raise UnsupportedError(
            f"serving needs the 'serve' extra ({err.name} is missing): pip install 'reasonseg[serve]'"
        ) from None
    settings = settings_from_args(args)
    segmenter = load_segmenter(args)
    if settings.model_name is None:
        settings.model_name = "default demo model"
    app = create_app(segmenter, settings)
    if args.host not in LOOPBACK:
        print(
            f"note: listening on {args.host}: the API has no authentication; anyone who can reach this port can use it",
            file=sys.stderr,
        )
    print(f"serving on http://{args.host}:{args.port}/ (API docs at /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    return 0
