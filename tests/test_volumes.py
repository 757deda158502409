"""V-Net, the 3D volume reader, the synthetic volumes, 3D scores and V-Net's Dice loss against MONAI and
scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pixelseg
from pixelseg.data.volumes import SyntheticVolumes, VolumeFolder, isbi2012_volume, read_volume
from pixelseg.errors import PixelsegError
from pixelseg.losses import VNetDiceLoss, vnet_dice_loss
from pixelseg.metrics.volume import VolumeScores, dice_iou_per_class

TINY_VNET = {"channels": [4, 8, 16], "down_convs": [1, 2, 2], "up_convs": [2, 1]}


# ---- V-Net structure -----------------------------------------------------------------------------------
def _stage_convs(stage: nn.Module) -> list[nn.Conv3d]:
    return [m for m in stage.modules() if isinstance(m, nn.Conv3d)]


def test_vnet_has_the_papers_stages_widths_and_kernels() -> None:
    with torch.device("meta"):
        model = pixelseg.create_model("vnet", num_classes=2, in_channels=1)
    down = [model.input_stage, *model.down_stages]
    assert [len(_stage_convs(s)) for s in down] == [1, 2, 3, 3, 3]
    assert [_stage_convs(s)[-1].out_channels for s in down] == [16, 32, 64, 128, 256]
    assert [len(_stage_convs(s)) for s in model.up_stages] == [3, 3, 2, 1]
    assert [_stage_convs(s)[-1].out_channels for s in model.up_stages] == [256, 128, 64, 32]
    for stage in [*down, *model.up_stages]:
        assert all(conv.kernel_size == (5, 5, 5) for conv in _stage_convs(stage))
    for conv in (block[0] for block in model.down):  # strided convolutions instead of pooling
        assert conv.kernel_size == (2, 2, 2) and conv.stride == (2, 2, 2)
        assert conv.out_channels == 2 * conv.in_channels
    for up in (block[0].conv for block in model.up):
        assert isinstance(up, nn.ConvTranspose3d) and up.kernel_size == (2, 2, 2) and up.stride == (2, 2, 2)
    assert not any(isinstance(m, (nn.ReLU, nn.BatchNorm3d, nn.MaxPool3d)) for m in model.modules())
    assert sum(isinstance(m, nn.PReLU) for m in model.modules()) > 20


def test_vnet_convolutions_equal_monais_vnet_at_monais_stage_depths() -> None:
    monai_nets = pytest.importorskip("monai.networks.nets")
    with torch.device("meta"):
        # MONAI's VNet (a port of the authors' code via vnet.pytorch) uses 1, 1, 2, 3, 2 / 2, 2, 1, 1 convs.
        model = pixelseg.create_model("vnet", num_classes=2, in_channels=1, down_convs=[1, 1, 2, 3, 2],
                                      up_convs=[2, 2, 1, 1])
        reference = monai_nets.VNet(spatial_dims=3, in_channels=1, out_channels=2, act="prelu")

    def shapes(net: nn.Module) -> list[tuple]:
        return sorted((type(m).__name__, tuple(m.weight.shape)) for m in net.modules()
                      if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)))

    assert shapes(model) == shapes(reference)


@pytest.mark.parametrize("size", [(13, 17, 11), (16, 16, 16)])
def test_vnet_output_has_the_volume_size(size: tuple[int, int, int]) -> None:
    model = pixelseg.create_model("vnet", num_classes=3, in_channels=2, **TINY_VNET).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 2, *size)).shape == (2, 3, *size)


def test_vnet_paper_configuration_runs_at_an_odd_size() -> None:
    with torch.device("meta"):  # shapes only: the 65M-parameter network is not computed
        model = pixelseg.create_model("vnet", num_classes=2, in_channels=1).eval()
        assert model(torch.randn(1, 1, 9, 18, 17)).shape == (1, 2, 9, 18, 17)


def test_vnet_rejects_2d_images() -> None:
    model = pixelseg.create_model("vnet", num_classes=2, **TINY_VNET)
    with pytest.raises(ValueError, match="volumes"):
        model(torch.randn(1, 1, 16, 16))


def test_vnet_is_registered_as_3d_and_round_trips(tmp_path) -> None:
    from pixelseg.models.registry import model_entry

    assert "vnet" in pixelseg.list_models() and "3D" in model_entry("vnet").paper
    model = pixelseg.create_model("vnet", num_classes=3, in_channels=3, **TINY_VNET).eval()
    model.save_pretrained(tmp_path)
    rebuilt = pixelseg.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 8, 12, 8)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_vnet_trains_with_the_dice_loss_on_synthetic_volumes() -> None:
    torch.manual_seed(0)
    data = SyntheticVolumes(4, size=(16, 16, 16), seed=1)
    images = torch.stack([data[i][0] for i in range(4)])
    labels = torch.stack([data[i][1] for i in range(4)])
    model = pixelseg.create_model("vnet", num_classes=3, in_channels=1, **TINY_VNET)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def mean_dice() -> float:
        model.eval()
        with torch.no_grad():
            scores = VolumeScores(3)
            scores.update(model(images), labels)
        model.train()
        return scores.compute()["mean_dice"]

    dice_before, losses = mean_dice(), []
    for _ in range(15):
        loss = vnet_dice_loss(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    assert mean_dice() > dice_before + 0.05


# ---- V-Net Dice loss -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("include_background", "batch"), [(True, False), (False, False), (False, True)])
def test_vnet_dice_loss_equals_monai_squared_dice(include_background: bool, batch: bool) -> None:
    losses = pytest.importorskip("monai.losses")
    logits = torch.randn(2, 3, 5, 6, 7)
    target = torch.randint(0, 3, (2, 5, 6, 7))
    reference = losses.DiceLoss(softmax=True, to_onehot_y=True, squared_pred=True, smooth_nr=0.0,
                                smooth_dr=1e-6, include_background=include_background, batch=batch)
    ours = vnet_dice_loss(logits, target, include_background=include_background, batch=batch)
    assert torch.allclose(ours, reference(logits, target[:, None]), atol=1e-6)


def test_vnet_dice_loss_gradient_is_the_papers_formula() -> None:
    # Binary case: D = 2 Σ p g / (Σ p² + Σ g²), ∂D/∂p_j = 2 [g_j (Σp² + Σg²) − 2 p_j Σ p g] / (Σp² + Σg²)².
    logits = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    target = torch.randint(0, 2, (1, 4, 4, 4))
    probs = logits.softmax(1)
    probs.retain_grad()
    p = probs[0, 1].detach().flatten()
    g = (target[0] == 1).float().flatten()
    denominator = (p * p).sum() + (g * g).sum()
    expected = 2 * (g * denominator - 2 * p * (p * g).sum()) / denominator**2
    # Our loss on foreground only is 1 − D, so its gradient w.r.t. p is −∂D/∂p.
    p_leaf = probs.detach().clone().requires_grad_(True)
    loss = 1 - 2 * (p_leaf[:, 1] * (target == 1)).sum() / ((p_leaf[:, 1] ** 2).sum() + (target == 1).sum())
    loss.backward()
    assert torch.allclose(-p_leaf.grad[0, 1].flatten(), expected, atol=1e-6)
    assert torch.allclose(vnet_dice_loss(logits, target, include_background=False, eps=0.0), loss, atol=1e-6)


def test_vnet_dice_loss_ignores_ignored_voxels() -> None:
    logits = torch.randn(1, 3, 4, 5, 6)
    target = torch.randint(0, 3, (1, 4, 5, 6))
    ignored = torch.rand(1, 4, 5, 6) < 0.3
    with_ignore = vnet_dice_loss(logits, torch.where(ignored, 255, target), ignore_index=255)
    keep = ~ignored[0]
    only_kept = vnet_dice_loss(logits[0][:, keep][None], target[0][keep][None])
    assert torch.allclose(with_ignore, only_kept, atol=1e-6)
    assert torch.allclose(VNetDiceLoss(ignore_index=255)(logits, torch.where(ignored, 255, target)), with_ignore)


def test_vnet_dice_loss_is_registered_for_build_loss() -> None:
    from pixelseg.losses import build_loss

    loss = build_loss([{"name": "vnet_dice", "include_background": False}])
    assert isinstance(loss, VNetDiceLoss) and not loss.include_background


# ---- 3D scores -----------------------------------------------------------------------------------------
def test_volume_scores_equal_monai_dice_and_iou_per_volume() -> None:
    metrics = pytest.importorskip("monai.metrics")
    prediction = torch.randint(0, 3, (3, 6, 7, 8))
    target = torch.randint(0, 3, (3, 6, 7, 8))
    target[2][target[2] == 2] = 0  # class 2 absent from the ground truth of one volume
    prediction[2][prediction[2] == 2] = 1  # ... and from its prediction
    scores = VolumeScores(3)
    scores.update(prediction, target)
    result = scores.compute()

    def onehot(labels: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels, 3).movedim(-1, 1)

    dice = metrics.DiceMetric(include_background=True, reduction="none")(onehot(prediction), onehot(target))
    iou = metrics.MeanIoU(include_background=True, reduction="none")(onehot(prediction), onehot(target))
    assert np.allclose(result["dice_per_class"], dice.nanmean(0).numpy(), atol=1e-6)
    assert np.allclose(result["iou_per_class"], iou.nanmean(0).numpy(), atol=1e-6)
    assert torch.isnan(dice[2, 2]) and result["volumes"] == 3


def test_dataset_scores_equal_sklearn_on_flattened_voxels() -> None:
    from sklearn.metrics import f1_score, jaccard_score

    prediction = torch.randint(0, 4, (2, 5, 6, 7))
    target = torch.randint(0, 4, (2, 5, 6, 7))
    scores = VolumeScores(4)
    scores.update(prediction, target)
    result = scores.compute()
    flat_p, flat_t = prediction.flatten().numpy(), target.flatten().numpy()
    assert np.allclose(result["dataset_iou_per_class"], jaccard_score(flat_t, flat_p, average=None))
    assert np.allclose(result["dataset_dice_per_class"], f1_score(flat_t, flat_p, average=None))
    dice, iou = dice_iou_per_class(prediction[0], target[0], 4)
    assert np.allclose(iou.numpy(), jaccard_score(target[0].flatten(), prediction[0].flatten(), average=None))


# ---- volume reader -------------------------------------------------------------------------------------
def _write_pair(tmp_path, stem: str, image: np.ndarray, label: np.ndarray, suffix: str = ".npy"):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(exist_ok=True)
    labels.mkdir(exist_ok=True)
    for folder, array in ((images, image), (labels, label)):
        if suffix == ".npy":
            np.save(folder / f"{stem}.npy", array)
        else:
            import tifffile

            tifffile.imwrite(folder / f"{stem}{suffix}", array, photometric="minisblack")
    return images, labels


def test_volume_folder_reads_npy_and_multipage_tif_pairs_by_stem(tmp_path) -> None:
    rng = np.random.default_rng(0)
    image_a, label_a = rng.integers(0, 255, (6, 8, 10), dtype=np.uint8), rng.integers(0, 3, (6, 8, 10))
    image_b, label_b = rng.random((4, 8, 10), dtype=np.float32), rng.integers(0, 3, (4, 8, 10)).astype(np.uint8)
    _write_pair(tmp_path, "a", image_a, label_a, ".npy")
    images, labels = _write_pair(tmp_path, "b", image_b, label_b, ".tif")
    data = VolumeFolder(images, labels, num_classes=3, normalize=False)
    assert len(data) == 2
    image, label = data[0]
    assert image.shape == (1, 6, 8, 10) and image.dtype == torch.float32
    assert np.array_equal(image[0].numpy(), image_a.astype(np.float32)) and np.array_equal(label.numpy(), label_a)
    import tifffile

    assert len(tifffile.TiffFile(images / "b.tif").pages) == 4  # a multi-page stack: one page per slice
    image, label = data[1]
    assert image.shape == (1, 4, 8, 10) and np.array_equal(label.numpy(), label_b)
    normalized, _ = VolumeFolder(images, labels)[1]
    assert abs(float(normalized.mean())) < 1e-5 and abs(float(normalized.std(unbiased=False)) - 1) < 1e-4


def test_volume_folder_names_the_file_when_shapes_differ(tmp_path) -> None:
    images, labels = _write_pair(tmp_path, "case7", np.zeros((4, 8, 8)), np.zeros((4, 8, 9), dtype=np.int64))
    with pytest.raises(PixelsegError, match=r"case7\.npy.*differ in shape"):
        VolumeFolder(images, labels)[0]


def test_volume_folder_reports_unreadable_and_unpaired_files(tmp_path) -> None:
    images, labels = _write_pair(tmp_path, "ok", np.zeros((4, 8, 8)), np.zeros((4, 8, 8), dtype=np.int64))
    (images / "broken.npy").write_bytes(b"not a numpy file")
    (labels / "broken.npy").write_bytes(b"not a numpy file")
    data = VolumeFolder(images, labels)
    with pytest.raises(PixelsegError, match=r"broken\.npy: cannot read volume"):
        data[0]
    (images / "lonely.tif").write_bytes(b"II*\x00")
    with pytest.raises(PixelsegError, match=r"lonely\.tif: no label volume"):
        VolumeFolder(images, labels)


def test_read_volume_refuses_pickled_arrays_and_2d_images(tmp_path) -> None:
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PixelsegError, match="objects.npy"):
        read_volume(tmp_path / "objects.npy")
    images, labels = _write_pair(tmp_path, "flat", np.zeros((8, 8)), np.zeros((8, 8), dtype=np.int64))
    with pytest.raises(PixelsegError, match=r"flat\.npy.*\(D, H, W\)"):
        VolumeFolder(images, labels)[0]


def test_volume_folder_rejects_out_of_range_and_fractional_labels(tmp_path) -> None:
    images, labels = _write_pair(tmp_path, "v", np.zeros((2, 4, 4)), np.full((2, 4, 4), 7, dtype=np.int64))
    with pytest.raises(PixelsegError, match=r"v\.npy: label values must lie in \[0, 3\)"):
        VolumeFolder(images, labels, num_classes=3)[0]
    np.save(labels / "v.npy", np.full((2, 4, 4), 0.5))
    with pytest.raises(PixelsegError, match="integer class indices"):
        VolumeFolder(images, labels)[0]


# ---- synthetic and ISBI volumes ------------------------------------------------------------------------
def test_synthetic_volumes_are_deterministic_by_seed_and_hold_every_class() -> None:
    first, again, other = SyntheticVolumes(3, seed=5), SyntheticVolumes(3, seed=5), SyntheticVolumes(3, seed=6)
    image, label = first[1]
    assert image.shape == (1, 32, 32, 32) and label.shape == (32, 32, 32)
    assert torch.equal(image, again[1][0]) and torch.equal(label, again[1][1])
    assert not torch.equal(label, other[1][1])
    present = set().union(*(set(first[i][1].unique().tolist()) for i in range(3)))
    assert present == {0, 1, 2}
    # Balls are bright and cubes dark on average: the classes are visible in the image.
    image, label = first[0]
    for cls, sign in ((1, 1), (2, -1)):
        if (label == cls).any():
            assert sign * float(image[0][label == cls].mean()) > 0.5


def test_isbi2012_stack_is_one_30_slice_volume(isbi_root) -> None:
    image, label = isbi2012_volume(isbi_root)
    assert image.shape == (30, 512, 512) and label.shape == (30, 512, 512)
    assert set(np.unique(label).tolist()) == {0, 1}
    assert 0.1 < float((label == 0).mean()) < 0.4  # membranes are a minority class


def test_isbi2012_volume_dataset_splits_the_stack_in_space(isbi_root) -> None:
    from pixelseg.data.volumes import ISBI2012Volume

    train, val = ISBI2012Volume(isbi_root, "train"), ISBI2012Volume(isbi_root, "val")
    assert len(train) == len(val) == 1
    train_image, (val_image, val_label) = train[0][0], val[0]
    assert train_image.shape == (1, 30, 512, 384) and val_label.shape == (30, 512, 128)
    _, whole = isbi2012_volume(isbi_root)
    assert np.array_equal(val_label.numpy(), whole[..., 384:])  # the held-out block, no overlap
    assert abs(float(val_image.mean())) < 1e-4 and abs(float(val_image.std()) - 1) < 1e-3
    with pytest.raises(PixelsegError, match="splits"):
        ISBI2012Volume(isbi_root, "test")


# ---- volumes through the data builder, `pixelseg train`, evaluate and predict ----------------------------
def test_random_volume_patch_crops_pads_and_flips_image_and_label_together() -> None:
    from pixelseg.data.volumes import RandomVolumePatch

    label = torch.arange(6 * 7 * 8).reshape(6, 7, 8) % 250  # all values below the ignore index 255
    image = label[None].float()  # label == image: any joint transform keeps them equal
    augment = RandomVolumePatch([4, 5, 5], hflip=True, vflip=True, rotate90=True, dflip=True)
    seen = set()
    for _ in range(20):
        patch_image, patch_label = augment(image, label)
        assert patch_image.shape == (1, 4, 5, 5) and patch_label.shape == (4, 5, 5)
        assert torch.equal(patch_image[0].long(), patch_label)
        seen.add(int(patch_label[0, 0, 0]))
    assert len(seen) > 5  # random positions and orientations
    padded_image, padded_label = RandomVolumePatch([8, 7, 8], hflip=False, ignore_index=255)(image, label)
    assert padded_image.shape == (1, 8, 7, 8) and (padded_label == 255).sum() == 2 * 7 * 8
    with pytest.raises(PixelsegError, match="square"):
        RandomVolumePatch([4, 5, 6], rotate90=True)
    with pytest.raises(PixelsegError, match="three positive sizes"):
        RandomVolumePatch([4, 5])


def _volume_config(tmp_path, **data):
    from pixelseg.engine.config import Config, DataConfig, LossTerm, ModelConfig, TrainConfig

    settings = {"name": "synthetic_volumes", "num_samples": 8, "val_samples": 2, "image_size": 16,
                "patch_size": [16, 16, 16], "batch_size": 4, "vflip": True, "dflip": True, **data}
    config = Config(model=ModelConfig(name="vnet", kwargs=dict(TINY_VNET)), data=DataConfig(**settings),
                    loss=[LossTerm(name="vnet_dice")], train=TrainConfig(epochs=4, out_dir=str(tmp_path / "run")))
    config.optim.lr = 3e-3
    return config


def test_pixelseg_train_trains_vnet_on_volumes_then_evaluates_and_predicts(tmp_path) -> None:
    import csv

    from pixelseg.engine.evaluate import evaluate
    from pixelseg.engine.predict import predict
    from pixelseg.engine.train import train

    run = train(_volume_config(tmp_path), quiet=True)
    rows = list(csv.DictReader(open(run / "log.csv")))
    losses = [float(row["train_loss"]) for row in rows]
    assert len(losses) == 4 and losses[-1] < losses[0]
    model = pixelseg.from_pretrained(run / "best")
    assert model.pixelseg_config["data"]["spatial_dims"] == 3
    scores = evaluate(run)
    assert scores["images"] == 2 and len(scores["dice_per_class"]) == 3 and 0 <= scores["mean_dice"] <= 1
    flipped = evaluate(run, tta_flip=True, tta_rotate=True)  # flips and in-plane turns work on volumes; scales not
    assert flipped["tta"]["flip"] and flipped["tta"]["rotate"] and 0 <= flipped["mean_iou"] <= 1
    with pytest.raises(PixelsegError, match="volumetric models take --tta-flip and --tta-rotate"):
        evaluate(run, tta_scales=[0.5, 1.0])
    # Predict: a .npy and a multi-page .tif volume in a folder, one unreadable file reported, not fatal.
    tifffile = pytest.importorskip("tifffile")
    inputs = tmp_path / "in"
    inputs.mkdir()
    volume = SyntheticVolumes(1, size=(12, 20, 16), seed=7)[0][0][0].numpy()
    np.save(inputs / "a.npy", volume)
    tifffile.imwrite(inputs / "b.tif", volume)
    (inputs / "c.npy").write_bytes(b"not an array")
    report = predict(run, inputs, tmp_path / "out")
    assert len(report.failed) == 1 and "c.npy" in report.failed[0]
    labels = np.load(tmp_path / "out" / "a.npy")
    from pixelseg.data.volumes import normalize_volume

    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(normalize_volume(volume[None]))[None]).argmax(1)[0]
    assert labels.shape == (12, 20, 16) and np.array_equal(labels, expected.numpy())
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "b.tif"), labels)
    # The exported graph (dynamic D, H, W) through ONNX Runtime writes the same labels.
    pytest.importorskip("onnxruntime")
    from pixelseg.engine.predict import InferenceOptions

    onnx_report = predict(run, inputs / "a.npy", tmp_path / "onnx", options=InferenceOptions(backend="onnxruntime"))
    assert not onnx_report.failed and np.array_equal(np.load(tmp_path / "onnx" / "a.npy"), labels)


@pytest.mark.parametrize(("data", "message"), [
    ({"crop_size": 8}, "data.crop_size applies to 2D images"),
    ({"patch_size": [8, 8]}, "data.patch_size"),
    ({"name": "shapes", "patch_size": [8, 8, 8]}, "data.patch_size applies to volumes"),
    ({"split_typo": None}, None),
])
def test_volume_configs_refuse_options_of_the_other_dimensionality(tmp_path, data, message) -> None:
    from pixelseg.data.build import build_data

    if message is None:
        with pytest.raises(TypeError):
            _volume_config(tmp_path, **data)
        return
    with pytest.raises(PixelsegError, match=message):  # at config load (ranges) or at data build (options)
        build_data(_volume_config(tmp_path, **data).data)


def test_predict_refuses_2d_only_options_for_volumetric_models(tmp_path) -> None:
    from pixelseg.engine.predict import InferenceOptions, predict
    from pixelseg.engine.train import train

    config = _volume_config(tmp_path)
    config.train.epochs = 1
    run = train(config, quiet=True)
    np.save(tmp_path / "v.npy", np.zeros((8, 8, 8), np.float32))
    with pytest.raises(PixelsegError, match="--tile: not available for volumetric"):
        predict(run, tmp_path / "v.npy", tmp_path / "out", options=InferenceOptions(tile=8))
    with pytest.raises(PixelsegError, match="--backend openvino: not available for volumetric"):
        predict(run, tmp_path / "v.npy", tmp_path / "out", options=InferenceOptions(backend="openvino"))


def test_vnet_exported_at_a_multiple_of_its_stride_still_pads_other_sizes(tmp_path) -> None:
    """The pad is emitted whatever the traced size, so an exported V-Net takes any volume."""
    ort = pytest.importorskip("onnxruntime")
    model = pixelseg.create_model("vnet", num_classes=2, in_channels=1, channels=[2, 4, 8], down_convs=[1, 1, 1],
                                  up_convs=[1, 1]).eval()
    path = tmp_path / "vnet.onnx"
    axes = {0: "batch", 2: "depth", 3: "height", 4: "width"}
    with torch.no_grad():  # traced at sides that are all multiples of 4 (V-Net's stride here)
        torch.onnx.export(model, (torch.randn(1, 1, 8, 12, 16),), str(path), input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": axes, "logits": axes}, opset_version=17,
                          dynamo=False)
    odd = torch.randn(1, 1, 9, 19, 13)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": odd.numpy()})
    with torch.no_grad():
        expected = model(odd).numpy()
    assert got.shape == (1, 2, 9, 19, 13)
    np.testing.assert_allclose(got, expected, atol=1e-5)
