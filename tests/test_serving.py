"""The HTTP server (reasonseg.serving) through FastAPI's TestClient, with a tiny random model."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the 'serve' extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="httpx (the 'test' extra) is needed by fastapi.testclient")

from fastapi.testclient import TestClient  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from reasonseg.errors import InputError  # noqa: E402
from reasonseg.inference.segmenter import ChatSession, Prediction, Segmenter  # noqa: E402
from reasonseg.serving import ServeSettings, create_app  # noqa: E402

PROMPT = "What is the red circle in this image? Please output segmentation mask."
TOKENS = 6  # short answers keep the tests fast


# ------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    from reasonseg.modeling.tiny import build_tiny_model

    model, processor = build_tiny_model(seed=0)
    return Segmenter(model, processor)


@pytest.fixture()
def make_client(segmenter):
    """``make_client(**settings)`` -> a started TestClient on a fresh app (closed after the test)."""
    clients = []

    def make(**overrides) -> TestClient:
        values = dict(max_new_tokens=TOKENS, model_name="tiny-test")
        values.update(overrides)
        client = TestClient(create_app(segmenter, ServeSettings(**values)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture()
def client(make_client) -> TestClient:
    return make_client()


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def image_bytes(width: int = 80, height: int = 60, fmt: str = "PNG", mode: str = "RGB", seed: int = 0, **save) -> bytes:
    rng = np.random.RandomState(seed)
    array = (rng.rand(height, width, 3) * 255).astype(np.uint8)
    image = Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


PNG = image_bytes()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data is a few bytes (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def post_image(client, data: bytes = PNG, path: str = "/v1/segment", **fields):
    fields = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
    return client.post(path, files={"image": ("image.png", data, "image/png")}, data=fields)


def assert_error(response, status: int, error: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    if error is not None:
        assert body["error"] == error, body
    return body


def check_answer(body: dict, size: tuple[int, int]) -> list[np.ndarray]:
    """The answer object's shape; returns the decoded masks (checked against area and bbox)."""
    assert set(body) <= {"text", "seg_forced", "masks", "overlay_png_base64"}
    assert isinstance(body["text"], str) and isinstance(body["seg_forced"], bool)
    decoded = []
    for record in body["masks"]:
        assert set(record) == {"rle", "area", "bbox", "score"}
        assert record["rle"]["size"] == list(size) and isinstance(record["rle"]["counts"], str)
        mask = mask_utils.decode({"size": record["rle"]["size"], "counts": record["rle"]["counts"].encode()})
        assert int(mask.sum()) == record["area"]
        ys, xs = np.nonzero(mask)
        if len(xs):
            x, y = int(xs.min()), int(ys.min())
            assert record["bbox"] == [x, y, int(xs.max()) - x + 1, int(ys.max()) - y + 1]
        assert isinstance(record["score"], float)
        decoded.append(mask.astype(bool))
    return decoded


class Gate:
    """A stand-in model call that blocks until released, counting calls and overlap."""

    def __init__(self, result=None, delay: float = 0.0):
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.active = self.max_active = self.calls = 0
        self.delay = delay
        self.result = result or Prediction(text="slow answer")

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.active += 1
            self.calls += 1
            self.max_active = max(self.max_active, self.active)
        self.entered.release()
        try:
            if self.delay:
                time.sleep(self.delay)
            else:
                assert self.release.wait(30), "the test never released the gate"
            return self.result
        finally:
            with self.lock:
                self.active -= 1


