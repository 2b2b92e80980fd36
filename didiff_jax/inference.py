"""The one place that turns a config and a network into a predictor.

An evaluation sampler entry (``config.eval.samplers``) is a dict: ``{"name": "cp", "method":
"euler" | "analytic", "mode": "min", "steps": (1, 2, 4, 8)}``, ``{"name": "cl", "num_chains": 10,
...}``, ``{"name": "onehot", "to_one": "argmax", "guidance_scale": 1.0, "steps": (...)}``,
``{"name": "masked", "steps": (...)}`` or ``{"name": "classifier"}`` (the baselines' softmax).
:func:`make_predict_fn` wires the run's objective (its schedule and how it is sampled), its network
and that sampler together; the classification and caption evaluators, ``Trained.predict`` and the
benchmarks all call it, so a run is trained, evaluated and served with the same schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from didiff_jax import samplers
from didiff_jax.losses import ctmc_schedule, mask_schedule, onehot_sampling

SAMPLERS = {"didicm": ("cp", "cl"), "add": ("onehot",), "tdd": ("onehot",), "mdd": ("masked",),
            "classifier": ("classifier",)}  # fmt: skip
"""The samplers each objective's network can drive ("classifier": the baselines' softmax)."""


def sampler_label(entry: ml_collections.ConfigDict, *, captions: bool = False) -> str:
    """A short name for a sampler entry: ``cp-euler``, ``cl-euler-n10``, ``onehot-argmax-g2``,
    ``masked``, ``classifier``; for captions (``captions=True``) ``tdd-argmax[-g2]``,
    ``mdd[-g2]``."""
    name = entry.name
    g = entry.get("guidance_scale", 1.0)
    suffix = f"-g{g:g}" if g != 1.0 else ""
    if captions:
        if name == "onehot":
            return f"tdd-{entry.get('to_one', 'argmax')}{suffix}"
        if name == "masked":
            return f"mdd{suffix}"
        raise ValueError(f"caption samplers are 'onehot' (TDD) or 'masked' (MDD), got {name!r}")
    if name == "cp":
        return f"cp-{entry.get('method', 'euler')}"
    if name == "cl":
        return f"cl-{entry.get('method', 'euler')}-n{entry.get('num_chains', 10)}"
    if name == "onehot":
        return f"onehot-{entry.get('to_one', 'argmax')}{suffix}"
    return name


def sampler_runs(
    config: ml_collections.ConfigDict,
) -> list[tuple[ml_collections.ConfigDict, int | None]]:
    """(entry, steps) pairs of ``config.eval.samplers``; steps is None for the classifier."""
    runs = []
    for entry in config.eval.samplers:
        entry = ml_collections.ConfigDict(entry)
        if entry.name == "classifier":
            runs.append((entry, None))
        else:
            runs.extend((entry, int(s)) for s in entry.steps)
    return runs


def calibration_readout(label: str, probs: Any, traj: Any) -> tuple[Any, str]:
    """(probabilities, name): what top-5, NLL and ECE are computed from; top-1 is always the
    sampler's answer (``probs``).

    The one-hot chain (ADD) ends with the head re-predicting from its own re-noised argmax: at the
    last step (t = 1/S) it mostly copies it (mean top probability ~0.998 on a trained model), so
    those probabilities say nothing about the uncertainty. Its readout is the first step's, the
    prediction from pure noise (t = 1): the network's posterior over the label given the image.
    The other samplers' final probabilities are already that (CP's chain marginal, CL's vote, the
    masked sampler's draw distribution, the classifier's softmax): ``final``.
    """
    if readout_name(label) == "t=1":
        return traj[0], "t=1"
    return probs, "final"


def readout_name(label: str) -> str:
    """Which probabilities :func:`calibration_readout` reads for the sampler ``label``: ``t=1``
    (the one-hot chain's first step) or ``final``."""
    return "t=1" if label.startswith("onehot") else "final"


def make_predict_fn(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                    entry: ml_collections.ConfigDict, num_steps: int | None, num_classes: int, *,
                    seq_len: int | None = None) -> Callable[..., dict[str, jax.Array]]:  # fmt: skip
    """``fn(params, rest, images, key) -> {"answer", "probs", "traj"}``, not jitted (jit it
    around the outputs you need; XLA drops the others).

    One label (``seq_len`` None): ``probs`` [B, K], ``traj`` the probabilities after every step
    [S, B, K] (MDD: the one-hot label decoded so far, all zero while masked; the classifier: its
    softmax, S = 1), ``answer`` = argmax of ``probs`` [B]. A caption of ``seq_len`` = N tokens:
    ``probs`` [B, N, V], ``traj`` [S, B, N, V] (MDD: the one-hot tokens revealed so far) and
    ``answer`` int [B, N]: the argmax for TDD, the tokens MDD drew as it revealed them.
    Classifier-free guidance (``guidance_scale`` != 1) mixes in the learned null condition.
    """
    name = entry.name
    objective = config.objective

    def fn(params, rest, images, key):
        model = nnx.merge(graphdef, params, rest)
        if name == "classifier":
            probs = jax.nn.softmax(model(images, train=False), axis=-1)  # [B, K]
            return {"answer": probs.argmax(-1), "probs": probs, "traj": probs[None]}
        if name in ("cp", "cl"):

            def score_fn(imgs, x_t, sigma):  # noqa: E306
                return model(imgs, x_t, sigma, train=False)  # log_score [B, K]

            common = dict(num_classes=num_classes, num_steps=num_steps, return_trajectory=True,
                          schedule=ctmc_schedule(objective), method=entry.get("method", "euler"))  # fmt: skip
            if name == "cp":
                probs, traj = samplers.cp_sample(score_fn, images, key,
                                                 mode=entry.get("mode", "min"), **common)  # fmt: skip
            else:
                probs, traj = samplers.cl_sample(score_fn, images, key,
                                                 num_chains=entry.get("num_chains", 10), **common)  # fmt: skip
            return {"answer": probs.argmax(-1), "probs": probs, "traj": traj}
        cond = model.encode(images, train=False)  # once per image
        B = jax.tree.leaves(cond)[0].shape[0]
        g = entry.get("guidance_scale", 1.0)
        guide = dict(guidance_scale=g, guidance_schedule=entry.get("guidance_schedule", None),
                     null_cond=model.null_condition(B) if g != 1.0 else None)  # fmt: skip
        tokens = {} if seq_len is None else {"seq_len": seq_len}
        if name == "onehot":
            probs, traj = samplers.onehot_sample(
                lambda y, t, c: model.denoise(y, t, c, train=False), cond, key,
                num_classes=num_classes, num_steps=num_steps, to_one=entry.get("to_one", "argmax"),
                return_trajectory=True, **onehot_sampling(objective), **guide, **tokens,
            )  # fmt: skip
            return {"answer": probs.argmax(-1), "probs": probs, "traj": traj}
        if name == "masked":
            if seq_len is None:  # the ADD head on one label: int labels in [0, K] as one-hot rows

                def logits_fn(x, t, c):  # noqa: E306
                    return model.denoise(jax.nn.one_hot(x, num_classes), t, c, train=False)
            else:

                def logits_fn(x, t, c):  # noqa: E306
                    return model.denoise(x, t, c, train=False)

            drawn, probs, traj = samplers.masked_sample(
                logits_fn, cond, key, num_classes=num_classes, num_steps=num_steps,
                schedule=mask_schedule(objective), return_trajectory=True, **guide, **tokens,
            )  # fmt: skip
            answer = probs.argmax(-1) if seq_len is None else drawn
            return {"answer": answer, "probs": probs, "traj": jax.nn.one_hot(traj, num_classes)}
        raise ValueError(f"unknown sampler {name!r}: cp, cl, onehot, masked or classifier")

    return fn


def decoded_tokens(traj: jnp.ndarray, mask_id: int) -> jnp.ndarray:
    """The tokens a trajectory [S, B, N, V] shows after each step, int [S, B, N]: the argmax, or
    ``mask_id`` where the row is all zero (an MDD token not yet revealed)."""
    return jnp.where(traj.max(-1) > 0, traj.argmax(-1), mask_id)


def jit_outputs(fn: Callable[..., dict[str, jax.Array]], *names: str) -> Callable[..., Any]:
    """``fn`` (a :func:`make_predict_fn` function) jitted to return only the outputs ``names``
    (one name: that array; several: a tuple); the others are never computed into memory."""

    def picked(*args: Any) -> Any:
        out = fn(*args)
        return out[names[0]] if len(names) == 1 else tuple(out[n] for n in names)

    return jax.jit(picked)
