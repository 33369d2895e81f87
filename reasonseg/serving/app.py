"""The FastAPI app: ``create_app(segmenter, settings)``.

Endpoints (see docs/serving.md): ``POST /v1/segment``, ``POST /v1/sessions``, ``POST /v1/sessions/{id}/messages``,
``DELETE /v1/sessions/{id}``, ``GET /v1/model``, ``GET /healthz``, the web page at ``/`` and OpenAPI at ``/docs``.
Every error is JSON ``{"error": <short name>, "detail": <one sentence>}`` with a 4xx code (500 only for bugs).
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__ as _version
from ..errors import InputError, ReasonSegError
from .images import ImageRejected, decode_base64, decode_image
from .page import PAGE_HTML
from .queue import ModelQueue, QueueFull
from .render import answer_object
from .sessions import SessionNotFound, SessionStore, TooManySessions
from .settings import ServeSettings

log = logging.getLogger("reasonseg.serving")

MAX_PROMPT_CHARS = 4000
_FULL = "all {n} sessions are answering right now; retry shortly or delete a session you no longer need"


# ----------------------------------------------------------------------------------------------------------- errors
class ApiError(Exception):
    """An error answered as ``{"error", "detail"}`` with ``status`` (and optional headers)."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


class BodyTooLarge(HTTPException):
    """Raised while the request body streams in; an HTTPException so FastAPI's body reader passes it through."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


class ContextFull(InputError):
    """The conversation has used up the language model's context."""


def _error_response(status: int, error: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _status_name(status: int) -> str:
    if status == 422:
        return "validation_error"
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def _describe_validation(errors: list[dict]) -> str:
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    return "; ".join(parts)


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes``: at once from Content-Length, else while the body streams in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    response = _error_response(400, "bad_request", "the Content-Length header is not a number")
                    return await response(scope, receive, send)
                if too_big:
                    detail = f"the request body is larger than the limit of {self.max_bytes} bytes"
                    response = _error_response(413, "payload_too_large", detail, {"Connection": "close"})
                    return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        return await self.app(scope, limited_receive, send)


# ---------------------------------------------------------------------------------------------------------- schemas
class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="the question or instruction")
    force_seg: bool | None = Field(None, description="append [SEG] when the answer has none (default: server's)")
    max_new_tokens: int | None = Field(None, ge=1, description="answer length limit (default and maximum: server's)")
    return_overlay: bool = Field(False, description="also return the image with the masks drawn, as PNG base64")


class SegmentRequest(_Options):
    image_base64: str | None = Field(
        None, description="the image file (PNG/JPEG/WebP/GIF/BMP/TIFF) as base64, or a data:image/...;base64, URL"
    )


class MessageRequest(_Options):
    pass


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_base64: str | None = Field(None, description="the image file as base64 (JSON form)")


class RLE(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: str = Field(description="COCO compressed RLE counts (column-major), as pycocotools writes them")


class MaskOut(BaseModel):
    rle: RLE
    area: int
    bbox: list[int] = Field(description="[x, y, width, height]")
    score: float = Field(description="SAM's predicted IoU")


class Answer(BaseModel):
    text: str
    seg_forced: bool
    masks: list[MaskOut]
    overlay_png_base64: str | None = None


class SessionCreated(BaseModel):
    id: str
    idle_ttl_s: float
    width: int
    height: int


class ModelInfo(BaseModel):
    name: str
    backbone: str
    dtype: str
    device: str
    quantization: str | None = None
    max_new_tokens: int
    force_seg: bool
    mask_regions: str = "all"  # what is kept of each mask: every region, or the largest (the processor's setting)


class ErrorBody(BaseModel):
    error: str
    detail: str


def _form_schema(model: type[BaseModel], image_required: bool) -> dict:
    schema = model.model_json_schema()
    properties = {k: v for k, v in schema.get("properties", {}).items() if k != "image_base64"}
    required = [k for k in schema.get("required", []) if k != "image_base64"]
    if "image_base64" in schema.get("properties", {}):
        properties = {"image": {"type": "string", "format": "binary", "description": "the image file"}, **properties}
        if image_required:
            required = ["image", *required]
    return {"type": "object", "properties": properties, "required": required}


def _request_body(model: type[BaseModel], image_required: bool) -> dict:
    json_schema = model.model_json_schema()
    if image_required:
        json_schema = {**json_schema, "required": sorted({*json_schema.get("required", []), "image_base64"})}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema},
                "multipart/form-data": {"schema": _form_schema(model, image_required)},
            },
        }
    }