def wait_for(condition, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def in_thread(fn, *args, **kwargs):
    result = {}

    def target():
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as err:  # pragma: no cover - reported by the caller
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


# ---------------------------------------------------------------------------------------------- page, docs, model
def test_page_is_self_contained(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    for element in ('id="image-input"', 'id="prompt"', 'id="ask"', 'id="overlay"', 'id="log"', "/v1/sessions"):
        assert element in page
    # nothing loaded from elsewhere: no CDN, no external script or style
    assert "src=\"http" not in page and "href=\"http" not in page and "@import" not in page
    assert client.get("/favicon.ico").status_code == 204


def test_openapi_and_docs(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/segment", "/v1/sessions", "/v1/sessions/{session_id}/messages", "/v1/model", "/healthz"):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/segment"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert "image" in body["multipart/form-data"]["schema"]["properties"]
    assert "image_base64" in body["application/json"]["schema"]["required"]
    assert "503" in spec["paths"]["/v1/segment"]["post"]["responses"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text


def test_healthz_and_model(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["sessions"] == 0
    assert health["queue"]["running"] == 0 and health["queue"]["waiting"] == 0
    info = client.get("/v1/model").json()
    assert info["name"] == "tiny-test"
    assert info["backbone"] == "llama" and info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["max_new_tokens"] == TOKENS and info["force_seg"] is False and info["mask_regions"] == "all"


# ------------------------------------------------------------------------------------------------------- /v1/segment
def test_segment_multipart_matches_the_library(client, segmenter):
    response = post_image(client, prompt=PROMPT, force_seg=True, return_overlay=True, max_new_tokens=TOKENS)
    assert response.status_code == 200, response.text
    body = response.json()
    masks = check_answer(body, (60, 80))
    expected = segmenter.predict(Image.open(io.BytesIO(PNG)), PROMPT, max_new_tokens=TOKENS, force_seg=True)
    assert body["text"] == expected.text and body["seg_forced"] == expected.seg_forced is True
    assert len(masks) == expected.num_masks == 1
    np.testing.assert_array_equal(masks[0], expected.masks[0])
    assert body["masks"][0]["score"] == pytest.approx(expected.scores[0])
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png_base64"])))
    assert overlay.format == "PNG" and overlay.size == (80, 60)
    original = np.asarray(Image.open(io.BytesIO(PNG)).convert("RGB"))
    drawn = np.asarray(overlay.convert("RGB"))
    assert (drawn[masks[0]] != original[masks[0]]).any() and (drawn[~masks[0]] == original[~masks[0]]).all()


@pytest.mark.parametrize("data_url", [False, True])
def test_segment_json(client, segmenter, data_url):
    encoded = base64.b64encode(PNG).decode()
    if data_url:
        encoded = "data:image/png;base64," + encoded
    response = client.post("/v1/segment", json={"image_base64": encoded, "prompt": PROMPT, "force_seg": False})
    assert response.status_code == 200, response.text
    body = response.json()
    check_answer(body, (60, 80))
    assert "overlay_png_base64" not in body
    expected = segmenter.predict(Image.open(io.BytesIO(PNG)), PROMPT, max_new_tokens=TOKENS)
    assert body["text"] == expected.text and len(body["masks"]) == expected.num_masks


def test_segment_uses_server_defaults(make_client):
    client = make_client(force_seg=True, max_new_tokens=3)
    body = post_image(client, prompt=PROMPT).json()
    assert body["seg_forced"] is True and len(body["masks"]) == 1
    assert_error(post_image(client, prompt=PROMPT, max_new_tokens=4), 422, "validation_error")
    assert post_image(client, prompt=PROMPT, force_seg=False).json()["seg_forced"] is False


@pytest.mark.parametrize(
    "fmt,mode,size",
    [("JPEG", "RGB", (60, 80)), ("PNG", "RGBA", (60, 80)), ("PNG", "L", (60, 80)), ("WEBP", "RGB", (60, 80)),
     ("GIF", "P", (60, 80)), ("BMP", "RGB", (60, 80)), ("TIFF", "RGB", (60, 80))],
)
def test_segment_image_formats(client, fmt, mode, size):
    data = image_bytes(fmt=fmt, mode=mode)
    response = post_image(client, data, prompt=PROMPT, force_seg=True)
    assert response.status_code == 200, response.text
    check_answer(response.json(), size)


def test_exif_orientation_is_applied(client):
    image = Image.fromarray((np.random.RandomState(1).rand(60, 80, 3) * 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: the upright image is 60 wide and 80 high
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    body = post_image(client, buffer.getvalue(), prompt=PROMPT, force_seg=True).json()
    assert body["masks"][0]["rle"]["size"] == [80, 60]


# ------------------------------------------------------------------------------------------------------------ errors
def _json(client, body, path="/v1/segment"):
    return client.post(path, json=body)


B64 = base64.b64encode(PNG).decode()


@pytest.mark.parametrize(
    "send,status,error",
    [
        (lambda c: _json(c, {"prompt": PROMPT}), 422, "validation_error"),  # no image
        (lambda c: c.post("/v1/segment", data={"prompt": PROMPT}, files={"other": ("a", b"x")}), 422, "validation_error"),
        (lambda c: c.post("/v1/segment", data={"prompt": PROMPT, "x": "1"}), 422, "validation_error"),
        (lambda c: _json(c, {"image_base64": B64}), 422, "validation_error"),  # no prompt
        (lambda c: _json(c, {"image_base64": B64, "prompt": "   "}), 422, "validation_error"),
        (lambda c: _json(c, {"image_base64": B64, "prompt": "x" * 5000}), 422, "validation_error"),
        (lambda c: _json(c, {"image_base64": B64, "prompt": 3}), 422, "validation_error"),
        (lambda c: _json(c, {"image_base64": B64, "prompt": PROMPT, "return_logits": True}), 422, "validation_error"),
        (lambda c: _json(c, {"image_base64": B64, "prompt": PROMPT, "max_new_tokens": 0}), 422, "validation_error"),
        (lambda c: _json(c, {"image_base64": B64, "prompt": PROMPT, "max_new_tokens": 10**6}), 422, "validation_error"),
        (lambda c: _json(c, {"image_base64": B64, "prompt": PROMPT, "force_seg": "maybe"}), 422, "validation_error"),
        (lambda c: post_image(c, prompt=PROMPT, max_new_tokens="many"), 422, "validation_error"),
        (lambda c: _json(c, {"image_url": "http://127.0.0.1/x.png", "prompt": PROMPT}), 422, "validation_error"),
        (lambda c: _json(c, {"image_base64": "https://example.com/a.png", "prompt": PROMPT}), 422, "invalid_image"),
        (lambda c: _json(c, {"image_base64": "not base64 at all!", "prompt": PROMPT}), 422, "invalid_image"),
        (lambda c: _json(c, {"image_base64": "", "prompt": PROMPT}), 422, "invalid_image"),
        (lambda c: _json(c, [1, 2]), 422, "validation_error"),
        (lambda c: c.post("/v1/segment", content=b"{not json", headers={"content-type": "application/json"}), 400,
         "invalid_json"),
        (lambda c: c.post("/v1/segment", content=b"hello", headers={"content-type": "text/plain"}), 415,
         "unsupported_media_type"),
        (lambda c: c.post("/v1/segment", content=b"hello"), 415, "unsupported_media_type"),
        (lambda c: c.post("/v1/segment", data={"prompt": PROMPT, "image": "a string"}), 422, "validation_error"),
        (lambda c: c.post("/v1/segment", data={"prompt": PROMPT},
                          files=[("image", ("a.png", PNG)), ("image", ("b.png", PNG))]), 422, "validation_error"),
        (lambda c: c.post("/v1/segment", data={"prompt": PROMPT, "image_base64": B64},
                          files={"image": ("a.png", PNG)}), 422, "validation_error"),
        (lambda c: c.get("/v1/segment"), 405, "method_not_allowed"),
        (lambda c: c.get("/v1/nothing"), 404, "not_found"),
    ],
)
def test_request_errors(client, send, status, error):
    assert_error(send(client), status, error)


@pytest.mark.parametrize(
    "data",
    [
        b"this is not an image",
        PNG[: len(PNG) // 2],  # truncated
        b"\x89PNG\r\n\x1a\n" + b"\0" * 40,  # broken header
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # EPS (Ghostscript) is not decoded
        b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'></svg>",
        b"",
    ],
)
def test_corrupt_or_unsupported_images_are_refused(client, data):
    assert_error(post_image(client, data, prompt=PROMPT), 422, "invalid_image")
    assert_error(_json(client, {"image_base64": base64.b64encode(data).decode(), "prompt": PROMPT}), 422)


def test_upload_byte_limits(make_client):
    client = make_client(max_image_bytes=50_000)
    big = image_bytes(200, 200, seed=3)  # ~120 kB of noise as PNG
    assert len(big) > 50_000
    assert_error(post_image(client, big, prompt=PROMPT), 413, "image_too_large")
    body = {"image_base64": base64.b64encode(big).decode(), "prompt": PROMPT}
    assert_error(_json(client, body), 413)
    # a body far over the limit is refused from its Content-Length, before it is read
    huge = b"0" * (client.app.state.settings.max_body_bytes + 1)
    response = client.post("/v1/segment", content=huge, headers={"content-type": "application/json"})
    assert_error(response, 413, "payload_too_large")

    # and one without Content-Length (chunked) is cut off while it streams in
    def chunks():
        for _ in range(10):
            yield b"0" * 20_000

    response = client.post("/v1/segment", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "payload_too_large")
    assert post_image(client, PNG, prompt=PROMPT).status_code == 200  # a small one still passes


def test_pixel_limit_and_decompression_bombs(make_client):
    client = make_client(max_pixels=4_000)
    assert_error(post_image(client, PNG, prompt=PROMPT), 413, "image_too_large")  # 80 x 60 = 4800 pixels
    assert post_image(client, image_bytes(50, 40), prompt=PROMPT).status_code == 200
    client = make_client()  # the default limit, 40 megapixels
    for width, height in [(10_000, 10_000), (100_000, 100_000)]:  # ours, then Pillow's own bomb check
        bomb = png_header_only(width, height)
        assert len(bomb) < 200
        assert_error(post_image(client, bomb, prompt=PROMPT), 413, "image_too_large")
        assert_error(client.post("/v1/sessions", files={"image": ("b.png", bomb)}), 413, "image_too_large")


def test_prompt_longer_than_the_context(client):
    words = " ".join(f"zq{i}xv" for i in range(300))  # ~1500 tokens for the tiny tokenizer; its context is 512
    assert_error(post_image(client, prompt=words), 422, "context_full")


def test_model_failures_are_json(client, segmenter, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: something")

    monkeypatch.setattr(segmenter, "predict", broken)
    body = assert_error(post_image(client, prompt=PROMPT), 500, "model_error")
    assert "CUDA" not in body["detail"]  # internals go to the log, not to the client

    def refused(*args, **kwargs):
        raise InputError("this image cannot be segmented")

    monkeypatch.setattr(segmenter, "predict", refused)
    body = assert_error(post_image(client, prompt=PROMPT), 422, "invalid_request")
    assert "cannot be segmented" in body["detail"]


# ------------------------------------------------------------------------------------------------------- sessions
def test_session_conversation_matches_the_library(client, segmenter):
    created = client.post("/v1/sessions", files={"image": ("a.png", PNG, "image/png")})
    assert created.status_code == 201, created.text
    info = created.json()
    assert set(info) >= {"id", "idle_ttl_s"} and (info["width"], info["height"]) == (80, 60)
    session_id = info["id"]
    assert client.get("/healthz").json()["sessions"] == 1

    chat = segmenter.chat(Image.open(io.BytesIO(PNG)))
    questions = [(PROMPT, True), ("And what is left of it?", False), ("Please output segmentation mask.", True)]
    for prompt, force in questions:
        response = client.post(f"/v1/sessions/{session_id}/messages", json={"prompt": prompt, "force_seg": force})
        assert response.status_code == 200, response.text
        expected = chat.ask(prompt, max_new_tokens=TOKENS, force_seg=force)
        body = response.json()
        masks = check_answer(body, (60, 80))
        assert body["text"] == expected.text and body["seg_forced"] == expected.seg_forced
        assert len(masks) == expected.num_masks
        for got, want in zip(masks, expected.masks):
            np.testing.assert_array_equal(got, want)

    # multipart works for messages too, with an overlay
    response = client.post(f"/v1/sessions/{session_id}/messages", data={"prompt": "Once more?", "return_overlay": "1"})
    assert response.status_code == 200 and "overlay_png_base64" in response.json()

    assert client.delete(f"/v1/sessions/{session_id}").status_code == 204
    assert_error(client.delete(f"/v1/sessions/{session_id}"), 404, "session_not_found")
    assert_error(client.post(f"/v1/sessions/{session_id}/messages", json={"prompt": PROMPT}), 404, "session_not_found")
    assert client.get("/healthz").json()["sessions"] == 0


def test_session_json_and_errors(client):
    created = client.post("/v1/sessions", json={"image_base64": B64})
    assert created.status_code == 201, created.text
    session_id = created.json()["id"]
    assert_error(client.post("/v1/sessions/nope/messages", json={"prompt": PROMPT}), 404, "session_not_found")
    assert_error(client.delete("/v1/sessions/nope"), 404, "session_not_found")
    assert_error(client.post("/v1/sessions", json={}), 422, "validation_error")
    assert_error(client.post("/v1/sessions", json={"image_base64": B64, "prompt": "x"}), 422, "validation_error")
    assert_error(client.post("/v1/sessions", files={"image": ("a", b"garbage")}), 422, "invalid_image")
    messages = f"/v1/sessions/{session_id}/messages"
    assert_error(client.post(messages, json={}), 422, "validation_error")
    assert_error(client.post(messages, json={"prompt": PROMPT, "image_base64": B64}), 422, "validation_error")
    assert_error(client.post(messages, json={"prompt": PROMPT, "max_new_tokens": 99}), 422, "validation_error")
    assert client.post(messages, json={"prompt": PROMPT}).status_code == 200  # the errors did not break it


def test_session_context_runs_out(client):
    session_id = client.post("/v1/sessions", json={"image_base64": B64}).json()["id"]
    long_question = " ".join(f"zq{i}xv" for i in range(120))  # ~600 tokens, more than the tiny model's 512
    assert_error(client.post(f"/v1/sessions/{session_id}/messages", json={"prompt": long_question}), 422,
                 "context_full")
    assert client.post(f"/v1/sessions/{session_id}/messages", json={"prompt": PROMPT}).status_code == 200
    assert_error(client.post(f"/v1/sessions/{session_id}/messages", json={"prompt": long_question}), 422,
                 "context_full")


def test_sessions_expire_after_idle_time(make_client):
    clock = FakeClock()
    client = make_client(session_ttl=10, clock=clock)
    first = client.post("/v1/sessions", files={"image": ("a.png", PNG)}).json()["id"]
    second = client.post("/v1/sessions", files={"image": ("a.png", PNG)}).json()["id"]
    clock.now += 6
    assert client.post(f"/v1/sessions/{first}/messages", json={"prompt": PROMPT}).status_code == 200
    clock.now += 6  # first: idle 6 s since its answer; second: idle 12 s
    assert_error(client.post(f"/v1/sessions/{second}/messages", json={"prompt": PROMPT}), 404, "session_not_found")
    assert client.post(f"/v1/sessions/{first}/messages", json={"prompt": PROMPT}).status_code == 200
    assert client.get("/healthz").json()["sessions"] == 1
    clock.now += 10.5
    assert client.get("/healthz").json()["sessions"] == 0
    assert_error(client.post(f"/v1/sessions/{first}/messages", json={"prompt": PROMPT}), 404, "session_not_found")
    assert_error(client.delete(f"/v1/sessions/{first}"), 404)


def test_full_store_evicts_the_least_recently_used_session(make_client):
    client = make_client(max_sessions=2)
    a = client.post("/v1/sessions", files={"image": ("a.png", PNG)}).json()["id"]
    b = client.post("/v1/sessions", files={"image": ("a.png", PNG)}).json()["id"]
    assert client.post(f"/v1/sessions/{a}/messages", json={"prompt": PROMPT}).status_code == 200  # b is now oldest
    c = client.post("/v1/sessions", files={"image": ("a.png", PNG)})
    assert c.status_code == 201
    assert_error(client.post(f"/v1/sessions/{b}/messages", json={"prompt": PROMPT}), 404, "session_not_found")
    for live in (a, c.json()["id"]):
        assert client.post(f"/v1/sessions/{live}/messages", json={"prompt": PROMPT}).status_code == 200
    assert client.get("/healthz").json()["sessions"] == 2


def test_full_store_of_busy_sessions_answers_429(make_client, monkeypatch):
    client = make_client(max_sessions=1)
    session_id = client.post("/v1/sessions", files={"image": ("a.png", PNG)}).json()["id"]
    gate = Gate()
    monkeypatch.setattr(ChatSession, "ask", lambda self, *a, **k: gate(*a, **k))
    thread, result = in_thread(client.post, f"/v1/sessions/{session_id}/messages", json={"prompt": PROMPT})
    assert gate.entered.acquire(timeout=20)
    refused = client.post("/v1/sessions", files={"image": ("a.png", PNG)})
    assert_error(refused, 429, "too_many_sessions")
    assert refused.headers["Retry-After"] == "1"
    gate.release.set()
    thread.join(30)
    assert result["value"].status_code == 200 and result["value"].json()["text"] == "slow answer"
    assert client.post("/v1/sessions", files={"image": ("a.png", PNG)}).status_code == 201  # now evicts the idle one


# ---------------------------------------------------------------------------------------------------------- queue
def test_model_calls_never_overlap(make_client, segmenter, monkeypatch):
    client = make_client(max_concurrency=32)
    gate = Gate(delay=0.05)
    monkeypatch.setattr(segmenter, "predict", gate)
    session_id = client.post("/v1/sessions", files={"image": ("a.png", PNG)}).json()["id"]
    monkeypatch.setattr(ChatSession, "ask", lambda self, *a, **k: gate(*a, **k))
    threads = [in_thread(post_image, client, prompt=PROMPT) for _ in range(6)]
    threads += [in_thread(client.post, f"/v1/sessions/{session_id}/messages", json={"prompt": PROMPT}) for _ in range(4)]
    for thread, result in threads:
        thread.join(60)
        assert result["value"].status_code == 200, result
    assert gate.calls == 10 and gate.max_active == 1


def test_queue_full_answers_503_with_retry_after(make_client, segmenter, monkeypatch):
    client = make_client(max_concurrency=1)  # one running + one waiting; the third is refused
    queue = client.app.state.queue
    gate = Gate()
    monkeypatch.setattr(segmenter, "predict", gate)
    first = in_thread(post_image, client, prompt=PROMPT)
    assert gate.entered.acquire(timeout=20)
    second = in_thread(post_image, client, prompt=PROMPT)
    wait_for(lambda: queue.stats()["waiting"] == 1)
    for send in (lambda: post_image(client, prompt=PROMPT),
                 lambda: client.post("/v1/sessions", files={"image": ("a.png", PNG)})):
        refused = send()
        body = assert_error(refused, 503, "overloaded")
        assert int(refused.headers["Retry-After"]) >= 1 and "busy" in body["detail"]
    health = client.get("/healthz").json()  # answers while the model is busy
    assert health["queue"]["running"] == 1 and health["queue"]["waiting"] == 1
    gate.release.set()
    for thread, result in (first, second):
        thread.join(30)
        assert result["value"].status_code == 200 and result["value"].json()["text"] == "slow answer"
    assert gate.max_active == 1
    wait_for(lambda: queue.pending == 0)
    assert post_image(client, prompt=PROMPT).status_code == 200  # the queue recovers


def test_queue_without_waiting_room(make_client, segmenter, monkeypatch):
    client = make_client(max_concurrency=0)
    gate = Gate()
    monkeypatch.setattr(segmenter, "predict", gate)
    first = in_thread(post_image, client, prompt=PROMPT)
    assert gate.entered.acquire(timeout=20)
    assert_error(post_image(client, prompt=PROMPT), 503, "overloaded")
    gate.release.set()
    first[0].join(30)
    assert first[1]["value"].status_code == 200


def test_queue_unit():
    from reasonseg.serving.queue import ModelQueue, QueueFull

    queue = ModelQueue(max_waiting=1)
    gate = Gate()
    running = queue.submit(gate)
    assert gate.entered.acquire(timeout=5)
    waiting = queue.submit(lambda: "second")
    with pytest.raises(QueueFull) as refused:
        queue.submit(lambda: "third")
    assert refused.value.retry_after >= 1
    gate.release.set()
    assert running.result(5).text == "slow answer" and waiting.result(5) == "second"
    failing = queue.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    assert queue.pending == 0 and queue.stats()["completed"] == 3
    queue.shutdown()


# ------------------------------------------------------------------------------------------------------------- CLI
def test_serve_verb(monkeypatch, segmenter):
    import uvicorn

    from reasonseg.cli import serve as serve_cli
    from reasonseg.cli.main import build_parser, main

    args = build_parser().parse_args(
        ["serve", "--port", "8123", "--max-image-mb", "1.5", "--max-pixels", "1000000", "--max-concurrency", "3",
         "--session-ttl", "30", "--max-sessions", "2", "--max-new-tokens", "7", "--force-seg", "--precision", "fp32"]
    )
    settings = serve_cli.settings_from_args(args)
    assert settings.max_image_bytes == int(1.5 * 1024 * 1024) and settings.max_pixels == 1_000_000
    assert (settings.max_concurrency, settings.session_ttl, settings.max_sessions) == (3, 30, 2)
    assert settings.max_new_tokens == 7 and settings.force_seg is True

    calls = {}
    monkeypatch.setattr(serve_cli, "load_segmenter", lambda args: segmenter)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.update(app=app, **kwargs))
    assert main(["serve", "--port", "8124", "--max-sessions", "3"]) == 0
    assert calls["host"] == "127.0.0.1" and calls["port"] == 8124
    with TestClient(calls["app"]) as client:
        assert client.get("/v1/model").json()["name"] == "default demo model"
    assert main(["serve", "--max-image-mb", "0"]) == 1  # a user error: one line, exit code 1
