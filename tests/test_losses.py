"""Losses against independent references: torch, torchvision.ops, MONAI, segmentation_models_pytorch
(whose Lovász code is the authors'), brute-force distance maps; finite gradients; learning on Shapes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss as MonaiDice
from monai.losses import FocalLoss as MonaiFocal
from monai.losses import GeneralizedDiceLoss as MonaiGeneralizedDice
from monai.losses import TverskyLoss as MonaiTversky
from PIL import Image
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from pixelseg.data.shapes import Shapes
from pixelseg.errors import PixelsegError
from pixelseg.losses import (
    LOSSES,
    BoundaryLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    LovaszHingeLoss,
    LovaszSoftmaxLoss,
    RegionBoundaryLoss,
    TverskyLoss,
    build_loss,
    signed_distance_map,
)
from pixelseg.metrics import ConfusionMatrix

IGNORE = 255
ATOL = 1e-5


def random_case(classes: int = 4, ignore: bool = True, seed: int = 0, size: int = 12
                ) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(3, classes, size, size, generator=generator)
    target = torch.randint(0, max(classes, 2), (3, size, size), generator=generator)
    if ignore:
        target[torch.rand(target.shape, generator=generator) < 0.2] = IGNORE
    return logits, target


def camvid_case(root: Path, size: int = 24) -> tuple[Tensor, Tensor]:
    """Two real CamVid label maps (void → 255), downsampled; logits: a noisy one-hot of a shifted mask."""
    masks = []
    for name in sorted((root / "trainannot").glob("*.png"))[:2]:
        label = Image.open(name).resize((size, size), Image.NEAREST)
        masks.append(torch.from_numpy(np.array(label, dtype=np.int64)))
    target = torch.stack(masks)
    target[target == 11] = IGNORE
    shifted = torch.roll(target, shifts=2, dims=-1).clamp(max=10)
    generator = torch.Generator().manual_seed(1)
    logits = 3 * F.one_hot(shifted, 11).permute(0, 3, 1, 2).float()
    return logits + torch.randn(logits.shape, generator=generator), target


def flat_valid(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The counted pixels as one image: logits (1, C, N), target (1, 1, N) — for references without
    an ignore index."""
    valid = target != IGNORE
    scores = logits.movedim(1, -1)[valid]  # (N, C)
    return scores.T.unsqueeze(0), target[valid].reshape(1, 1, -1)


def assert_close(ours: Tensor, reference: Tensor) -> None:
    assert torch.isfinite(ours)
    assert abs(float(ours) - float(reference)) <= ATOL, (float(ours), float(reference))


# ---- references ---------------------------------------------------------------------------------------
def ce_reference(logits: Tensor, target: Tensor, weights: Tensor, by_pixels: bool) -> Tensor:
    """Written out: −w_y log softmax_y, summed, over Σ w_y (torch) or the pixel count (MMSeg)."""
    x, y = flat_valid(logits.double(), target)
    log_probs = x[0].T.log_softmax(1)  # (N, C)
    y = y.reshape(-1)
    w = weights.double()[y]
    total = -(w * log_probs[torch.arange(len(y)), y]).sum()
    return total / (len(y) if by_pixels else w.sum())