def _errors(*codes: int) -> dict:
    return {code: {"model": ErrorBody, "description": HTTPStatus(code).phrase} for code in codes}


# ------------------------------------------------------------------------------------------------------ the request
async def _read_payload(request: Request, schema: type[BaseModel], settings: ServeSettings, image_required: bool):
    """The request's fields (validated by ``schema``) and its image bytes (or None), from JSON or multipart."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    image_bytes = None
    if ctype == "application/json" or ctype.endswith("+json"):
        raw = await request.body()
        try:
            data = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ApiError(422, "validation_error", "the JSON body must be an object")
        fields = data
    elif ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=2, max_fields=16)
        fields = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "image" or image_bytes is not None:
                    raise ApiError(422, "validation_error", f"unexpected file field {key!r}; send one file as 'image'")
                image_bytes = await value.read(settings.max_image_bytes + 1)
                await value.close()
            elif key == "image":
                raise ApiError(422, "validation_error", "the 'image' field must be a file upload")
            elif key in fields:
                raise ApiError(422, "validation_error", f"the field {key!r} is given twice")
            else:
                fields[key] = value
    elif not ctype:
        raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")
    else:
        raise ApiError(415, "unsupported_media_type", f"{ctype} is not accepted; send JSON or multipart/form-data")

    for key in ("image_url", "url"):
        if key in fields:
            raise ApiError(422, "validation_error", "image URLs are not fetched; send the image bytes")
    try:
        payload = schema.model_validate(fields)
    except ValidationError as err:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False, include_context=False)]
        ) from None

    encoded = getattr(payload, "image_base64", None)
    if encoded is not None:
        if image_bytes is not None:
            raise ApiError(422, "validation_error", "send the image once: as a file or as image_base64, not both")
        image_bytes = decode_base64(encoded, settings.max_image_bytes)
    if image_required and image_bytes is None:
        where = "an 'image' file" if ctype.startswith("multipart") else "image_base64"
        raise ApiError(422, "validation_error", f"no image: send {where}")
    if isinstance(payload, _Options) and not payload.prompt.strip():
        raise ApiError(422, "validation_error", "prompt: the prompt is empty; ask a question about the image")
    return payload, image_bytes


# ---------------------------------------------------------------------------------------------------------- the app
def _model_info(segmenter, settings: ServeSettings) -> dict:
    model = segmenter.model
    config = model.config
    parameter = next(model.parameters(), None)
    device = str(parameter.device) if parameter is not None else "cpu"
    if getattr(model, "hf_device_map", None):
        device = "device_map:" + ",".join(sorted({str(d) for d in model.hf_device_map.values()}))
    quantization = None
    if getattr(model, "is_loaded_in_4bit", False):
        quantization = "4bit"
    elif getattr(model, "is_loaded_in_8bit", False):
        quantization = "8bit"
    name = settings.model_name or getattr(config, "_name_or_path", "") or type(model).__name__
    return {
        "name": str(name),
        "backbone": str(getattr(config.text_config, "model_type", "unknown")),
        "dtype": str(getattr(model, "dtype", parameter.dtype if parameter is not None else "")).replace("torch.", ""),
        "device": device,
        "quantization": quantization,
        "max_new_tokens": settings.max_new_tokens,
        "force_seg": settings.force_seg,
        "mask_regions": segmenter.processor.settings.mask_regions,
    }


def create_app(segmenter, settings: ServeSettings | None = None) -> FastAPI:
    """A FastAPI app serving ``segmenter`` (one model; all its calls serialised on one worker thread)."""
    settings = settings or ServeSettings()
    queue = ModelQueue(settings.max_concurrency)
    sessions = SessionStore(settings.max_sessions, settings.session_ttl, settings.clock)
    text_config = segmenter.model.config.text_config
    context_limit = int(getattr(text_config, "max_position_embeddings", 0) or 0) or None
    vision_config = getattr(segmenter.model.config, "vision_config", None)
    try:
        image_tokens = (int(vision_config.image_size) // int(vision_config.patch_size)) ** 2
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        image_tokens = 0

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        sessions.clear()
        queue.shutdown(wait=False)

    app = FastAPI(
        title="reasonseg",
        version=_version,
        summary="Reasoning segmentation: ask about an image, get an answer and one mask per [SEG].",
        lifespan=lifespan,
    )
    app.state.segmenter, app.state.settings, app.state.queue, app.state.sessions = segmenter, settings, queue, sessions
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    # ---- error handlers: always {"error", "detail"}
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(ImageRejected)
    async def _image_rejected(request: Request, exc: ImageRejected):
        return _error_response(exc.status, exc.error, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return _error_response(422, "validation_error", _describe_validation(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(jsonable_encoder(exc.detail))
        name = "payload_too_large" if exc.status_code == 413 else _status_name(exc.status_code)
        return _error_response(exc.status_code, name, detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # pragma: no cover - bugs only
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_response(500, "internal_error", "the server failed on this request; see its log")

    # ---- model calls
    def _resolve(payload: _Options) -> tuple[int, bool]:
        max_new = payload.max_new_tokens or settings.max_new_tokens
        if max_new > settings.max_new_tokens:
            raise ApiError(
                422, "validation_error", f"max_new_tokens: at most {settings.max_new_tokens} on this server"
            )
        force = settings.force_seg if payload.force_seg is None else payload.force_seg
        return max_new, force

    def _admit() -> None:
        """Refuse early (before decoding the upload) when the queue is already full."""
        stats = queue.stats()
        if stats["running"] + stats["waiting"] > settings.max_concurrency:
            retry = max(1, round(stats["mean_call_s"] * (stats["waiting"] + 1)))
            raise ApiError(
                503, "overloaded", f"the model is busy: {stats['waiting']} requests are waiting; retry later",
                {"Retry-After": str(retry)},
            )

    async def _call_model(fn, *args):
        try:
            return await queue.run(fn, *args)
        except QueueFull as err:
            raise ApiError(503, "overloaded", str(err), {"Retry-After": str(err.retry_after)}) from None
        except ContextFull as err:
            raise ApiError(422, "context_full", str(err)) from None
        except ReasonSegError as err:
            raise ApiError(422, "invalid_request", str(err)) from None
        except Exception:
            log.exception("model call failed")
            raise ApiError(500, "model_error", "the model failed on this request; see the server log") from None

    async def _decode(data: bytes):
        return await run_in_threadpool(decode_image, data, settings.max_image_bytes, settings.max_pixels)

    def _open_chat(image):
        chat = segmenter.chat(image)
        chat.image_features, chat.sam_embedding  # encode the image now, once, inside the queue
        return chat

    def _token_budget(prompt: str, max_new_tokens: int, chat=None) -> int:
        """``max_new_tokens`` cut to what the language model's context has left (ContextFull when nothing)."""
        if not context_limit:
            return max_new_tokens
        processor = segmenter.processor
        if chat is None or not chat.turns:
            used = 0
            prompt_tokens = len(processor.encode(processor.conversation_prompt([(prompt, None)]))) - 1 + image_tokens
        else:
            used = int(getattr(chat, "_next_position", 0))
            prompt_tokens = len(processor.continuation_ids(prompt)) + 1  # + the end of the previous answer
        left = context_limit - used - prompt_tokens - 1  # - a forced [SEG]
        if left < 1:
            if used:
                raise ContextFull(
                    f"this conversation has used {used} of the model's {context_limit}-token context; "
                    "start a new session or ask a shorter question"
                )
            raise ContextFull(
                f"the prompt takes {prompt_tokens} of the model's {context_limit}-token context; shorten it"
            )
        return min(max_new_tokens, left)

    def _ask(chat, prompt: str, max_new_tokens: int, force_seg: bool):
        max_new_tokens = _token_budget(prompt, max_new_tokens, chat)  # here: the conversation is up to date
        return chat.ask(prompt, max_new_tokens=max_new_tokens, force_seg=force_seg)

    # ---- endpoints
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE_HTML)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)

    @app.get("/healthz", tags=["server"])
    async def healthz() -> dict[str, Any]:
        """Liveness: the queue's state and the number of live sessions."""
        return {"status": "ok", "queue": queue.stats(), "sessions": len(sessions)}

    @app.get("/v1/model", response_model=ModelInfo, tags=["server"])
    async def model_info():
        """The served model: name, language backbone, dtype, device, and what is kept of each mask."""
        return _model_info(segmenter, settings)

    @app.post(
        "/v1/segment",
        response_model=Answer,
        response_model_exclude_none=True,
        tags=["segment"],
        openapi_extra=_request_body(SegmentRequest, image_required=True),
        responses=_errors(400, 413, 415, 422, 503),
    )
    async def segment(request: Request):
        """One question about one image: the answer text and one mask per [SEG] (COCO RLE at the image's size)."""
        payload, data = await _read_payload(request, SegmentRequest, settings, image_required=True)
        max_new, force = _resolve(payload)
        try:
            max_new = _token_budget(payload.prompt, max_new)
        except ContextFull as err:
            raise ApiError(422, "context_full", str(err)) from None
        _admit()
        image = await _decode(data)
        prediction = await _call_model(segmenter.predict, image, payload.prompt, max_new, force)
        return await run_in_threadpool(answer_object, prediction, image, payload.return_overlay)

    @app.post(
        "/v1/sessions",
        status_code=201,
        response_model=SessionCreated,
        tags=["sessions"],
        openapi_extra=_request_body(SessionRequest, image_required=True),
        responses=_errors(400, 413, 415, 422, 429, 503),
    )
    async def create_session(request: Request):
        """Start a conversation about an image (encoded once); ask with ``POST /v1/sessions/{id}/messages``."""
        _, data = await _read_payload(request, SessionRequest, settings, image_required=True)
        if not sessions.has_room():
            raise ApiError(429, "too_many_sessions", _FULL.format(n=settings.max_sessions), {"Retry-After": "1"})
        _admit()
        image = await _decode(data)
        chat = await _call_model(_open_chat, image)
        try:
            session = sessions.add(chat)
        except TooManySessions:
            raise ApiError(429, "too_many_sessions", _FULL.format(n=settings.max_sessions), {"Retry-After": "1"}) from None
        width, height = chat.image.size
        return {"id": session.id, "idle_ttl_s": settings.session_ttl, "width": width, "height": height}

    @app.post(
        "/v1/sessions/{session_id}/messages",
        response_model=Answer,
        response_model_exclude_none=True,
        tags=["sessions"],
        openapi_extra=_request_body(MessageRequest, image_required=False),
        responses=_errors(400, 404, 413, 415, 422, 503),
    )
    async def ask(session_id: str, request: Request):
        """The next question in a conversation; the answer can refer to earlier turns."""
        payload, _ = await _read_payload(request, MessageRequest, settings, image_required=False)
        max_new, force = _resolve(payload)
        try:
            session = sessions.acquire(session_id)
        except SessionNotFound:
            raise ApiError(404, "session_not_found", f"no session {session_id!r}: unknown, deleted or expired") from None
        try:
            prediction = await _call_model(_ask, session.chat, payload.prompt, max_new, force)
            session.turns += 1
        finally:
            sessions.release(session)
        return await run_in_threadpool(answer_object, prediction, session.chat.image, payload.return_overlay)

    @app.delete("/v1/sessions/{session_id}", status_code=204, tags=["sessions"], responses=_errors(404))
    async def delete_session(session_id: str):
        """End a conversation and free its memory."""
        try:
            sessions.delete(session_id)
        except SessionNotFound:
            raise ApiError(404, "session_not_found", f"no session {session_id!r}: unknown, deleted or expired") from None
        return Response(status_code=204)

    return app
