"""Notebook use: load a trained run and sample its posteriors in a few lines.

::

    import didiff_jax

    trained = didiff_jax.load("runs/fmnist_didirn")        # config.json + latest checkpoint (EMA)
    probs = trained.predict(images)                         # [B, K], the run's default sampler
    probs, traj = trained.predict(images, sampler="cl", num_steps=4, return_trajectory=True)

``images`` are uint8 in [0, 255] or floats in [0, 1]: one image (H x W or H x W x C), a batch
(B x H x W x C), or a list of images of any sizes; ``trained.preprocess`` resizes and normalises them
as the run's evaluation did. The network is also a plain function of arrays, so the samplers take it
as they take any other (a new key or new images of the same shape do not retrace)::

    sample = jax.jit(functools.partial(samplers.cp_sample, trained.score_fn,
                                       num_classes=trained.num_classes, num_steps=8,
                                       schedule=trained.schedule))
    probs = sample(trained.preprocess(images), key)

The functions of a run: DiDiCM ``score_fn(images, x_t, sigma) -> log_score [B, K]``; ADD/TDD
``encode(images) -> cond`` and ``logits_fn(y_t, t, cond) -> logits [B, (N,) K]``; MDD
``logits_fn(x_t, t, cond)`` on int labels/tokens (``K`` = mask); ``null_condition(B)`` for
classifier-free guidance. A caption run's ``predict`` returns per-token probabilities [B, N, V].

A network of your own plugs in the same way: :func:`bind` turns any NNX module with the network
contract into such a function (a Flax linen module is ``functools.partial(module.apply, variables)``
already)::

    score_fn = bind(my_module)                 # my_module(images, x_t, sigma, train=False)
    probs = samplers.cp_sample(score_fn, images, key, num_classes=10, num_steps=8)

``load`` rebuilds the model from the run's ``config.json`` (or a config you pass, e.g. with
overrides) and restores the checkpoint onto the local devices; nothing of the training loop runs.
``python -m didiff_jax.main --mode predict`` goes through :meth:`Trained.predict` (captions:
:meth:`Trained.caption`), so the two agree.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from didiff_jax import checkpoint, checks, inference, sharding, state
from didiff_jax.data import captions, pipeline
from didiff_jax.data.augment import read_image
from didiff_jax.losses import ctmc_schedule, gaussian_schedule, mask_schedule

SAMPLERS = inference.SAMPLERS
"""The samplers each objective's network can drive ("classifier": the baselines' softmax)."""


# ------------------------------------------------------------------------ networks as functions


class NetworkFn:
    """A module's forward as a plain function of arrays: ``fn(*args) = call(module, *args)``.

    Calling it rebuilds the module from ``(graphdef, state)`` (free under ``jax.jit``) and applies
    ``call``. It is also a pytree whose leaves are the module's state, so it can be passed *into*
    ``jax.jit`` as an argument (the parameters are then inputs of the compiled chain, not constants
    baked into it) as well as closed over with ``functools.partial``.
    """

    def __init__(self, graphdef: nnx.GraphDef, state: nnx.State, call: Callable[..., Any]):
        self.graphdef, self.state, self.call = graphdef, state, call

    def __call__(self, *args: Any) -> Any:
        return self.call(nnx.merge(self.graphdef, self.state), *args)

    def __repr__(self) -> str:
        return f"NetworkFn({getattr(self.call, '__name__', self.call)})"


jax.tree_util.register_pytree_node(
    NetworkFn,
    lambda f: ((f.state,), (f.graphdef, f.call)),
    lambda aux, children: NetworkFn(aux[0], children[0], aux[1]),
)


def _forward(module: nnx.Module, *args: Any) -> jax.Array:
    return module(*args, train=False)


def bind(module: nnx.Module, call: Callable[..., Any] | None = None) -> NetworkFn:
    """``module`` as the function the samplers take: by default ``module(*args, train=False)``
    (the network contract: ``score_fn(images, x_t, sigma)``); ``call(module, *args)`` picks
    another method, e.g. ``lambda m, y, t, c: m.denoise(y, t, c, train=False)``.

    The module's state is captured as it is now (later in-place changes are not seen).
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"bind() takes an nnx.Module, got {type(module).__name__}")
    graphdef, state = nnx.split(module)
    return NetworkFn(graphdef, state, call or _forward)


