"""Label-space diffusion processes and their losses: pure ``jax.numpy``, no networks.

* ``ctmc``: the uniform continuous-time Markov chain of DiDiCM (SPEC 1.1-1.3, 1.5).
* ``gaussian_onehot``: Gaussian diffusion on one-hot vectors, ADD/TDD (SPEC 2).
* ``masked``: the absorbing-state process of the MDD baseline.
* ``schedules``: sigma / abar / alpha schedules of the three.
"""

from didiff_jax.diffusion.ctmc import (
    cl_euler_probs,
    cp_analytic_step,
    cp_euler_step,
    log_rho,
    log_score_from_x0_logits,
    sample_categorical,
    sample_uniform,
    score_entropy,
    soft_score_entropy,
    tweedie_probs,
    uniform_marginal,
)
from didiff_jax.diffusion.gaussian_onehot import (
    gaussian_onehot_forward,
    lambda_hot,
    noise_regression_loss,
    sample_gaussian_onehot,
    to_one,
    weighted_cross_entropy,
    x0_from_eps,
)
from didiff_jax.diffusion.masked import (
    mask_corrupt,
    masked_cross_entropy,
    masked_weight,
    unmask_probability,
)
from didiff_jax.diffusion.schedules import (
    T_EPS,
    CosineAbar,
    Geometric,
    LinearBetaAbar,
    LogLinear,
    MaskCosine,
    MaskLinear,
    sample_t,
)

__all__ = [
    "T_EPS",
    "CosineAbar",
    "Geometric",
    "LinearBetaAbar",
    "LogLinear",
    "MaskCosine",
    "MaskLinear",
    "cl_euler_probs",
    "cp_analytic_step",
    "cp_euler_step",
    "gaussian_onehot_forward",
    "lambda_hot",
    "log_rho",
    "log_score_from_x0_logits",
    "mask_corrupt",
    "masked_cross_entropy",
    "masked_weight",
    "noise_regression_loss",
    "sample_categorical",
    "sample_gaussian_onehot",
    "sample_t",
    "sample_uniform",
    "score_entropy",
    "soft_score_entropy",
    "to_one",
    "tweedie_probs",
    "uniform_marginal",
    "unmask_probability",
    "weighted_cross_entropy",
    "x0_from_eps",
]
