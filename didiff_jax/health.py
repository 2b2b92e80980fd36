"""Is the train state healthy enough to be saved as a checkpoint?

A finite training loss is not enough: a diverging run can report a finite loss while its weights
are 1e6, its BatchNorm statistics 1e20 and every prediction NaN (the loss is computed with the
batch's own statistics, prediction with the running ones). So when a checkpoint is due, the
training loop asks :class:`HealthCheck` and writes the checkpoint only if the state is healthy:

1. **finite**: every floating-point array of the state (parameters, batch statistics, their EMAs,
   the optimizer's moments) is finite;
2. **predicts**: with the objective run on the current batch and the network in inference mode
   (running BatchNorm statistics, no dropout; the EMA weights when evaluation uses them, as
   ``evaluate`` and ``predict`` do), every output of the network is finite;
3. **not exploded**: that inference-mode loss is finite and at most ``EXPLODED_FACTOR`` times the
   median of the training losses logged at the last ``HISTORY`` log steps (once one is logged).

A state that fails 1 or 2 cannot recover (training on from it only spreads the NaN), and the loop
stops; a state that fails only 3 may recover (a loss spike), and the loop goes on without saving
it. Either way the last checkpoint on disk is a healthy one, and errors name it. (A non-finite
loss from finite outputs is the objective overflowing, e.g. an unclipped score, not a network
that predicts NaN: the training step skips such steps and the loop stops at the next log step.)

The check is one jitted call when a checkpoint is due, and one before the first step (a forward
pass and a reduction over the state, about a third of a training step); nothing runs between
checkpoints. The measured costs are in docs/failure_behaviour.md.
"""

from __future__ import annotations

import collections
import functools
import math
import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

EXPLODED_FACTOR = 100.0
"""An inference-mode loss over this many times the median of the recent logged training losses
is an exploded one. In healthy runs it stayed within 1.25 times the training loss of the same
step (docs/failure_behaviour.md)."""

HISTORY = 20
"""How many logged training losses the median looks back over."""

# Checked parts of the train state, as named in messages.
GROUPS = {"params": "parameters", "rest": "batch statistics", "ema": "EMA parameters",
          "ema_rest": "EMA batch statistics", "opt_state": "optimizer state"}  # fmt: skip


class _InferenceMode:
    """``model`` as the objective sees it, with every call's ``train`` flag forced to False, and
    every array the network returns kept in ``outputs``.

    The objectives call the network with ``train=True`` (batch statistics, dropout); wrapping the
    network lets the same loss code run it as ``evaluate`` and ``predict`` do, and shows what it
    predicts (logits, log-scores, denoiser outputs) apart from what the loss makes of them."""

    def __init__(self, model: nnx.Module):
        self._model = model
        self.outputs: list[jax.Array] = []

    def _wrap(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def call(*args, **kwargs):
            if "train" in kwargs:
                kwargs["train"] = False
            out = fn(*args, **kwargs)
            self.outputs.extend(jax.tree.leaves(out))
            return out

        return call

    def __call__(self, *args, **kwargs):
        return self._wrap(self._model)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._model, name)
        if callable(attr) and not isinstance(attr, nnx.Module):  # a method: encode, denoise, ...
            return self._wrap(attr)
        return attr


def _all_finite(tree) -> jax.Array:
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.inexact)]  # fmt: skip
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def make_check(graphdef, loss_fn: Callable, use_ema: bool) -> Callable[[dict, dict], dict]:
    """``check(state, batch) -> {group: all finite, ..., "outputs": the network's outputs in
    inference mode all finite, "loss": the inference-mode loss}``, to jit.

    ``use_ema``: probe the EMA weights and statistics (when the state has them), which is what
    evaluation uses."""

    def check(state: dict, batch: dict) -> dict[str, jax.Array]:
        out = {group: _all_finite(state[group]) for group in GROUPS if group in state}
        ema = use_ema and bool(state["ema"])
        params = state["ema"] if ema else state["params"]
        rest = state["ema_rest"] if ema else state["rest"]
        network = _InferenceMode(nnx.merge(graphdef, params, rest))
        # The key of the step just taken: the same noise levels and noise as its training loss.
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"] - 1)
        out["loss"], _ = loss_fn(network, batch, key)
        out["outputs"] = _all_finite(network.outputs)
        return out

    return check


class HealthCheck:
    """The host side: the history of logged training losses, the verdict when a checkpoint is due
    and the last good checkpoint (the newest one written healthy, which messages name).

    ``check``: the jitted :func:`make_check`; ``last_good``: the step the run resumed from
    (written, so checked, by an earlier run), or None."""

    def __init__(self, check: Callable[[dict, dict], dict], last_good: int | None):
        self.check = check
        self.last_good = last_good
        self.losses: collections.deque[float] = collections.deque(maxlen=HISTORY)

    def record(self, loss: float | None) -> None:
        """Note a logged training loss (the history of the explosion test)."""
        if loss is not None and math.isfinite(loss):
            self.losses.append(float(loss))

    def problem(self, state: dict, batch: dict) -> tuple[str, bool] | None:
        """None for a healthy state; otherwise (what is wrong, whether training can go on)."""
        out = jax.device_get(self.check(state, batch))
        bad = [name for group, name in GROUPS.items() if group in out and not bool(out[group])]
        if bad:
            return f"non-finite {', '.join(bad)}", False
        if not bool(out["outputs"]):
            return ("the network's outputs in inference mode on the current batch are not finite: "
                    "it would predict NaN"), False  # fmt: skip
        loss = float(out["loss"])
        if not math.isfinite(loss):  # finite outputs: the objective overflowed, not the network
            return f"its inference-mode loss on the current batch is {loss}", True
        if self.losses:
            median = statistics.median(self.losses)
            if median > 0 and loss > EXPLODED_FACTOR * median:
                return (f"its inference-mode loss {loss:.4g} on the current batch is over "
                        f"{EXPLODED_FACTOR:g} x the median {median:.4g} of the last "
                        f"{len(self.losses)} logged training losses: exploded"), True  # fmt: skip
        return None

    def describe_last(self) -> str:
        """'last good checkpoint: step N' (or that there is none), for messages."""
        if self.last_good is None:
            return "no good checkpoint was written"
        return f"last good checkpoint: step {self.last_good}"
