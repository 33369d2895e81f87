"""The web page end to end: a real uvicorn server on 127.0.0.1 and headless Chromium driven by Playwright.

Needs the Python package ``playwright`` (no ``playwright install``: the system Chromium is used) and Chromium at
/usr/bin/chromium (Debian: ``apt-get install -y chromium``) or at $REASONSEG_CHROMIUM; skipped without them.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

pytest.importorskip("fastapi", reason="the 'serve' extra (fastapi, uvicorn) is not installed")
pytest.importorskip("uvicorn", reason="the 'serve' extra (fastapi, uvicorn) is not installed")
sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="playwright is not installed (pip install playwright; no browser download needed)",
    exc_type=ImportError,
)

CHROMIUM = os.environ.get("REASONSEG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
PROMPT = "What is the red circle in this image? Please output segmentation mask."
PALETTE_0 = np.array([230, 25, 75])


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install -y chromium, or set REASONSEG_CHROMIUM)")
    return CHROMIUM


@pytest.fixture(scope="module")
def server():
    """uvicorn serving a tiny model on a free port of 127.0.0.1, in a thread."""
    import uvicorn

    from reasonseg.inference.segmenter import Segmenter
    from reasonseg.modeling.tiny import build_tiny_model
    from reasonseg.serving import ServeSettings, create_app

    model, processor = build_tiny_model(seed=0)
    segmenter = Segmenter(model, processor)
    app = create_app(segmenter, ServeSettings(max_new_tokens=8, model_name="tiny-browser-test"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "app": app, "segmenter": segmenter}
    instance.should_exit = True
    thread.join(15)
    sock.close()


@pytest.fixture()
def page(chromium_path, server):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        context = browser.new_page().context
        page = context.pages[0]
        page.set_default_timeout(60_000)
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(f"pageerror: {err}"))

        def on_console(message):
            # the browser logs every 4xx answer ("Failed to load resource"); the page handles those itself
            if message.type == "error" and not message.text.startswith("Failed to load resource"):
                errors.append(f"console: {message.text}")

        page.on("console", on_console)
        page.errors = errors
        yield page
        browser.close()


def _image() -> tuple[bytes, np.ndarray]:
    rng = np.random.RandomState(7)
    array = (rng.rand(60, 80, 3) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue(), array


def test_upload_ask_overlay_download_and_follow_up(page, server, tmp_path):
    from pycocotools import mask as mask_utils

    png, array = _image()
    segmenter = server["segmenter"]
    expected_chat = segmenter.chat(Image.fromarray(array))
    first = expected_chat.ask(PROMPT, max_new_tokens=8, force_seg=True)
    second = expected_chat.ask("And the one left of it?", max_new_tokens=8, force_seg=True)

    page.goto(server["url"] + "/")
    sync_api.expect(page.locator("#model")).to_contain_text("tiny-browser-test (llama, float32, cpu)")
    page.set_input_files("#image-input", files=[{"name": "scene.png", "mimeType": "image/png", "buffer": png}])
    sync_api.expect(page.locator("#overlay")).to_be_visible()  # the image is shown before any question
    page.check("#force-seg")
    page.fill("#prompt", PROMPT)
    page.click("#ask")

    answer = page.locator(".turn.answer").first
    sync_api.expect(answer).to_have_text(first.text)
    sync_api.expect(page.locator("#overlay")).to_have_attribute("data-masks", "1")
    sync_api.expect(page.locator("#masks li")).to_have_count(1)
    sync_api.expect(page.locator("#status")).to_have_text("1 mask")

    # the RLE was decoded in the browser: same area as the server's, and the mask is painted in the first colour
    last = page.evaluate("window.reasonseg.lastAnswer")
    record = last["masks"][0]
    assert page.evaluate("window.reasonseg.decodedAreas") == [record["area"]]
    mask = mask_utils.decode({"size": record["rle"]["size"], "counts": record["rle"]["counts"].encode()}).astype(bool)
    np.testing.assert_array_equal(mask, first.masks[0])
    pixels = np.array(
        page.evaluate(
            """() => { const c = document.getElementById('overlay');
                       return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }"""
        ),
        dtype=np.int32,
    ).reshape(60, 80, 4)[..., :3]
    blended = array.astype(np.int32) * 0.5 + PALETTE_0 * 0.5
    assert np.abs(pixels[mask] - blended[mask]).max() <= 2
    assert np.abs(pixels[~mask] - array[~mask]).max() <= 1

    # download the mask as PNG
    with page.expect_download() as download_info:
        page.click(".download-mask")
    download = download_info.value
    assert download.suggested_filename == "mask_1_0.png"
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    saved = np.asarray(Image.open(target).convert("L"))
    np.testing.assert_array_equal(saved > 127, mask)

    # the conversation continues in the same session
    page.fill("#prompt", "And the one left of it?")
    page.press("#prompt", "Enter")
    sync_api.expect(page.locator(".turn.answer")).to_have_count(2)
    sync_api.expect(page.locator(".turn.answer").nth(1)).to_have_text(second.text)
    assert len(server["app"].state.sessions) == 1

    # an expired session is replaced transparently, with a note
    server["app"].state.sessions.clear()
    page.fill("#prompt", PROMPT)
    page.click("#ask")
    sync_api.expect(page.locator(".turn.answer")).to_have_count(3)
    sync_api.expect(page.locator(".turn.note")).to_contain_text("expired")
    sync_api.expect(page.locator(".turn.answer").nth(2)).to_have_text(first.text)
    assert page.errors == [], page.errors


def test_errors_are_shown(page, server):
    page.goto(server["url"] + "/")
    page.click("#ask")
    sync_api.expect(page.locator("#status")).to_have_text("Choose an image first.")
    page.set_input_files("#image-input", files=[{"name": "bad.png", "mimeType": "image/png", "buffer": b"not a png"}])
    page.fill("#prompt", PROMPT)
    page.click("#ask")
    sync_api.expect(page.locator("#status")).to_contain_text("Error 422")
    sync_api.expect(page.locator("#status")).to_have_class("error")