REFERENCES: dict[str, tuple[Callable[[], nn.Module], Callable[[Tensor, Tensor], Tensor]]] = {
    "dice_monai": (lambda: DiceLoss(smooth=0.5),
                   lambda x, y: MonaiDice(softmax=True, to_onehot_y=True, batch=True, smooth_nr=0.5,
                                          smooth_dr=0.5)(*flat_valid(x, y))),
    "dice_vnet_monai": (lambda: DiceLoss(smooth=1e-5, form="vnet"),
                        lambda x, y: MonaiDice(softmax=True, to_onehot_y=True, batch=True, squared_pred=True,
                                               smooth_nr=1e-5, smooth_dr=1e-5)(*flat_valid(x, y))),
    "dice_no_background_monai": (lambda: DiceLoss(smooth=1.0, include_background=False),
                                 lambda x, y: MonaiDice(softmax=True, to_onehot_y=True, batch=True,
                                                        include_background=False, smooth_nr=1.0,
                                                        smooth_dr=1.0)(*flat_valid(x, y))),
    "generalized_dice_monai": (lambda: DiceLoss(smooth=1e-5, generalized=True),
                               lambda x, y: MonaiGeneralizedDice(softmax=True, to_onehot_y=True, batch=True,
                                                                 smooth_nr=1e-5,
                                                                 smooth_dr=1e-5)(*flat_valid(x, y))),
    "tversky_monai": (lambda: TverskyLoss(alpha=0.3, beta=0.7, smooth=1.0),
                      lambda x, y: MonaiTversky(softmax=True, to_onehot_y=True, batch=True, alpha=0.3,
                                                beta=0.7, smooth_nr=1.0, smooth_dr=1.0)(*flat_valid(x, y))),
    "focal_softmax_monai": (lambda: FocalLoss(gamma=2.0, alpha=0.25),
                            lambda x, y: MonaiFocal(use_softmax=True, to_onehot_y=True, gamma=2.0, alpha=0.25,
                                                    reduction="none")(*flat_valid(x, y)).sum(1).mean()),
    "focal_sigmoid_smp": (lambda: FocalLoss(gamma=1.5, alpha=0.4, activation="sigmoid"),
                          lambda x, y: smp.losses.FocalLoss("multiclass", alpha=0.4, gamma=1.5,
                                                            ignore_index=IGNORE)(x, y)),
    "lovasz_softmax_batch_smp": (lambda: LovaszSoftmaxLoss(per_image=False),
                                 lambda x, y: smp.losses.LovaszLoss("multiclass", per_image=False,
                                                                    ignore_index=IGNORE)(x, y)),
    "lovasz_softmax_image_smp": (lambda: LovaszSoftmaxLoss(per_image=True),
                                 lambda x, y: smp.losses.LovaszLoss("multiclass", per_image=True,
                                                                    ignore_index=IGNORE)(x, y)),
    "jaccard_monai_tversky_1_1": (lambda: JaccardLoss(smooth=1.0),  # Tversky with α = β = 1 is Jaccard
                                  lambda x, y: MonaiTversky(softmax=True, to_onehot_y=True, batch=True, alpha=1.0,
                                                            beta=1.0, smooth_nr=1.0,
                                                            smooth_dr=1.0)(*flat_valid(x, y))),
    "bce_one_vs_rest_torch": (lambda: LOSSES["bce"](),
                              lambda x, y: F.binary_cross_entropy_with_logits(
                                  flat_valid(x, y)[0][0].T,
                                  F.one_hot(flat_valid(x, y)[1].reshape(-1), x.shape[1]).float())),
    "cross_entropy_weighted": (lambda: CrossEntropyLoss(class_weights=[0.5, 2.0, 1.0, 3.0][:4]),
                               lambda x, y: ce_reference(x, y, torch.tensor([0.5, 2.0, 1.0, 3.0]), False)),
    "cross_entropy_mmseg": (lambda: CrossEntropyLoss(class_weights=[0.5, 2.0, 1.0, 3.0], normalization="pixels"),
                            lambda x, y: ce_reference(x, y, torch.tensor([0.5, 2.0, 1.0, 3.0]), True)),
}
# smp's region losses zero the loss of classes absent from the ground truth; where every class is
# present they are the plain soft scores and must agree with ours. smp writes Dice as Tversky with
# α = β = ½, (TP + s) / (TP + ½FP + ½FN + s) = (2TP + 2s) / (Σp + Σg + 2s): its smooth s is our 2s.
SMP_WHEN_ALL_PRESENT = {
    "dice_smp": (lambda: DiceLoss(smooth=2.0),
                 lambda x, y: smp.losses.DiceLoss("multiclass", smooth=1.0, ignore_index=IGNORE)(x, y)),
    "jaccard_smp": (lambda: JaccardLoss(smooth=1.0),
                    lambda x, y: smp.losses.JaccardLoss("multiclass", smooth=1.0, ignore_index=IGNORE)(x, y)),
    "tversky_smp": (lambda: TverskyLoss(alpha=0.7, beta=0.3, smooth=0.0),
                    lambda x, y: smp.losses.TverskyLoss("multiclass", alpha=0.7, beta=0.3,
                                                        ignore_index=IGNORE)(x, y)),
}