def _denoise(module: nnx.Module, y_t: jax.Array, t: jax.Array, cond: Any) -> jax.Array:
    return module.denoise(y_t, t, cond, train=False)


def _denoise_label(module: nnx.Module, x_t: jax.Array, t: jax.Array, cond: Any) -> jax.Array:
    """MDD on the one-hot ADD head: int labels in [0, K] as one-hot rows (the mask K: all zero)."""
    return module.denoise(jax.nn.one_hot(x_t, module.num_classes), t, cond, train=False)


def _encode(module: nnx.Module, images: jax.Array) -> Any:
    return module.encode(images, train=False)


def _null_condition(module: nnx.Module, batch_size: int) -> Any:
    return module.null_condition(batch_size)


# ------------------------------------------------------------------------------------ loading


def _as_config(config: ml_collections.ConfigDict | str) -> ml_collections.ConfigDict:
    """A ConfigDict, or the config file ``path.py[:variant]`` it names."""
    if isinstance(config, ml_collections.ConfigDict):
        return copy.deepcopy(config)
    return checkpoint.load_config_file(str(config))


def _read_run_config(workdir: str) -> ml_collections.ConfigDict:
    try:
        config = checkpoint.read_config(workdir)
    except json.JSONDecodeError as e:
        raise checks.InputError(f"{workdir}/{checkpoint.CONFIG_FILE} is not JSON ({e})") from None
    missing = [k for k in ("model", "objective", "data", "eval") if k not in config]
    if missing:
        raise checks.InputError(f"{workdir}/{checkpoint.CONFIG_FILE} is not a didiff_jax run config: "
                         f"missing {missing} (expected the config `main` writes)")  # fmt: skip
    return config


