"""A bounded loopback load test of ``pixelseg serve``: 50 concurrent clients, a fixed number of requests.

Starts ``pixelseg serve`` as a subprocess on 127.0.0.1 (a free port) with a saved model (``--model``; by
default a small random U-Net saved to a temporary folder — the server's overhead, not a model's speed,
is what this measures), then ``--clients`` asyncio clients share ``--requests`` ``POST /v1/segment``
requests (one ``--size`` PNG, ``format=label``). Prints throughput (answered 200s per second),
p50/p99 latency of the 200s, the documented 503s (queue full), every other error (must be 0) and the
server process's peak RSS (sampled every 20 ms).

    .venv/bin/python benchmarks/serve_load.py --clients 50 --requests 500
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

HOST = "127.0.0.1"  # loopback only


def small_model(directory: Path) -> Path:
    import pixelseg

    model = pixelseg.create_model("unet", num_classes=3, in_channels=3, base_channels=8, depth=3, padding="same")
    model.pixelseg_config["data"] = {"classes": ["a", "b", "c"], "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
                                     "in_channels": 3, "image_mode": "RGB", "ignore_index": 255,
                                     "mean": [0.5] * 3, "std": [0.25] * 3}
    return model.save_pretrained(directory)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def png(size: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class PeakRss(threading.Thread):
    """Samples the resident memory of a process (and its children) until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process, self.peak, self.stop = psutil.Process(pid), 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                rss = self.process.memory_info().rss + sum(c.memory_info().rss for c in self.process.children(True))
                self.peak = max(self.peak, rss)
            except psutil.Error:
                return
            self.stop.wait(0.02)


async def load(url: str, body: bytes, clients: int, requests: int, timeout: float) -> tuple[list[float], Counter, float]:
    latencies: list[float] = []
    outcomes: Counter = Counter()
    remaining = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(session: httpx.AsyncClient) -> None:
        for _ in remaining:  # the clients share the fixed count
            start = time.perf_counter()
            try:
                response = await session.post("/v1/segment?format=label",
                                              files={"image": ("load.png", body, "image/png")})
                outcomes[str(response.status_code)] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
            except httpx.HTTPError as error:
                outcomes[type(error).__name__] += 1

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return latencies, outcomes, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a saved model (default: a small random U-Net)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--size", type=int, default=128, help="side of the square test image, pixels")
    parser.add_argument("--workers", type=int, default=1, help="the server's inference workers")
    parser.add_argument("--queue", type=int, default=16, help="the server's queue (503 past it)")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads (OMP_NUM_THREADS)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = args.model or small_model(Path(folder) / "model")
        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        server = subprocess.Popen([sys.executable, "-m", "pixelseg", "serve", str(model), "--host", HOST,
                                   "--port", str(port), "--workers", str(args.workers), "--queue", str(args.queue)],
                                  env=env, stdout=subprocess.DEVNULL)
        url = f"http://{HOST}:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            sampler = PeakRss(server.pid)
            sampler.start()
            latencies, outcomes, seconds = asyncio.run(load(url, png(args.size), args.clients, args.requests, 120))
            sampler.stop.set()
            sampler.join()
        finally:
            server.terminate()
            server.wait(30)
    ok, busy = outcomes.get("200", 0), outcomes.get("503", 0)
    errors = {key: count for key, count in outcomes.items() if key not in ("200", "503")}
    p50, p99 = (np.percentile(latencies, [50, 99]) * 1000) if latencies else (float("nan"),) * 2
    print(f"serve load: {args.clients} clients, {args.requests} requests, {args.size}x{args.size} PNG, "
          f"workers {args.workers}, queue {args.queue}, torch threads {args.threads}, {HOST}")
    print(f"  answered 200: {ok} in {seconds:.2f} s = {ok / seconds:.1f} req/s")
    print(f"  latency of 200s: p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    print(f"  503 (queue full, documented): {busy}")
    print(f"  other errors: {sum(errors.values())} {errors if errors else ''}".rstrip())
    print(f"  server peak RSS: {sampler.peak / 2**20:.0f} MiB")
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
