"""didiff_jax: image classification as diffusion in label space (DiDiCM, ADD/TDD), in JAX/Flax.

Public entry points so far:
* ``didiff_jax.diffusion``: forward processes, losses and reverse steps (pure ``jax.numpy``).
* ``didiff_jax.samplers``: ``cp_sample``, ``cl_sample``, ``onehot_sample``, ``masked_sample``.
"""

__version__ = "0.1.0"
