"""didiff_jax: image classification as diffusion in label space (DiDiCM, ADD/TDD), in JAX/Flax.

Public entry points:
* ``didiff_jax.load(workdir) -> Trained``: a trained run for notebooks (``didiff_jax.api``):
  ``predict``, ``preprocess`` and the network as the functions the samplers take.
* ``didiff_jax.diffusion``: forward processes, losses and reverse steps (pure ``jax.numpy``).
* ``didiff_jax.samplers``: ``cp_sample``, ``cl_sample``, ``onehot_sample``, ``masked_sample``.

``import didiff_jax`` stays cheap: ``load`` and ``Trained`` import the API (and JAX, Flax, orbax)
on first use (PEP 562; the only function-local import of a project module).

The modules are layered (``[tool.importlinter]`` in ``pyproject.toml``, checked in CI): the maths,
networks and data at the bottom; samplers, objectives, optimizer, sharding and checkpoints; the run
state and the one inference module; the training loop and the evaluators; ``api``; the command
lines at the top. A module imports only from the layers below it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from didiff_jax.api import Trained, load

__version__ = "0.1.0"
__all__ = ["Trained", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from didiff_jax import api

        return getattr(api, name)
    raise AttributeError(f"module 'didiff_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
