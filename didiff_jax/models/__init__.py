"""The networks (Flax NNX), built by name through one explicit factory.

``create_model(name, *, num_classes, rngs, **overrides)`` looks the name up in a plain dict; the
overrides are the builder's keyword options (``stem``, ``width``, ``dtype``, ...). An unknown name
or option fails with the valid choices.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from flax import nnx

from didiff_jax.models import captioner, resnet, vit
from didiff_jax.models.captioner import CaptionDenoiser
from didiff_jax.models.resnet import DiDiRN, ResNet
from didiff_jax.models.vit import AddViT, ViT

BUILDERS: dict[str, Callable[..., nnx.Module]] = {
    **resnet.BUILDERS,
    **vit.BUILDERS,
    **captioner.BUILDERS,
}


def create_model(name: str, *, num_classes: int, rngs: nnx.Rngs, **overrides) -> nnx.Module:
    """Build the network ``name`` (e.g. ``"didirn50"``, ``"resnet18"``, ``"add_vit_b16"``).

    ``overrides`` are the constructor options of that network (``stem``, ``width``, ``dtype``,
    ``image_size``, ...); an unknown one raises ``TypeError`` with the valid options.
    """
    if name not in BUILDERS:
        close = difflib.get_close_matches(name, list(BUILDERS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name](num_classes=num_classes, rngs=rngs, **overrides)


__all__ = ["BUILDERS", "AddViT", "CaptionDenoiser", "DiDiRN", "ResNet", "ViT", "create_model"]
