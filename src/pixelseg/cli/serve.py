"""``pixelseg serve MODEL_DIR``: the saved model behind an HTTP API and a web page (FastAPI on uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import PixelsegError
from .base import friendly, out


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly
    def serve(model_dir: Annotated[Path, typer.Argument(help="model directory or run directory")],
              host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
              port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
              device: Annotated[str, typer.Option(help="torch device of the model")] = "cpu",
              workers: Annotated[int, typer.Option(help="inferences at once")] = 1,
              queue: Annotated[int, typer.Option(help="requests waiting for a worker before 503")] = 16,
              max_upload_mb: Annotated[float, typer.Option(help="largest upload, MiB (413 above)")] = 20.0,
              max_pixels: Annotated[int, typer.Option(help="largest image, pixels (413 above)")] = 40_000_000,
              timeout: Annotated[float, typer.Option(help="seconds a request may wait and run (504)")] = 60.0
              ) -> None:
        """Serve a semantic or instance model: POST /v1/segment, GET /v1/models, /healthz, the API docs at
        /docs and a web page at /."""
        try:
            import uvicorn

            from ..serve.app import create_app
        except ImportError as error:
            raise PixelsegError(f"pixelseg serve needs the serve extra ({error.name} is missing): "
                                "pip install 'pixelseg[serve]'") from None
        from ..serve.segment import Limits

        limits = Limits(max_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels, workers=workers,
                        queue=queue, timeout_s=timeout)
        application = create_app(model_dir, device=device, limits=limits)
        out.print(f"serving {model_dir} on http://{host}:{port}/ (API docs at /docs)", highlight=False)
        uvicorn.run(application, host=host, port=port, log_level="warning")
