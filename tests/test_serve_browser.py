"""The page of ``pixelseg serve`` in real headless Chromium (Debian's ``chromium``, driven by Playwright):
upload an image, wait for the overlay, toggle a class, check the canvas changed, download the mask."""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)", allow_module_level=True)
pytest.importorskip("fastapi", reason="pixelseg serve needs the serve extra (fastapi)")
pytest.importorskip("uvicorn", reason="pixelseg serve needs the serve extra (uvicorn)")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test drives Chromium with playwright")
import httpx  # noqa: E402
import uvicorn  # noqa: E402
from test_serve_api import CLASSES, saved_model  # noqa: E402

from pixelseg.serve.app import create_app  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A real uvicorn server of a tiny model on a free loopback port."""
    model_dir = saved_model(tmp_path_factory.mktemp("browser") / "model")
    config = uvicorn.Config(create_app(model_dir), host="127.0.0.1", port=free_port(), log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{config.port}"
    running.should_exit = True
    thread.join(10)


def test_page_segments_toggles_a_class_and_downloads_the_mask(server: str, tmp_path: Path) -> None:
    # A photo-like image: smooth gradients, so the tiny random model predicts more than one class.
    y, x = np.mgrid[0:48, 0:64]
    pixels = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    photo = tmp_path / "photo.png"
    Image.fromarray(pixels).save(photo)
    with httpx.Client(base_url=server) as api:  # what the server answers for the same file
        files = {"image": ("photo.png", photo.read_bytes(), "image/png")}
        label_png = api.post("/v1/segment?format=label", files=files).content
        overlay = np.asarray(Image.open(io.BytesIO(api.post("/v1/segment?format=overlay", files=files).content)))
    labels = np.asarray(Image.open(io.BytesIO(label_png)))
    shown = int(np.bincount(labels.ravel(), minlength=len(CLASSES)).argmax())  # the class to hide

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(accept_downloads=True)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: errors.append(request.url)
                    if not request.url.startswith(server) else None)  # offline: nothing leaves the server
            page.goto(server + "/")
            page.wait_for_selector(f"#classes input >> nth={len(CLASSES) - 1}")
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("body[data-state=ready]", timeout=30_000)

            def canvas() -> np.ndarray:
                size, data = page.evaluate("""() => { const c = document.getElementById('view');
                    return [[c.height, c.width], Array.from(c.getContext('2d').getImageData(0, 0, c.width,
                    c.height).data)]; }""")
                return np.asarray(data, dtype=np.uint8).reshape(*size, 4)[..., :3]

            before = canvas()
            assert before.shape == overlay.shape
            assert np.abs(before.astype(int) - overlay.astype(int)).max() <= 1  # the server's overlay at 50%
            page.check(f"#classes input[data-index='{shown}']")  # already checked: no change
            page.uncheck(f"#classes input[data-index='{shown}']")
            after = canvas()
            hidden = labels == shown
            np.testing.assert_array_equal(after[hidden], pixels[hidden])  # the raw photo where the class was
            np.testing.assert_array_equal(after[~hidden], before[~hidden])
            assert hidden.any()

            with page.expect_download() as download_info:
                page.click("#download-mask")
            download = download_info.value
            assert download.suggested_filename == "photo_mask.png"
            saved = tmp_path / download.suggested_filename
            download.save_as(saved)
            np.testing.assert_array_equal(np.asarray(Image.open(saved)), labels)

            with page.expect_download() as download_info:
                page.click("#download-cutout")
            cutout = np.asarray(Image.open(download_info.value.path()))
            assert cutout.shape == (48, 64, 4)
            np.testing.assert_array_equal(cutout[..., 3] == 255, ~hidden)  # the hidden class is cut away
            assert not errors, errors
        finally:
            browser.close()