@pytest.mark.parametrize("name", list(REFERENCES) + list(SMP_WHEN_ALL_PRESENT))
@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_loss_matches_reference_on_random_inputs(name: str, seed: int) -> None:
    ours, reference = {**REFERENCES, **SMP_WHEN_ALL_PRESENT}[name]
    logits, target = random_case(seed=seed)
    assert all((target == c).any() for c in range(4))
    assert_close(ours()(logits, target), reference(logits, target))


@pytest.mark.parametrize("name", [n for n in REFERENCES if "weighted" not in n and "mmseg" not in n])
def test_multiclass_loss_matches_reference_on_camvid_masks(name: str, camvid_root: Path) -> None:
    ours, reference = REFERENCES[name]
    logits, target = camvid_case(camvid_root)
    assert (target == IGNORE).any()
    assert_close(ours()(logits, target), reference(logits, target))


def test_weighted_cross_entropy_on_camvid_with_its_median_frequency_weights(camvid_root: Path) -> None:
    from pixelseg.data.stats import count_classes, median_frequency_weights

    logits, target = camvid_case(camvid_root)
    weights = torch.tensor(median_frequency_weights(*count_classes(target, 11)[:2]), dtype=torch.float32)
    for normalization, by_pixels in (("weights", False), ("pixels", True)):
        loss = CrossEntropyLoss(class_weights=weights.tolist(), normalization=normalization)
        assert_close(loss(logits, target), ce_reference(logits, target, weights, by_pixels))


def test_per_image_region_losses_match_monai_without_ignored_pixels() -> None:
    logits, target = random_case(ignore=False)
    onehot_target = target.unsqueeze(1)
    pairs = [
        (DiceLoss(smooth=1.0, per_image=True),
         MonaiDice(softmax=True, to_onehot_y=True, smooth_nr=1.0, smooth_dr=1.0)),
        (DiceLoss(smooth=1e-5, generalized=True, per_image=True),
         MonaiGeneralizedDice(softmax=True, to_onehot_y=True, smooth_nr=1e-5, smooth_dr=1e-5)),
        (TverskyLoss(alpha=0.2, beta=0.8, per_image=True),
         MonaiTversky(softmax=True, to_onehot_y=True, alpha=0.2, beta=0.8, smooth_nr=1.0, smooth_dr=1.0)),
    ]
    for ours, reference in pairs:
        assert_close(ours(logits, target), reference(logits, onehot_target))


