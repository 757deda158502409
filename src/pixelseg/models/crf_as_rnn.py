"""Any registered segmentation network followed by a trainable CRF-as-RNN layer, built by name so that a
saved model (``save_pretrained`` / ``from_pretrained``) is rebuilt with its layer.

Zheng et al., "Conditional Random Fields as Recurrent Neural Networks", ICCV 2015 (arXiv:1502.03240);
the layer is ``pixelseg.refiners.crf_as_rnn.CRFasRNN``. ``mean`` and ``std`` are the data pipeline's
normalisation, from which the layer recovers the 0..255 colours of its appearance kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..refiners.crf_as_rnn import WithCRFasRNN
from ..refiners.dense_crf import IMAGENET_MEAN, IMAGENET_STD
from .registry import create_model, register


@register("crf_as_rnn", paper="Zheng et al., Conditional Random Fields as Recurrent Neural Networks, ICCV 2015, "
                              "arXiv:1502.03240")
def crf_as_rnn(num_classes: int, in_channels: int = 3, *, base: str, base_kwargs: dict[str, Any] | None = None,
               iterations: int = 5, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               crf: dict[str, float] | None = None, encoder: str | None = None,
               encoder_weights: str | None = None) -> WithCRFasRNN:
    """``base`` (built with ``base_kwargs``) + CRF-as-RNN with ``iterations`` mean-field steps; ``crf``:
    the layer's other options (``theta_alpha``, ``theta_beta``, ``theta_gamma``, kernel weights)."""
    if in_channels != 3:
        raise ValueError(f"CRF-as-RNN's appearance kernel needs RGB images (3 channels), not {in_channels}")
    model = create_model(base, num_classes=num_classes, in_channels=in_channels, encoder=encoder,
                         encoder_weights=encoder_weights, **(base_kwargs or {}))
    return WithCRFasRNN(model, num_classes, mean=mean, std=std, iterations=iterations, **(crf or {}))
