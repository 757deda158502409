"""``pixelseg serve``'s HTTP API: answers, limits and the worker queue (FastAPI TestClient over httpx)."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="pixelseg serve needs the serve extra (fastapi)")
pytest.importorskip("httpx", reason="the API tests drive the app with httpx")
from fastapi.testclient import TestClient  # noqa: E402
from pycocotools import mask as coco_mask  # noqa: E402

import pixelseg  # noqa: E402
from pixelseg.data.transforms import normalize, to_chw_uint8  # noqa: E402
from pixelseg.inference.forward import forward_whole  # noqa: E402
from pixelseg.serve.app import BodyLimit, create_app  # noqa: E402
from pixelseg.serve.segment import Limits  # noqa: E402

PALETTE = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
CLASSES = ["background", "horse", "grass"]


def saved_model(directory: Path) -> Path:
    """A tiny random semantic model with the data section a served model needs."""
    torch.manual_seed(0)
    model = pixelseg.create_model("unet", num_classes=3, in_channels=3, base_channels=4, depth=2, padding="same")
    model.pixelseg_config["data"] = {"classes": CLASSES, "palette": PALETTE, "in_channels": 3, "image_mode": "RGB",
                                     "ignore_index": 255, "mean": [0.5] * 3, "std": [0.25] * 3}
    return model.save_pretrained(directory)


def png(width: int = 40, height: int = 32, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def expected_labels(model_dir: Path, data: bytes) -> np.ndarray:
    """The labels straight from the model's forward pass, as ``pixelseg predict`` computes them."""
    model = pixelseg.from_pretrained(model_dir).eval()
    image = Image.open(io.BytesIO(data)).convert("RGB")
    pixels = normalize(to_chw_uint8(image).float() / 255.0, [0.5] * 3, [0.25] * 3)
    with torch.inference_mode():
        return forward_whole(model, pixels[None]).argmax(1)[0].numpy()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_model(tmp_path_factory.mktemp("served") / "model")


@pytest.fixture(scope="module")
def client(model_dir: Path) -> TestClient:
    with TestClient(create_app(model_dir, limits=Limits(max_bytes=200_000, max_pixels=100_000))) as client:
        yield client


def post(client: TestClient, data: bytes, format: str = "json", name: str = "photo.png"):
    return client.post(f"/v1/segment?format={format}", files={"image": (name, data, "application/octet-stream")})


def test_label_png_holds_the_models_argmax_and_its_palette(client: TestClient, model_dir: Path) -> None:
    data = png()
    response = post(client, data, "label")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    label = Image.open(io.BytesIO(response.content))
    assert label.mode == "P" and label.size == (40, 32)
    np.testing.assert_array_equal(np.asarray(label), expected_labels(model_dir, data))
    assert label.getpalette()[:9] == [v for colour in PALETTE for v in colour]


def test_json_counts_and_rle_masks_decode_to_the_label_map(client: TestClient, model_dir: Path) -> None:
    data = png(seed=3)
    response = post(client, data, "json")
    assert response.status_code == 200, response.text
    body = response.json()
    labels = expected_labels(model_dir, data)
    assert (body["width"], body["height"]) == (40, 32)
    assert [c["name"] for c in body["classes"]] == CLASSES
    for entry in body["classes"]:
        mask = labels == entry["index"]
        assert entry["pixels"] == int(mask.sum())
        if entry["rle"] is None:
            assert not mask.any()
        else:
            rle = {"size": entry["rle"]["size"], "counts": entry["rle"]["counts"].encode()}
            np.testing.assert_array_equal(coco_mask.decode(rle).astype(bool), mask)
    assert sum(c["pixels"] for c in body["classes"]) == 40 * 32


def test_overlay_is_the_image_blended_with_class_colours(client: TestClient, model_dir: Path) -> None:
    data = png(seed=5)
    response = post(client, data, "overlay")
    assert response.status_code == 200
    got = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=np.float64)
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
    colours = np.asarray(PALETTE, dtype=np.float64)[expected_labels(model_dir, data)]
    np.testing.assert_allclose(got, 0.5 * image + 0.5 * colours, atol=1)