def test_generalized_dice_matches_monai_when_a_class_is_absent() -> None:
    logits, target = random_case(classes=5)
    target[target == 4] = 0  # class 4 absent: MONAI gives it the largest weight of the others
    reference = MonaiGeneralizedDice(softmax=True, to_onehot_y=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    assert_close(DiceLoss(smooth=1e-5, generalized=True)(logits, target), reference(*flat_valid(logits, target)))


# ---- binary (one channel) ----------------------------------------------------------------------------
def binary_case(seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(3, 1, 10, 10, generator=generator)
    target = torch.randint(0, 2, (3, 10, 10), generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.15] = IGNORE
    return logits, target


def binary_valid(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    valid = target != IGNORE
    return logits[:, 0][valid], target[valid].float()


BINARY_REFERENCES = {
    "focal_torchvision": (lambda: FocalLoss(gamma=2.0, alpha=0.25),
                          lambda x, y: sigmoid_focal_loss(*binary_valid(x, y), alpha=0.25, gamma=2.0,
                                                          reduction="mean")),
    "bce_torch": (lambda: LOSSES["bce"](), lambda x, y: F.binary_cross_entropy_with_logits(*binary_valid(x, y))),
    "cross_entropy_is_bce": (lambda: CrossEntropyLoss(),
                             lambda x, y: F.binary_cross_entropy_with_logits(*binary_valid(x, y))),
    "dice_smp": (lambda: DiceLoss(smooth=2.0),  # smp's smooth 1 is our 2 (see above)
                 lambda x, y: smp.losses.DiceLoss("binary", smooth=1.0, ignore_index=IGNORE)(x, y.unsqueeze(1))),
    "dice_monai": (lambda: DiceLoss(smooth=1e-5),
                   lambda x, y: MonaiDice(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)(
                       binary_valid(x, y)[0].reshape(1, 1, -1), binary_valid(x, y)[1].reshape(1, 1, -1))),
    "jaccard_smp": (lambda: JaccardLoss(smooth=1.0),
                    lambda x, y: smp.losses.JaccardLoss("binary", smooth=1.0, ignore_index=IGNORE)(x, y.unsqueeze(1))),
    "lovasz_hinge_image_smp": (lambda: LovaszHingeLoss(per_image=True),
                               lambda x, y: smp.losses.LovaszLoss("binary", per_image=True, ignore_index=IGNORE)(x, y)),
    "lovasz_hinge_batch_smp": (lambda: LovaszHingeLoss(per_image=False),
                               lambda x, y: smp.losses.LovaszLoss("binary", per_image=False, ignore_index=IGNORE)(x, y)),
}


@pytest.mark.parametrize("name", list(BINARY_REFERENCES))
@pytest.mark.parametrize("seed", [0, 1])
def test_binary_loss_matches_reference(name: str, seed: int) -> None:
    ours, reference = BINARY_REFERENCES[name]
    logits, target = binary_case(seed)
    assert_close(ours()(logits, target), reference(logits, target))


def test_binary_losses_on_isbi_membranes(isbi_root: Path) -> None:
    label = Image.open(isbi_root / "label" / "0.png").convert("L").resize((48, 48), Image.NEAREST)
    target = torch.from_numpy((np.array(label) < 128).astype(np.int64)).unsqueeze(0)  # 1 = membrane
    generator = torch.Generator().manual_seed(2)
    logits = (4 * target.float() - 2 + 1.5 * torch.randn(target.shape, generator=generator)).unsqueeze(1)
    for name in ("focal_torchvision", "dice_smp", "lovasz_hinge_image_smp"):
        ours, reference = BINARY_REFERENCES[name]
        assert_close(ours()(logits, target), reference(logits, target))


# ---- worked examples --------------------------------------------------------------------------------
def test_lovasz_hinge_worked_example() -> None:
    # Two foreground pixels with logits 2 and 0, one background pixel with logit 0.5.
    # Hinge errors: max(0, 1 − 2) = 0, 1 − 0 = 1, 1 + 0.5 = 1.5. Sorted decreasing: 1.5 (bg), 1 (fg), 0 (fg).
    # Jaccard loss of the prefixes: {bg}: 1 − 2/3 = 1/3; {bg, fg}: 1 − 1/3 = 2/3; all: 1 − 0/3 = 1.
    # Gradient (increments): 1/3, 1/3, 1/3 → loss 1.5/3 + 1/3 + 0 = 5/6.
    logits = torch.tensor([2.0, 0.0, 0.5]).reshape(1, 1, 1, 3)
    target = torch.tensor([1, 1, 0]).reshape(1, 1, 3)
    assert abs(float(LovaszHingeLoss()(logits, target)) - 5 / 6) < 1e-6


def test_dice_worked_example_and_ignored_pixels_stay_out_of_the_smoothing() -> None:
    # Binary, p = σ(0) = 0.5 on two pixels with target 1 and 0: 2·0.5 + 1 over (1 + 1) + 1 → 1 − 2/3.
    logits = torch.zeros(1, 1, 1, 3)
    target = torch.tensor([[[1, 0, IGNORE]]])
    assert abs(float(DiceLoss(smooth=1.0)(logits, target)) - 1 / 3) < 1e-6
    # An ignored pixel with any logit changes nothing.
    logits[..., 2] = 7.0
    assert abs(float(DiceLoss(smooth=1.0)(logits, target)) - 1 / 3) < 1e-6


# ---- boundary loss -----------------------------------------------------------------------------------
def brute_force_signed_distance(mask: np.ndarray) -> np.ndarray:
    """Kervadec's map from pairwise distances: outside, the distance to the nearest mask pixel; inside,
    minus (the distance to the nearest outside pixel − 1)."""
    points = np.stack(np.meshgrid(*map(np.arange, mask.shape), indexing="ij"), -1).reshape(-1, 2)
    flat = mask.reshape(-1)
    distances = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    result = np.zeros(flat.shape)
    if flat.any():
        result[~flat] = distances[~flat][:, flat].min(1)
        if (~flat).any():
            result[flat] = -(distances[flat][:, ~flat].min(1) - 1)
    return result.reshape(mask.shape)


def test_signed_distance_map_is_exact() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.random((9, 11)) < 0.3
        np.testing.assert_allclose(signed_distance_map(mask), brute_force_signed_distance(mask), atol=1e-5)
    assert not signed_distance_map(np.zeros((4, 4), bool)).any()


def test_boundary_loss_matches_the_definition_and_skips_ignored_pixels() -> None:
    logits, target = random_case(classes=3, size=8)
    probs = logits.softmax(1)
    valid = target != IGNORE
    total = 0.0
    for b in range(3):
        for c in (1, 2):
            phi = torch.from_numpy(brute_force_signed_distance((target[b] == c).numpy())).float()
            total += float((probs[b, c] * phi)[valid[b]].sum())
    expected = total / (2 * int(valid.sum()))
    assert_close(BoundaryLoss()(logits, target), torch.tensor(expected))


def test_boundary_loss_on_camvid_masks_matches_brute_force_distances(camvid_root: Path) -> None:
    logits, target = camvid_case(camvid_root, size=16)
    probs = logits.softmax(1)
    valid = target != IGNORE
    total = 0.0
    for b in range(len(target)):
        for c in range(1, 11):
            phi = torch.from_numpy(brute_force_signed_distance((target[b] == c).numpy())).float()
            total += float((probs[b, c] * phi)[valid[b]].sum())
    assert_close(BoundaryLoss()(logits, target), torch.tensor(total / (10 * int(valid.sum()))))


def test_lovasz_softmax_all_classes_equals_present_when_all_occur_and_differs_otherwise() -> None:
    logits, target = random_case()
    assert_close(LovaszSoftmaxLoss(classes="all")(logits, target), LovaszSoftmaxLoss()(logits, target))
    target[target == 3] = 0
    assert abs(float(LovaszSoftmaxLoss(classes="all")(logits, target)) -
               float(LovaszSoftmaxLoss()(logits, target))) > 1e-3


def test_region_boundary_schedule_counts_steps_not_auxiliary_calls() -> None:
    loss = build_loss([{"name": "region_boundary", "region": {"name": "dice", "smooth": 1.0},
                        "alpha_start": 1.0, "alpha_step": 0.25, "alpha_min": 0.3, "steps_per_epoch": 2}])
    assert isinstance(loss, RegionBoundaryLoss)
    logits, target = random_case(classes=3, size=8)
    region, boundary = DiceLoss(smooth=1.0)(logits, target), BoundaryLoss()(logits, target)
    alphas = []
    for _ in range(8):  # 8 steps, each with a main and an auxiliary call on the same target
        batch_target = target.clone()
        value = loss(logits, batch_target)
        loss(logits, batch_target)
        alphas.append(loss.alpha)
        assert_close(value, loss.alpha * region + (1 - loss.alpha) * boundary)
    assert alphas == [1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 0.3, 0.3]
    loss.set_epoch(1)
    assert loss.alpha == 0.75


# ---- config, gradients -------------------------------------------------------------------------------
def test_weighted_sum_from_config_is_the_sum_of_references() -> None:
    logits, target = binary_case()
    loss = build_loss([{"name": "bce", "weight": 0.5}, {"name": "dice", "smooth": 1.0}])
    expected = 0.5 * F.binary_cross_entropy_with_logits(*binary_valid(logits, target)) + \
        smp.losses.DiceLoss("binary", smooth=0.5, ignore_index=IGNORE)(logits, target.unsqueeze(1))
    assert_close(loss(logits, target), expected)
    with pytest.raises(PixelsegError, match="did you mean 'focal'"):
        build_loss([{"name": "focall"}])
    with pytest.raises(PixelsegError, match="loss 'dice'"):
        build_loss([{"name": "dice", "form": "cubic"}])


MULTICLASS_NAMES = ["cross_entropy", "bce", "focal", "dice", "jaccard", "tversky", "lovasz_softmax",
                    "boundary", "region_boundary"]
PARAMS: dict[str, dict] = {"dice": {"form": "vnet", "generalized": True}}


@pytest.mark.parametrize(("name", "channels"),
                         [(n, c) for n in MULTICLASS_NAMES for c in (1, 4)] + [("lovasz_hinge", 1)])
def test_gradients_are_finite_and_zero_on_ignored_pixels(name: str, channels: int) -> None:
    logits, target = random_case(classes=channels)
    if channels == 1:
        target = torch.where(target == IGNORE, target, target % 2)
    logits = (logits * 20).requires_grad_()  # saturated logits too
    value = build_loss([{"name": name, **PARAMS.get(name, {})}])(logits, target)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    assert logits.grad[ignored].abs().max() == 0
    assert logits.grad.abs().sum() > 0


# ---- learning --------------------------------------------------------------------------------------
def shapes_tensors(count: int, split: str) -> tuple[Tensor, Tensor]:
    data = Shapes(count, size=32, split=split, seed=3)
    images, masks = zip(*(data.load(i) for i in range(count)), strict=True)
    x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 255
    return (x - 0.5) / 0.25, torch.from_numpy(np.stack(masks))


def tiny_net(out_channels: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for in_channels, dilation in ((3, 1), (16, 2), (16, 4)):
        layers += [nn.Conv2d(in_channels, 16, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(16), nn.ReLU()]
    return nn.Sequential(*layers, nn.Conv2d(16, out_channels, 1))


def mean_iou(model: nn.Module, images: Tensor, masks: Tensor, binary: bool) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(images)
    model.train()
    prediction = (logits[:, 0] > 0).long() if binary else logits.argmax(1)
    matrix = ConfusionMatrix(2 if binary else 4)
    matrix.update(prediction, masks)
    return matrix.mean_iou()


# The boundary loss alone is not expected to learn (Kervadec et al. pair it with a region loss), so it is
# trained as ``region_boundary`` with the weight moving to it quickly.
@pytest.mark.parametrize("name", [n for n in MULTICLASS_NAMES if n != "boundary"] + ["lovasz_hinge"])
def test_training_on_shapes_improves_iou(name: str) -> None:
    """30 Adam steps of a 3-layer dilated CNN on 8 Shapes images (32x32) raise their mIoU."""
    torch.set_num_threads(1)
    binary = name == "lovasz_hinge"
    images, masks = shapes_tensors(8, "train")
    if binary:
        masks = masks.clamp(max=1)  # shape vs background
    model = tiny_net(1 if binary else 4)
    params = {"region_boundary": {"alpha_start": 1.0, "alpha_step": 0.02, "alpha_min": 0.5, "steps_per_epoch": 1}}
    criterion = build_loss([{"name": name, **params.get(name, {})}])
    before = mean_iou(model, images, masks, binary)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = criterion(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = mean_iou(model, images, masks, binary)
    assert after > before + 0.05, (before, after)


def test_focal_without_focusing_or_alpha_is_cross_entropy() -> None:
    logits, target = random_case()
    assert_close(FocalLoss(gamma=0.0)(logits, target), F.cross_entropy(logits, target, ignore_index=IGNORE))


def test_loss_terms_from_a_yaml_config_as_the_trainer_builds_them(tmp_path: Path) -> None:
    from pixelseg.engine.config import load_config

    config_path = tmp_path / "experiment.yaml"
    config_path.write_text(
        "loss:\n"
        "  - {name: cross_entropy, weight: 1.0, params: {class_weights: [1, 2, 2, 2], normalization: pixels}}\n"
        "  - name: region_boundary\n"
        "    weight: 0.5\n"
        "    params: {region: {name: dice, generalized: true}, alpha_step: 0.01, steps_per_epoch: 10}\n")
    config = load_config(config_path)
    loss = build_loss([{"name": t.name, "weight": t.weight, **t.params} for t in config.loss])
    logits, target = random_case(classes=4, size=8)
    expected = ce_reference(logits, target, torch.tensor([1.0, 2, 2, 2]), True) + 0.5 * DiceLoss(
        generalized=True)(logits, target)  # α = 1 in the first epoch: the region loss alone
    assert_close(loss(logits, target), expected)