def _local_mesh(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The run's mesh if it fits the local devices, else all of them on the data axis."""
    n = jax.device_count()
    data, fsdp = int(config.mesh.get("data", -1)), int(config.mesh.get("fsdp", 1))
    fits = (data * fsdp == n) or (data == -1 and fsdp > 0 and n % fsdp == 0) or (
        fsdp == -1 and data > 0 and n % data == 0)  # fmt: skip
    if not fits:
        config.mesh = {"data": -1, "fsdp": 1}
    return config


def _summary(config: ml_collections.ConfigDict) -> str:
    return (f"model {config.model.get('name')} / objective {config.objective.get('name')} / "
            f"data {config.data.get('name')}")  # fmt: skip


def load(workdir: str | os.PathLike, *, step: int | None = None, use_ema: bool = True,
         config: ml_collections.ConfigDict | str | None = None) -> Trained:  # fmt: skip
    """The trained run in ``workdir``, ready to sample.

    Args:
      workdir: a run directory (``config.json`` and ``checkpoints/<step>/``, as written by
        ``python -m didiff_jax.main``).
      step: the checkpoint to restore (default: the latest).
      use_ema: the EMA parameters when the run keeps them (as its evaluation does).
      config: rebuild the model from this config (a ConfigDict or ``"configs/x.py[:variant]"``)
        instead of the run's ``config.json``; it must describe the same network.

    Raises:
      FileNotFoundError: ``workdir`` is missing or not a run directory (the message says what was
        expected there), or has no checkpoint of ``step``.
      checkpoint.CheckpointMismatch: the checkpoint does not fit the config's network; the message
        names both configs and lists the differing parameters.
    """
    workdir = os.fspath(workdir)
    checkpoint.check_run_dir(workdir, step)
    saved = _read_run_config(workdir)
    config = _local_mesh(_as_config(config) if config is not None else copy.deepcopy(saved))
    try:
        graphdef, train_state, info, mesh = state.restore_for_eval(config, workdir, step=step)
    except checkpoint.CheckpointMismatch as e:
        if config.model.to_dict() != saved.model.to_dict():
            head = (f"cannot load {workdir} with the given config ({_summary(config)}): the run "
                    f"was trained with {workdir}/config.json ({_summary(saved)})")  # fmt: skip
        else:
            head = (f"the checkpoint in {workdir}/checkpoints does not fit the model of "
                    f"{workdir}/config.json ({_summary(saved)}): was it copied from another run, "
                    "or written by another version of didiff_jax?")  # fmt: skip
        raise checkpoint.CheckpointMismatch(f"{head}\n{e}") from None
    params, rest = state.host_params(train_state, use_ema)
    return Trained(config, graphdef, params, rest, info, mesh, workdir=workdir,
                   step=int(train_state["step"]), used_ema=use_ema and bool(train_state["ema"]))  # fmt: skip


# ------------------------------------------------------------------------------------ Trained


class Trained:
    """A restored run: its config, network (as functions for the samplers), preprocessing and
    ``predict``. Built by :func:`load`.

    Attributes:
      config: the run's config (``mesh`` adapted to the local devices if needed).
      model: the network (an ``nnx.Module``, EMA parameters if ``used_ema``).
      info: the data's ``DataInfo`` (``num_classes``, ``class_names``, ``image_shape``, ...).
      num_classes, class_names: K (the vocabulary size V for captions) and their names.
      seq_len: N for a caption run, else None.
      schedule: the run's noise schedule, to pass to the samplers (None for a classifier).
      score_fn: DiDiCM ``score_fn(images, x_t, sigma) -> log_score [B, K]`` (else None).
      encode, logits_fn, null_condition: ADD/TDD/MDD ``encode(images) -> cond``,
        ``logits_fn(y_t, t, cond) -> logits`` and ``null_condition(B)`` (else None).
      step, workdir, used_ema: which checkpoint this is.
    """

    def __init__(self, config: ml_collections.ConfigDict, graphdef: nnx.GraphDef, params, rest,
                 info: pipeline.DataInfo, mesh: jax.sharding.Mesh, *, workdir: str, step: int,
                 used_ema: bool):  # fmt: skip
        self.config, self.info, self.mesh = config, info, mesh
        self.workdir, self.step, self.used_ema = workdir, step, used_ema
        self._graphdef, self._params, self._rest = graphdef, params, rest
        self.model = nnx.merge(graphdef, params, rest)
        self.num_classes, self.class_names = info.num_classes, tuple(info.class_names)
        self.objective = str(config.objective.name)
        if self.objective not in SAMPLERS:
            raise ValueError(f"objective {self.objective!r} of {workdir} has no sampler here; "
                             f"known: {sorted(SAMPLERS)}")  # fmt: skip
        self.seq_len = int(config.model.seq_len) if "seq_len" in config.model else None
        self.score_fn = self.encode = self.logits_fn = self.null_condition = None
        self.schedule = None
        if self.objective == "didicm":
            self.score_fn = bind(self.model)
            self.schedule = ctmc_schedule(config.objective)
        elif self.objective != "classifier":
            self.encode = bind(self.model, _encode)
            self.null_condition = bind(self.model, _null_condition)
            tokens = self.objective == "mdd" and self.seq_len is None  # the ADD head, one label
            self.logits_fn = bind(self.model, _denoise_label if tokens else _denoise)
            self.schedule = (mask_schedule(config.objective) if self.objective == "mdd"
                             else gaussian_schedule(config.objective))  # fmt: skip
        self._fns: dict[tuple, Callable] = {}

    def __repr__(self) -> str:
        return (f"Trained({_summary(self.config)}, K={self.num_classes}, step {self.step}, "
                f"{'EMA' if self.used_ema else 'raw'} parameters, from {self.workdir})")  # fmt: skip

    # -------------------------------------------------------------------------- preprocessing

    def preprocess(self, images: Any) -> np.ndarray:
        """Images as the run's evaluation fed them to the network: float32 [B, H, W, C].

        ``images``: uint8 in [0, 255] or float in [0, 1]; one image H x W or H x W x C
        (C = 1 or 3; a 3-D array whose last axis is not 1 or 3 is a batch of H x W images), a
        batch B x H x W x C, or a list of images of any sizes (PIL images too). A float image with
        a NaN or infinite pixel raises ``ValueError`` naming every such image by its index (the
        network would turn it into NaN probabilities without a word). Channels are
        converted to the model's (RGB to grey with PIL's ITU-R 601 luma, grey to RGB by copying).
        uint8 images go through the evaluation transform (``pipeline.preprocess_eval``: the run's
        resize, then normalisation). Float images of the model's input size are only normalised
        (so a corrupted float observation is used as it is); other float sizes are quantised to
        uint8 and resized like image files.
        """
        if isinstance(images, list | tuple):
            items = [self._as_array(x) for x in images]
        else:
            arr = self._as_array(images)
            if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3)):
                items = [arr]
            elif arr.ndim in (3, 4):
                items = list(arr)
            else:
                raise ValueError(f"images: expected H x W, H x W x C, B x H x W or B x H x W x C, "
                                 f"got shape {arr.shape}")  # fmt: skip
        if not items:
            raise ValueError("images: got an empty batch")
        _check_finite(items)
        return np.stack([self._preprocess_one(x, i) for i, x in enumerate(items)])

    def _as_array(self, image: Any) -> np.ndarray:
        """A PIL image in the model's mode ("L" or "RGB"; palette images too), or the array."""
        if hasattr(image, "convert") and hasattr(image, "mode"):
            return np.asarray(image.convert("L" if self.info.image_shape[2] == 1 else "RGB"))
        return np.asarray(image)

    def _preprocess_one(self, image: np.ndarray, i: int) -> np.ndarray:
        H, W, C = self.info.image_shape
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[-1] not in (1, 3):
            raise ValueError(f"image {i}: expected H x W or H x W x C with C in (1, 3), got shape "
                             f"{image.shape}")  # fmt: skip
        if np.issubdtype(image.dtype, np.floating):
            lo, hi = float(np.min(image)), float(np.max(image))
            if lo < -1e-6 or hi > 1 + 1e-6:
                raise ValueError(f"image {i}: float images must be in [0, 1], got values in "
                                 f"[{lo:.3g}, {hi:.3g}] (pass uint8 for 0..255)")  # fmt: skip
            if image.shape[:2] == (H, W):
                image = _convert_channels_float(image.astype(np.float32), C)
                return pipeline._normalise(image, self.info)
            image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        elif image.dtype != np.uint8:
            raise ValueError(f"image {i}: expected uint8 (0..255) or float (0..1) pixels, got "
                             f"{image.dtype}")  # fmt: skip
        image = _convert_channels_uint8(image, C)
        record = pipeline.preprocess_eval({"image": image}, np.random.default_rng(0),
                                          self.config.data, self.info, None, 0)  # fmt: skip
        return np.asarray(record["image"], np.float32)

    # ------------------------------------------------------------------------------- predict

    def sampler_entry(self, sampler: str | Mapping | None = None) -> ml_collections.ConfigDict:
        """The sampler entry ``predict`` runs: the config's first (``None``), the config's first
        of that name (a string, else that sampler's defaults), or the given dict, e.g.
        ``{"name": "cl", "num_chains": 100}``; checked against the run's objective."""
        entries = [ml_collections.ConfigDict(dict(e)) for e in self.config.eval.samplers]
        if sampler is None:
            if not entries:
                raise ValueError(
                    f"{self.workdir}: the config lists no eval.samplers; pass sampler="
                )
            entry = entries[0]
        elif isinstance(sampler, str):
            entry = next((e for e in entries if e.name == sampler),
                         ml_collections.ConfigDict({"name": sampler}))  # fmt: skip
        elif isinstance(sampler, Mapping | ml_collections.ConfigDict):
            entry = ml_collections.ConfigDict(dict(sampler))
        else:
            raise TypeError(f"sampler must be None, a name or a dict, got {type(sampler).__name__}")
        allowed = SAMPLERS[self.objective]
        if entry.get("name") not in allowed:
            raise ValueError(f"sampler {entry.get('name')!r} does not fit a "
                             f"{self.objective!r} run; use one of {allowed}")  # fmt: skip
        return entry

    def default_steps(self, entry: ml_collections.ConfigDict) -> int | None:
        """The steps ``predict`` takes with ``entry`` by default: its largest ``steps``, else the
        largest of the first configured sampler (8 if none); None for the classifier."""
        if entry.name == "classifier":
            return None
        if entry.get("steps"):
            return int(max(entry.steps))
        first = self.config.eval.samplers[0] if self.config.eval.samplers else {}
        return int(max(first.get("steps", (8,))))

    def _predict_fn(self, entry: ml_collections.ConfigDict, num_steps: int | None,
                    outputs: tuple[str, ...]) -> Callable:  # fmt: skip
        """``fn(params, rest, images, key) -> outputs`` (names of ``inference.make_predict_fn``'s
        outputs), jitted once per entry, steps and outputs."""
        cache_key = (json.dumps(entry.to_dict(), sort_keys=True, default=str), num_steps, outputs)
        if cache_key not in self._fns:
            fn = inference.make_predict_fn(self.config, self._graphdef, entry, num_steps,
                                           self.num_classes, seq_len=self.seq_len)  # fmt: skip
            self._fns[cache_key] = inference.jit_outputs(fn, *outputs)
        return self._fns[cache_key]

    def _run(self, images: Any, outputs: tuple[str, ...], *, sampler: str | Mapping | None,
             num_steps: int | None, key: jax.Array | int | None, batch_size: int | None,
             ) -> list[np.ndarray]:  # fmt: skip
        """The ``outputs`` for ``images``, sampled chunk by chunk (see :meth:`predict`), as
        numpy arrays with the batch on axis 0 (``traj``: axis 1)."""
        for name, value in (("num_steps", num_steps), ("batch_size", batch_size)):
            if value is not None and (not isinstance(value, int | np.integer) or value < 1):
                raise ValueError(f"{name}={value!r}: expected an integer >= 1 (or None)")
        x = self.preprocess(images)  # [B, H, W, C]
        entry = self.sampler_entry(sampler)
        steps = self.default_steps(entry) if num_steps is None else int(num_steps)
        fn = self._predict_fn(entry, steps, outputs)
        if key is None or isinstance(key, int | np.integer):
            key = jax.random.key(0 if key is None else int(key))
        ndev = self.mesh.size
        chunk = int(batch_size or self.config.eval.get("batch_size", self.config.batch_size))
        chunk = -(-min(chunk, len(x)) // ndev) * ndev
        batch_sharding = sharding.batch_sharding(self.mesh)
        parts: list[list[np.ndarray]] = [[] for _ in outputs]
        for c, start in enumerate(range(0, len(x), chunk)):
            part = x[start : start + chunk]
            n = len(part)
            padded = np.zeros((-(-n // ndev) * ndev,) + part.shape[1:], np.float32)
            padded[:n] = part
            out = fn(self._params, self._rest, jax.device_put(padded, batch_sharding),
                     jax.random.fold_in(key, c))  # fmt: skip
            out = out if len(outputs) > 1 else (out,)
            for name, acc, value in zip(outputs, parts, out, strict=True):
                acc.append(np.asarray(value)[:, :n] if name == "traj" else np.asarray(value)[:n])
        return [np.concatenate(acc, axis=1 if name == "traj" else 0)
                for name, acc in zip(outputs, parts, strict=True)]  # fmt: skip

    def predict(self, images: Any, *, sampler: str | Mapping | None = None,
                num_steps: int | None = None, key: jax.Array | int | None = None,
                return_trajectory: bool = False, batch_size: int | None = None,
                ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Sample the posterior of ``images`` (anything :meth:`preprocess` takes).

        Args:
          sampler: None (the run's default: the first of ``config.eval.samplers``), a name
            (``"cp"``, ``"cl"``, ``"onehot"``, ``"masked"``, ``"classifier"``) or an entry dict;
            see :meth:`sampler_entry`.
          num_steps: reverse steps (default: the entry's largest ``steps``).
          key: a PRNG key or an int seed (default 0). The images go in chunks of ``batch_size``
            (default ``config.eval.batch_size``, rounded up to a multiple of the devices); chunk
            ``c`` is sampled with ``fold_in(key, c)``, and a short chunk is padded to a multiple of
            the devices. So the same images, key and device count give the same output.
          return_trajectory: also return the probabilities after every step.

        Returns:
          probs [B, K] (captions: [B, N, V]) as numpy; with ``return_trajectory`` also the
          per-step probabilities [S, B, K] (MDD: the one-hot label decoded so far, 0 while masked).
        """
        outputs = ("probs", "traj") if return_trajectory else ("probs",)
        out = self._run(images, outputs, sampler=sampler, num_steps=num_steps, key=key,
                        batch_size=batch_size)  # fmt: skip
        return tuple(out) if return_trajectory else out[0]

    def caption(self, images: Any, *, sampler: str | Mapping | None = None,
                num_steps: int | None = None, key: jax.Array | int | None = None,
                batch_size: int | None = None) -> list[str]:  # fmt: skip
        """A sampled caption per image of a caption run: the sampler's tokens (TDD: the argmax of
        the last step; MDD: the tokens drawn as they were revealed), decoded. Arguments as
        :meth:`predict`."""
        if self.seq_len is None:
            raise ValueError(f"{self.workdir} is a classification run; caption() needs a caption "
                             "run (use predict())")  # fmt: skip
        (tokens,) = self._run(images, ("answer",), sampler=sampler, num_steps=num_steps, key=key,
                              batch_size=batch_size)  # fmt: skip
        tokenizer = captions.tokenizer_for(self.config.data)
        return [tokenizer.decode(t) for t in tokens]


def _check_finite(items: list[np.ndarray]) -> None:
    """``ValueError`` naming (by index) every float image with a NaN or infinite pixel. Integer
    images cannot hold one, so only float ones are scanned: a pass over the pixels, well under
    1% of a prediction (docs/failure_behaviour.md gives the measured cost)."""
    bad = [i for i, x in enumerate(items)
           if np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all()]  # fmt: skip
    if bad:
        shown = ", ".join(map(str, bad[:20])) + (", ..." if len(bad) > 20 else "")
        raise ValueError(f"images: {len(bad)} of {len(items)} images have NaN or infinite pixels "
                         f"(indices {shown}); expected finite values in [0, 1] (float) or uint8")  # fmt: skip


def _convert_channels_uint8(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8 [H, W, C] -> [H, W, channels], grey through PIL's own conversion (as image files)."""
    if image.shape[-1] == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=-1)
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).convert("L"))[..., None]


def _convert_channels_float(image: np.ndarray, channels: int) -> np.ndarray:
    if image.shape[-1] == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=-1)
    luma = np.asarray([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's "L"
    return (image @ luma)[..., None]


__all__ = ["NetworkFn", "Trained", "bind", "load", "read_image"]
