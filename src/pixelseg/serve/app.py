"""The HTTP API and the web page of ``pixelseg serve`` (FastAPI; run by uvicorn).

Routes: ``POST /v1/segment`` (multipart ``image`` → JSON, label PNG or overlay PNG), ``POST /v1/remove-bg``
(multipart ``image`` → RGBA PNG cut-out, ``pixelseg remove-bg``'s), ``GET /v1/models``, ``GET /healthz``, the OpenAPI docs at ``/docs``
and the page at ``/`` (its files under ``/static``).

Limits: a request body over the upload limit is refused with 413 while it arrives (by its
``Content-Length``, or counted when it is chunked); an image over the pixel limit is refused with 413
before its pixels are decoded; bytes that are not an image get 415 with a one-line reason. Inference runs
in a pool of ``workers`` threads, off the event loop; at most ``queue`` more requests wait for it, the
next ones get 503 with ``Retry-After``; a request that waits and runs longer than the timeout gets 504.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..refiners.matting import DEFAULT_REFINEMENT
from .segment import Limits, Prediction, ServedModel, UploadRefused

STATIC = Path(__file__).with_name("static")
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the image in a request body

REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"description": "an unknown format, or an image that fails to decode"},
    413: {"description": "upload over the byte limit, or image over the pixel limit (decompression bombs)"},
    415: {"description": "not an image (PNG, JPEG, BMP, TIFF, WebP, GIF); the reason in one line"},
    422: {"description": "inference failed for this image (e.g. smaller than the network accepts)"},
    503: {"description": "every worker busy and the queue full; retry after `Retry-After` seconds"},
    504: {"description": "the request waited and ran longer than the server's timeout"},
}


class Busy(Exception):
    """The queue is full."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("busy")
        self.retry_after = retry_after


class WorkerPool:
    """``workers`` threads for inference and room for ``queue`` waiting requests; past that, ``Busy``.
    A slot is freed when its work ends, not when its request times out (the thread cannot be stopped)."""

    def __init__(self, workers: int, queue: int) -> None:
        self.workers, self.capacity = workers, workers + queue
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pixelseg-serve")
        self.pending = 0
        self.lock = threading.Lock()
        self.seconds_per_job = 0.1  # a running mean of the service time, for Retry-After

    async def run(self, work: Callable[[], Prediction], timeout_s: float) -> Prediction:
        with self.lock:
            if self.pending >= self.capacity:
                raise Busy(max(1, math.ceil(self.seconds_per_job * self.capacity / self.workers)))
            self.pending += 1
        future: Future[Prediction] = self.executor.submit(self._timed, work)
        future.add_done_callback(self._release)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)

    def _timed(self, work: Callable[[], Prediction]) -> Prediction:
        start = time.perf_counter()
        try:
            return work()
        finally:
            with self.lock:
                self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * (time.perf_counter() - start)

    def _release(self, _: Future[Prediction]) -> None:
        with self.lock:
            self.pending -= 1

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413, by its ``Content-Length`` before it is
    read, or (chunked) as soon as the bytes received pass the limit; the app then sees a disconnect and
    its answer is replaced by the 413."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Awaitable[dict[str, Any]]],
                       send: Callable[..., Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = JSONResponse({"detail": f"upload over the limit of {self.max_bytes:,} bytes"}, status_code=413)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await refusal(scope, receive, send)
            return
        received, over = 0, False

        async def counted() -> dict[str, Any]:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: dict[str, Any]) -> None:
            if not over:
                await send(message)

        await self.app(scope, counted, guarded)
        if over:
            await refusal(scope, receive, send)


def create_app(model_dir: str | Path, *, device: str = "cpu", limits: Limits | None = None) -> FastAPI:
    """The server of one saved model, loaded here once."""
    limits = limits or Limits()
    served = ServedModel(model_dir, device=device, max_pixels=limits.max_pixels)
    pool = WorkerPool(limits.workers, limits.queue)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        pool.shutdown()

    app = FastAPI(title="pixelseg", version=__version__, lifespan=lifespan,
                  description="Segment images with a saved pixelseg model; `POST /v1/remove-bg` cuts the "
                              "foreground out as an RGBA PNG.")
    app.state.served, app.state.pool, app.state.limits = served, pool, limits
    app.add_middleware(BodyLimit, max_bytes=limits.max_bytes + MULTIPART_OVERHEAD)

    @app.exception_handler(UploadRefused)
    async def refused(_: Request, error: UploadRefused) -> JSONResponse:
        return JSONResponse({"detail": error.reason}, status_code=error.status)

    @app.exception_handler(Busy)
    async def busy(_: Request, error: Busy) -> JSONResponse:
        return JSONResponse({"detail": "server busy: every worker is running and the queue is full"},
                            status_code=503, headers={"Retry-After": str(error.retry_after)})

    @app.post("/v1/segment", responses={200: {"content": {"application/json": {}, "image/png": {}}},
                                        **REFUSALS})
    async def segment(image: UploadFile = File(..., description="the image to segment"),
                      format: Literal["json", "label", "overlay"] = Query(
                          "json", description="json: classes, pixel counts and COCO RLE masks (instance "
                                              "models: their predictions.json records); label: palette PNG "
                                              "of class indices; overlay: the image with the class colours")
                      ) -> Response:
        """Segment one image with the served model."""
        data = await image.read(limits.max_bytes + 1)
        if len(data) > limits.max_bytes:
            raise UploadRefused(413, f"upload over the limit of {limits.max_bytes:,} bytes")
        filename = image.filename or "upload"
        try:
            result = await pool.run(lambda: served.segment(data, filename, format), limits.timeout_s)
        except asyncio.TimeoutError:
            raise UploadRefused(504, f"no answer within the server's timeout of {limits.timeout_s:g} s") from None
        return Response(result.body, media_type=result.media_type)

    @app.post("/v1/remove-bg", responses={200: {"content": {"image/png": {}}}, **REFUSALS})
    async def remove_bg(image: UploadFile = File(..., description="the photo to cut out"),
                        refine: Literal["guided", "matting", "crf", "none"] = Query(
                            DEFAULT_REFINEMENT, description="how the mask's edge becomes soft: guided filter, "
                                                            "closed-form matting, dense CRF or none"),
                        class_name: str | None = Query(None, alias="class",
                                                       description="the foreground class [foreground/horse/"
                                                                   "person, else class 1 of a binary model]")
                        ) -> Response:
        """Cut the foreground out of one photo: an RGBA PNG of the photo's size (``pixelseg remove-bg``)."""
        data = await image.read(limits.max_bytes + 1)
        if len(data) > limits.max_bytes:
            raise UploadRefused(413, f"upload over the limit of {limits.max_bytes:,} bytes")
        try:
            result = await pool.run(lambda: served.remove_background(data, refine, class_name), limits.timeout_s)
        except asyncio.TimeoutError:
            raise UploadRefused(504, f"no answer within the server's timeout of {limits.timeout_s:g} s") from None
        return Response(result.body, media_type=result.media_type)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The served model: its classes, palette, task and answer formats."""
        return {"models": [served.describe()]}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the model is loaded; how many requests are in the pool."""
        return {"status": "ok", "model": served.model_dir.name, "pending": pool.pending,
                "capacity": pool.capacity}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
