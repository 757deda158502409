"""Weight initialisations applied to a whole network by name (``model.init`` of the training config).

``he_uniform``: He et al., "Delving Deep into Rectifiers", ICCV 2015 (arXiv:1502.01852), uniform form —
weights drawn from U(−√(6 / fan_in), √(6 / fan_in)), biases zero; the FC-DenseNet paper's initialisation
(Jégou et al., CVPR-W 2017, arXiv:1611.09326, Sec. 4), as Keras/Lasagne's ``HeUniform``.
``he_normal`` draws N(0, 2 / fan_in) instead; ``xavier_uniform`` is Glorot & Bengio's (AISTATS 2010).
Batch-norm layers keep weight 1 and bias 0.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)

INITIALIZERS: dict[str, Callable[[Tensor], Tensor]] = {
    "he_uniform": lambda weight: nn.init.kaiming_uniform_(weight, mode="fan_in", nonlinearity="relu"),
    "he_normal": lambda weight: nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu"),
    "xavier_uniform": nn.init.xavier_uniform_,
}


def initialize(model: nn.Module, name: str) -> nn.Module:
    """Re-initialise every convolution and linear layer of ``model`` in place with ``name``; biases zero."""
    if name not in INITIALIZERS:
        raise ValueError(f"unknown initialisation {name!r} (one of {', '.join(INITIALIZERS)})")
    draw = INITIALIZERS[name]
    for module in model.modules():
        if isinstance(module, _LAYERS):
            draw(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
