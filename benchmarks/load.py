"""Load test of `reasonseg serve`: N concurrent clients for a fixed time against a local server with a tiny model.

    python benchmarks/load.py                       # 32 clients, 20 s, /v1/segment, server queue of 8
    python benchmarks/load.py --mode chat           # each client keeps one session and asks in it
    python benchmarks/load.py --url http://127.0.0.1:8000   # an already running server

Without --url it starts a server in a child process (tiny random model, 127.0.0.1, a free port) and stops it after.
Prints requests/s, latency percentiles of the accepted requests, and counts: 503s (refused by the queue, then
retried after Retry-After) are reported apart from errors; any other failure is an error and makes the exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter

import numpy as np

PROMPT = "What is the red circle in this image? Please output segmentation mask."


# ------------------------------------------------------------------------------------------------------ the server
def serve(args) -> None:
    """The child process: a tiny model behind uvicorn."""
    import torch
    import uvicorn

    from reasonseg.inference.segmenter import Segmenter
    from reasonseg.modeling.tiny import build_tiny_model
    from reasonseg.serving import ServeSettings, create_app

    torch.set_num_threads(args.threads)
    model, processor = build_tiny_model(seed=0)
    settings = ServeSettings(
        max_concurrency=args.max_concurrency,
        max_new_tokens=args.max_new_tokens,
        max_sessions=max(args.clients, 1),
        model_name="tiny (load test)",
    )
    app = create_app(Segmenter(model, processor), settings)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable, os.path.abspath(__file__), "--serve", "--port", str(port),
        "--max-concurrency", str(args.max_concurrency), "--max-new-tokens", str(args.max_new_tokens),
        "--clients", str(args.clients), "--threads", str(args.threads),
    ]
    process = subprocess.Popen(command)
    return process, f"http://127.0.0.1:{port}"


async def wait_ready(client, url: str, process: subprocess.Popen | None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}")
        try:
            if (await client.get(url + "/healthz")).status_code == 200:
                return
        except Exception:  # not listening yet
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"no server at {url} after {timeout:.0f} s")
        await asyncio.sleep(0.2)


# ----------------------------------------------------------------------------------------------------- the clients
def make_image(width: int, height: int) -> bytes:
    from PIL import Image

    array = (np.random.RandomState(0).rand(height, width, 3) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class Tally:
    def __init__(self):
        self.latencies: list[float] = []  # accepted requests only
        self.refused = 0  # 503
        self.errors: Counter = Counter()
        self.error_examples: list[str] = []

    def error(self, key: str, example: str) -> None:
        self.errors[key] += 1
        if len(self.error_examples) < 5:
            self.error_examples.append(example[:300])


async def one_client(index: int, client, url: str, image: bytes, args, deadline: float, tally: Tally) -> None:
    rng = random.Random(index)
    session_id = None
    while time.monotonic() < deadline:
        start = time.perf_counter()
        try:
            if args.mode == "chat" and session_id is None:
                response = await client.post(url + "/v1/sessions", files={"image": ("load.jpg", image, "image/jpeg")})
                if response.status_code == 201:
                    session_id = response.json()["id"]
                    continue  # opening the session is set-up, not a timed request
            elif args.mode == "chat":
                response = await client.post(url + f"/v1/sessions/{session_id}/messages", json={"prompt": PROMPT})
            else:
                response = await client.post(
                    url + "/v1/segment",
                    files={"image": ("load.jpg", image, "image/jpeg")},
                    data={"prompt": PROMPT, "force_seg": "true"},
                )
        except Exception as err:  # connection reset, timeout: an error, never expected
            tally.error(type(err).__name__, repr(err))
            await asyncio.sleep(0.1)
            continue
        elapsed = time.perf_counter() - start
        if response.status_code == 200:
            body = response.json()
            if not isinstance(body.get("text"), str) or not isinstance(body.get("masks"), list):
                tally.error("bad body", response.text)
            else:
                tally.latencies.append(elapsed)
        elif response.status_code == 503:
            tally.refused += 1
            retry = float(response.headers.get("Retry-After", "1"))
            await asyncio.sleep(min(retry, args.max_backoff) * rng.uniform(0.5, 1.0))
        elif response.status_code == 422 and args.mode == "chat" and "context_full" in response.text:
            session_id = None  # the conversation filled the context: start another, as a real client would
        else:
            tally.error(str(response.status_code), response.text)


async def run_load(args, url: str, process) -> int:
    import httpx

    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(timeout=args.request_timeout, limits=limits) as client:
        await wait_ready(client, url, process)
        info = (await client.get(url + "/v1/model")).json()
        image = make_image(*args.image_size)
        # one warm-up request (first-call costs), not counted
        await client.post(url + "/v1/segment", files={"image": ("w.jpg", image, "image/jpeg")}, data={"prompt": PROMPT})
        tally = Tally()
        started = time.monotonic()
        deadline = started + args.duration
        await asyncio.gather(
            *(one_client(i, client, url, image, args, deadline, tally) for i in range(args.clients))
        )
        elapsed = time.monotonic() - started
        health = (await client.get(url + "/healthz")).json()

    latencies = np.array(sorted(tally.latencies)) if tally.latencies else np.zeros(1)
    accepted = len(tally.latencies)
    errors = sum(tally.errors.values())
    print(f"server: {info['name']} ({info['backbone']}, {info['dtype']}, {info['device']}), "
          f"queue {health['queue']['max_waiting']} waiting + 1 running, mean model call {health['queue']['mean_call_s']:.3f} s")
    print(f"load:   {args.clients} clients, {args.mode} mode, {args.duration:.0f} s of new requests "
          f"({elapsed:.1f} s until the last answer), image {args.image_size[0]}x{args.image_size[1]}, "
          f"max_new_tokens {args.max_new_tokens}")
    print(f"accepted: {accepted} answered (200), {accepted / elapsed:.2f} requests/s")
    print(f"latency of accepted requests: p50 {np.percentile(latencies, 50):.2f} s, "
          f"p90 {np.percentile(latencies, 90):.2f} s, p99 {np.percentile(latencies, 99):.2f} s, max {latencies.max():.2f} s")
    print(f"refused with 503 (queue full, retried after Retry-After): {tally.refused}")
    print(f"errors: {errors}" + (f" {dict(tally.errors)}" if errors else ""))
    for example in tally.error_examples:
        print(f"  e.g. {example}")
    return 1 if errors else 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running server (default: start one with a tiny model)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds during which clients send requests")
    parser.add_argument("--mode", choices=["segment", "chat"], default="segment")
    parser.add_argument("--max-concurrency", type=int, default=8, help="the started server's queue size")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the started server")
    parser.add_argument("--image-size", type=lambda s: tuple(int(v) for v in s.split("x")), default=(640, 480),
                        metavar="WxH")
    parser.add_argument("--max-backoff", type=float, default=2.0, help="longest wait after a 503, in seconds")
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve(args)
        return 0
    process = None
    url = args.url.rstrip("/") if args.url else None
    if url is None:
        process, url = start_server(args)
    try:
        return asyncio.run(run_load(args, url, process))
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())