def test_models_healthz_docs_page_and_remove_bg_answer(client: TestClient) -> None:
    models = client.get("/v1/models").json()["models"]
    assert models[0]["classes"] == CLASSES and models[0]["task"] == "semantic"
    assert models[0]["architecture"] == "unet" and models[0]["palette"] == PALETTE
    assert client.get("/healthz").json()["status"] == "ok"
    schema = client.get("/openapi.json").json()
    assert {"/v1/segment", "/v1/remove-bg", "/v1/models", "/healthz"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for asset in ("app.js", "app.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # offline: no CDN
    assert "http" not in client.get("/static/app.js").text
    removed = client.post("/v1/remove-bg", files={"image": ("a.png", png(), "image/png")})
    assert removed.status_code == 200 and removed.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(removed.content)).mode == "RGBA"


def test_non_images_get_415_with_a_one_line_reason(client: TestClient) -> None:
    for data in (b"hello, this is text", b"%PDF-1.4\n" + bytes(100), b""):
        response = post(client, data, name="notes.txt")
        assert response.status_code == 415, response.text
        assert "\n" not in response.json()["detail"] and response.json()["detail"].startswith("not an image")


def test_truncated_image_gets_400(client: TestClient) -> None:
    response = post(client, png()[:200])
    assert response.status_code == 400 and "unreadable image" in response.json()["detail"]


def bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width x height`` with a tiny, highly compressed body (a few KB)."""
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_decompression_bomb_is_refused_with_413_before_decoding(client: TestClient) -> None:
    data = bomb(4000, 4000)  # 16 Mpx in a few KB, over the 100,000-pixel limit
    assert len(data) < 100_000
    response = post(client, data)
    assert response.status_code == 413 and "decompression bomb" in response.json()["detail"]


def test_upload_over_the_byte_limit_gets_413_with_or_without_content_length(client: TestClient) -> None:
    big = bytes(400_000)
    assert post(client, big).status_code == 413
    body = b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n" + big + b"\r\n--x--\r\n"

    def chunks():
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    response = client.post("/v1/segment", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413, response.text


def test_chunked_body_stops_being_read_once_over_the_limit() -> None:
    """The middleware alone: no Content-Length, 10 chunks of 300 bytes against a 1000-byte limit."""
    pulled, sent = [], []

    async def receive() -> dict:
        pulled.append(1)
        return {"type": "http.request", "body": bytes(300), "more_body": len(pulled) < 10}

    async def send(message: dict) -> None:
        sent.append(message)

    async def reads_everything(scope, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    scope = {"type": "http", "method": "POST", "path": "/v1/segment", "headers": []}
    asyncio.run(BodyLimit(reads_everything, max_bytes=1000)(scope, receive, send))
    assert len(pulled) == 4  # 1200 bytes > 1000: stopped there
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [413]


def test_unknown_format_is_refused(client: TestClient) -> None:
    assert post(client, png(), "jpeg").status_code == 422  # FastAPI's validation of the query


def test_full_queue_answers_503_with_retry_after(model_dir: Path) -> None:
    app = create_app(model_dir, limits=Limits(workers=1, queue=1))
    served = app.state.served
    release, entered = threading.Event(), threading.Semaphore(0)
    segment = served.segment

    def slow(*args):
        entered.release()
        release.wait(10)
        return segment(*args)

    served.segment = slow
    results: list[int] = []
    with TestClient(app) as client:
        def call() -> None:
            results.append(post(client, png()).status_code)

        first = threading.Thread(target=call)
        first.start()
        assert entered.acquire(timeout=10)  # the worker is busy
        second = threading.Thread(target=call)
        second.start()
        for _ in range(200):  # the second request waits in the queue
            if app.state.pool.pending == 2:
                break
            threading.Event().wait(0.01)
        assert app.state.pool.pending == 2
        refused = post(client, png())
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        release.set()
        first.join(10)
        second.join(10)
    assert results == [200, 200]


def test_slow_inference_gets_504_and_frees_its_slot(model_dir: Path) -> None:
    app = create_app(model_dir, limits=Limits(workers=1, queue=0, timeout_s=0.2))
    served, release = app.state.served, threading.Event()
    segment = served.segment
    served.segment = lambda *args: (release.wait(10), segment(*args))[1]
    with TestClient(app) as client:
        assert post(client, png()).status_code == 504
        release.set()
        for _ in range(200):
            if app.state.pool.pending == 0:
                break
            threading.Event().wait(0.01)
        assert post(client, png()).status_code == 200


def test_instance_model_returns_predict_json(tmp_path: Path) -> None:
    from pixelseg.engine.predict import predict

    torch.manual_seed(0)
    model = pixelseg.create_model("mask_rcnn", num_classes=3, backbone="mobilenet_v3_large", width_mult=0.35,
                                  fpn_channels=16, representation_size=32, mask_head_channels=8, min_size=64,
                                  max_size=64, anchor_sizes=[8, 16, 32, 64, 128], rpn_post_nms_top_n_test=32)
    model.pixelseg_config["task"] = "instance"
    model.pixelseg_config["data"] = {"classes": ["bg", "a", "b"], "palette": PALETTE, "in_channels": 3,
                                     "image_mode": "RGB", "ignore_index": 255, "mean": [0.0] * 3,
                                     "std": [1.0] * 3}
    model_dir = model.save_pretrained(tmp_path / "model")
    data = png(64, 48, seed=1)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "photo.png").write_bytes(data)
    predict(model_dir, tmp_path / "in" / "photo.png", tmp_path / "out", score_threshold=0.0)
    wanted = json.loads((tmp_path / "out" / "predictions.json").read_text())
    app = create_app(model_dir)
    app.state.served.options.score_threshold = 0.0
    with TestClient(app) as client:
        response = post(client, data, "json")
        assert response.status_code == 200, response.text
        assert response.json() == wanted and len(wanted) > 0
        assert post(client, data, "label").status_code == 400
        overlay = post(client, data, "overlay")
        assert overlay.status_code == 200 and Image.open(io.BytesIO(overlay.content)).size == (64, 48)



def test_the_model_is_loaded_once_for_many_requests(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pixelseg.serve.segment as segment_module

    loads: list[Path] = []
    real = segment_module.from_pretrained
    monkeypatch.setattr(segment_module, "from_pretrained", lambda path, **kw: (loads.append(path), real(path))[1])
    with TestClient(create_app(model_dir)) as client:
        for seed in range(3):
            assert post(client, png(seed=seed), "label").status_code == 200
    assert len(loads) == 1


def test_cli_serve_starts_uvicorn_on_the_given_address(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from pixelseg import cli

    started: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(kw, app=app))
    result = CliRunner().invoke(cli.app, ["serve", str(model_dir), "--port", "8123", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert (started["host"], started["port"]) == ("127.0.0.1", 8123)
    assert started["app"].state.limits.workers == 2
    missing = CliRunner().invoke(cli.app, ["serve", str(model_dir.parent / "nothing")])
    assert missing.exit_code == 2 and "error:" in missing.output and "Traceback" not in missing.output


def test_panoptic_model_returns_its_native_panoptic_json(tmp_path: Path) -> None:
    """A panoptic model answers with the COCO panoptic JSON that `pixelseg predict` writes for the same image."""
    from pixelseg.engine.config import load_config
    from pixelseg.engine.predict import predict
    from pixelseg.engine.train import train
    from tests.helpers import write_config
    from tests.test_tasks_panoptic import TINY_CONFIG

    run = train(load_config(write_config(tmp_path, TINY_CONFIG, "panoptic")), quiet=True)
    data = png(64, 48, seed=2)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "photo.png").write_bytes(data)
    predict(run, tmp_path / "in" / "photo.png", tmp_path / "out")
    wanted = json.loads((tmp_path / "out" / "panoptic.json").read_text())
    with TestClient(create_app(run)) as client:
        response = post(client, data, "json")
        assert response.status_code == 200, response.text
        assert response.json() == wanted
        assert post(client, data, "label").status_code == 400
        overlay = post(client, data, "overlay")
        assert overlay.status_code == 200 and Image.open(io.BytesIO(overlay.content)).size == (64, 48)
