"""The web page served at ``/``: plain HTML and JavaScript, no build step, nothing loaded from elsewhere.

It uses the same JSON API as any client: ``POST /v1/sessions`` with the chosen image, then
``POST /v1/sessions/{id}/messages`` per question. Masks come back as COCO RLE and are decoded and drawn in the
browser, one colour per mask (the palette of :mod:`reasonseg.serving.render`); each can be saved as a PNG.
"""

PAGE_HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>reasonseg</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #222; background: #fafafa; }
  body { margin: 0 auto; max-width: 1200px; padding: 1rem; }
  header { display: flex; align-items: baseline; gap: 1rem; flex-wrap: wrap; }
  header h1 { margin: 0; font-size: 1.4rem; }
  #model { color: #666; font-size: 0.9rem; }
  main { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 1.5rem; margin-top: 1rem; }
  @media (max-width: 800px) { main { grid-template-columns: 1fr; } }
  #view { background: #eee; border: 1px solid #ccc; min-height: 200px; display: flex; align-items: center;
          justify-content: center; }
  #overlay { max-width: 100%; height: auto; display: none; }
  #placeholder { color: #888; padding: 2rem; text-align: center; }
  #masks { list-style: none; padding: 0; margin: 0.5rem 0; }
  #masks li { display: flex; align-items: center; gap: 0.5rem; margin: 0.25rem 0; font-size: 0.9rem; }
  .swatch { width: 1rem; height: 1rem; border-radius: 3px; display: inline-block; border: 1px solid #0003; }
  #log { border: 1px solid #ccc; background: #fff; height: 320px; overflow-y: auto; padding: 0.5rem; }
  .turn { margin: 0.4rem 0; white-space: pre-wrap; word-wrap: break-word; }
  .turn.user { color: #0a4a8a; }
  .turn.user::before { content: "You: "; font-weight: bold; }
  .turn.answer::before { content: "Model: "; font-weight: bold; }
  .turn.note { color: #777; font-style: italic; }
  textarea { width: 100%; box-sizing: border-box; font: inherit; margin-top: 0.5rem; }
  .row { display: flex; gap: 0.5rem; align-items: center; flex-wrap: wrap; margin-top: 0.5rem; }
  button { font: inherit; padding: 0.3rem 0.8rem; cursor: pointer; }
  button:disabled { cursor: progress; }
  #status { min-height: 1.3em; margin-top: 0.5rem; color: #555; }
  #status.error { color: #b00020; }
</style>
</head>
<body>
<header>
  <h1>reasonseg</h1>
  <span id="model">loading model info...</span>
</header>
<main>
  <section>
    <label for="image-input">Image:</label>
    <input id="image-input" type="file" accept="image/png,image/jpeg,image/webp,image/gif,image/bmp,image/tiff">
    <div id="view">
      <div id="placeholder">Choose an image, then ask a question about it.</div>
      <canvas id="overlay" aria-label="image with masks"></canvas>
    </div>
    <ul id="masks" aria-label="masks"></ul>
    <div class="row">
      <button id="download-overlay" type="button" disabled>Download overlay PNG</button>
    </div>
  </section>
  <section>
    <div id="log" aria-live="polite"></div>
    <label for="prompt" hidden>Question</label>
    <textarea id="prompt" rows="3"
      placeholder="e.g. What could roll away in this picture? Please output segmentation mask."></textarea>
    <div class="row">
      <button id="ask" type="button">Ask</button>
      <label><input id="force-seg" type="checkbox"> always give a mask</label>
      <button id="reset" type="button">New conversation</button>
    </div>
    <div id="status" role="status"></div>
  </section>
</main>
<script>
"use strict";
const PALETTE = [[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48],
                 [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]];
const $ = (id) => document.getElementById(id);
const state = { file: null, bitmap: null, sessionId: null, masks: [], turn: 0, busy: false };
// for tests and the curious: the last answer and the decoded masks' areas
window.reasonseg = { lastAnswer: null, decodedAreas: [] };

function setStatus(text, isError) {
  $("status").textContent = text || "";
  $("status").className = isError ? "error" : "";
}

function addTurn(kind, text) {
  const div = document.createElement("div");
  div.className = "turn " + kind;
  div.textContent = text;
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

// COCO compressed RLE (pycocotools' rleFrString) -> run lengths
function rleCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0, k = 0, more = true, c = 0;
    while (more) {
      c = text.charCodeAt(p) - 48;
      x += (c & 0x1f) * Math.pow(2, 5 * k);
      more = (c & 0x20) !== 0;
      p += 1; k += 1;
      if (!more && (c & 0x10)) x -= Math.pow(2, 5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// runs alternate 0s and 1s over the column-major pixels; returns a row-major Uint8Array (1 = in the mask)
function decodeRle(rle) {
  const [h, w] = rle.size;
  const mask = new Uint8Array(h * w);
  const counts = rleCounts(rle.counts);
  let index = 0;
  for (let r = 0; r < counts.length; r++) {
    const end = index + counts[r];
    if (r % 2 === 1) {
      for (let i = index; i < end; i++) {
        mask[(i % h) * w + Math.floor(i / h)] = 1;
      }
    }
    index = end;
  }
  return { h, w, data: mask };
}

function maskCanvas(mask, colour, alpha) {
  const canvas = document.createElement("canvas");
  canvas.width = mask.w; canvas.height = mask.h;
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(mask.w, mask.h);
  const a = Math.round(alpha * 255);
  for (let i = 0; i < mask.data.length; i++) {
    if (mask.data[i]) {
      pixels.data[4 * i] = colour[0]; pixels.data[4 * i + 1] = colour[1];
      pixels.data[4 * i + 2] = colour[2]; pixels.data[4 * i + 3] = a;
    }
  }
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

function draw() {
  const canvas = $("overlay");
  if (!state.bitmap && !state.masks.length) {
    canvas.style.display = "none"; $("placeholder").style.display = ""; return;
  }
  const ctx = canvas.getContext("2d");
  if (state.bitmap) {
    canvas.width = state.bitmap.width; canvas.height = state.bitmap.height;
    ctx.drawImage(state.bitmap, 0, 0);
  } else {  // an image the browser cannot show (e.g. TIFF): masks on grey
    canvas.width = state.masks[0].w; canvas.height = state.masks[0].h;
    ctx.fillStyle = "#888"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  }
  state.masks.forEach((mask, i) => ctx.drawImage(maskCanvas(mask, PALETTE[i % PALETTE.length], 0.5), 0, 0));
  canvas.style.display = "block";
  $("placeholder").style.display = "none";
  canvas.dataset.masks = String(state.masks.length);
  $("download-overlay").disabled = false;
}

function download(canvas, name) {
  canvas.toBlob((blob) => {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }, "image/png");
}

function maskPng(mask) {
  const canvas = document.createElement("canvas");
  canvas.width = mask.w; canvas.height = mask.h;
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(mask.w, mask.h);
  for (let i = 0; i < mask.data.length; i++) {
    const v = mask.data[i] ? 255 : 0;
    pixels.data[4 * i] = v; pixels.data[4 * i + 1] = v; pixels.data[4 * i + 2] = v; pixels.data[4 * i + 3] = 255;
  }
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

function showMasks(answer) {
  state.masks = answer.masks.map((m) => decodeRle(m.rle));
  window.reasonseg.decodedAreas = state.masks.map((m) => m.data.reduce((s, v) => s + v, 0));
  const list = $("masks");
  list.replaceChildren();
  answer.masks.forEach((m, i) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = "rgb(" + PALETTE[i % PALETTE.length].join(",") + ")";
    const label = document.createElement("span");
    label.textContent = "mask " + i + ": " + m.area + " px, score " + m.score.toFixed(3);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "download-mask";
    button.textContent = "Download PNG";
    const name = "mask_" + state.turn + "_" + i + ".png";
    button.addEventListener("click", () => download(maskPng(state.masks[i]), name));
    item.append(swatch, label, button);
    list.appendChild(item);
  });
  if (!answer.masks.length) {
    const item = document.createElement("li");
    item.textContent = "no mask in this answer";
    list.appendChild(item);
  }
  draw();
}

async function api(method, path, body) {
  const options = { method };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) {
    options.body = JSON.stringify(body);
    options.headers = { "Content-Type": "application/json" };
  }
  const response = await fetch(path, options);
  let data = null;
  if (response.status !== 204) {
    try { data = await response.json(); } catch (err) { data = { error: "bad_response", detail: String(err) }; }
  }
  if (!response.ok) {
    const error = new Error((data && data.detail) || response.statusText);
    error.status = response.status;
    error.retryAfter = response.headers.get("Retry-After");
    throw error;
  }
  return data;
}

async function openSession() {
  const form = new FormData();
  form.append("image", state.file, state.file.name || "image");
  setStatus("Encoding the image...");
  const created = await api("POST", "/v1/sessions", form);
  state.sessionId = created.id;
  return created.id;
}

function endSession() {
  if (state.sessionId) {
    api("DELETE", "/v1/sessions/" + encodeURIComponent(state.sessionId)).catch(() => {});
  }
  state.sessionId = null;
}

async function ask() {
  const prompt = $("prompt").value.trim();
  if (state.busy) return;
  if (!state.file) { setStatus("Choose an image first.", true); return; }
  if (!prompt) { setStatus("Type a question first.", true); return; }
  state.busy = true;
  $("ask").disabled = true;
  addTurn("user", prompt);
  const body = { prompt, force_seg: $("force-seg").checked };
  try {
    if (!state.sessionId) await openSession();
    setStatus("Thinking...");
    let answer;
    try {
      answer = await api("POST", "/v1/sessions/" + encodeURIComponent(state.sessionId) + "/messages", body);
    } catch (err) {
      if (err.status !== 404) throw err;
      addTurn("note", "The conversation had expired; starting a new one (earlier turns are forgotten).");
      await openSession();
      answer = await api("POST", "/v1/sessions/" + encodeURIComponent(state.sessionId) + "/messages", body);
    }
    state.turn += 1;
    window.reasonseg.lastAnswer = answer;
    addTurn("answer", answer.text);
    showMasks(answer);
    $("prompt").value = "";
    setStatus(answer.masks.length + (answer.masks.length === 1 ? " mask" : " masks"));
  } catch (err) {
    const wait = err.retryAfter ? " (retry in " + err.retryAfter + " s)" : "";
    setStatus("Error" + (err.status ? " " + err.status : "") + ": " + err.message + wait, true);
  } finally {
    state.busy = false;
    $("ask").disabled = false;
  }
}

$("image-input").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  endSession();
  state.file = file; state.masks = []; state.turn = 0;
  $("masks").replaceChildren();
  $("log").replaceChildren();
  try {
    state.bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    setStatus("");
  } catch (err) {
    state.bitmap = null;
    setStatus("The browser cannot show this image; the server may still read it.", true);
  }
  draw();
});

$("ask").addEventListener("click", ask);
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); ask(); }
});
$("reset").addEventListener("click", () => {
  endSession();
  state.masks = []; state.turn = 0;
  $("masks").replaceChildren();
  $("log").replaceChildren();
  draw();
  setStatus("New conversation.");
});
$("download-overlay").addEventListener("click", () => download($("overlay"), "overlay_" + state.turn + ".png"));
window.addEventListener("pagehide", () => {
  if (state.sessionId) {
    fetch("/v1/sessions/" + encodeURIComponent(state.sessionId), { method: "DELETE", keepalive: true })
      .catch(() => {});
  }
});

api("GET", "/v1/model").then((m) => {
  $("model").textContent = m.name + " (" + m.backbone + ", " + m.dtype + ", " + m.device + ")";
}).catch(() => { $("model").textContent = "model info unavailable"; });
</script>
</body>
</html>
"""
