"""Caption evaluation: TDD and MDD samplers at each configured number of steps, text metrics,
decoded-text trajectories and samples (``evaluate.evaluate`` hands caption runs to this module).

For every sampler entry of ``config.eval.samplers`` and each of its ``steps``:

* ``{"name": "onehot", "to_one": "argmax", "guidance_scale": g, "steps": (...)}``: TDD, all N tokens
  decoded in parallel by argmax-and-re-noise (``samplers.onehot_sample`` with ``seq_len=N``);
* ``{"name": "masked", "guidance_scale": g, "steps": (...)}``: MDD ancestral unmasking
  (``samplers.masked_sample``), tokens drawn from the (guided) softmax when they are revealed.

Guidance (``g != 1``) mixes the conditional and the learned-null-image logits at every step. The
image encoder runs once per image; only the token denoiser runs per step.

Outputs in the workdir:

* ``eval_results.json``: ``{"records": [...], "baselines": {...}}``, one record per (sampler,
  steps) with corpus BLEU-1..4, CIDEr-D, token accuracy, exact match, the number of images and
  the sampling wall time (compilation excluded, reported separately); on the Fashion-grid task
  also ``well_formed`` (the sample is a valid caption of some image). ``baselines`` scores the
  first reference of each image against the others ("reference") and against the references of
  the next image ("shuffled"), the scale on which to read the model's numbers.
* ``samples/captions.json``: the first ``eval.num_samples`` test images' sampled captions per run;
* ``samples/trajectory_<sampler>_<steps>.txt``, for the first sampler entry at each of its steps:
  the decoded text after every reverse step for the
  first ``eval.num_trajectories`` test images (TDD: the argmax of each step's prediction; MDD: the
  partly unmasked caption, ``[M]`` = still masked), with copies of those images.

Metric definitions are in ``caption_metrics``; exact match and token accuracy compare with the
image's *targets*: every valid caption on the Fashion-grid task, the references on COCO.
"""

from __future__ import annotations

import json
import logging
import pathlib
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from didiff_jax import caption_metrics, checkpoint, samplers, sharding
from didiff_jax.data import augment, captions, pipeline
from didiff_jax.losses import mask_schedule, onehot_sampling

log = logging.getLogger("didiff_jax")


def sampler_label(entry: ml_collections.ConfigDict) -> str:
    """``tdd-argmax``, ``tdd-argmax-g2``, ``mdd``, ``mdd-g2``, ..."""
    g = entry.get("guidance_scale", 1.0)
    suffix = f"-g{g:g}" if g != 1.0 else ""
    if entry.name == "onehot":
        return f"tdd-{entry.get('to_one', 'argmax')}{suffix}"
    if entry.name == "masked":
        return f"mdd{suffix}"
    raise ValueError(f"caption samplers are 'onehot' (TDD) or 'masked' (MDD), got {entry.name!r}")


def make_sample_fn(config: ml_collections.ConfigDict, graphdef, entry: ml_collections.ConfigDict,
                   num_steps: int, num_classes: int, seq_len: int, *, trajectory: bool = False):  # fmt: skip
    """``fn(params, rest, images, key) -> tokens`` int [B, N] (with ``trajectory``: also the
    decoded tokens after every step [S, B, N], MDD masks = V). Not jitted."""
    g = entry.get("guidance_scale", 1.0)
    guidance_schedule = entry.get("guidance_schedule", None)
    name = entry.name
    sampler_label(entry)  # validates the name

    def fn(params, rest, images, key):
        model = nnx.merge(graphdef, params, rest)
        cond = model.encode(images, train=False)  # [B, L, W], once per image
        guide = dict(guidance_scale=g, guidance_schedule=guidance_schedule,
                     null_cond=model.null_condition(cond.shape[0]) if g != 1.0 else None)  # fmt: skip

        def logits_fn(x, t, c):
            return model.denoise(x, t, c, train=False)  # [B, N, V]

        if name == "onehot":
            out = samplers.onehot_sample(
                logits_fn, cond, key, num_classes=num_classes, num_steps=num_steps,
                to_one=entry.get("to_one", "argmax"), seq_len=seq_len,
                return_trajectory=trajectory, **onehot_sampling(config.objective), **guide,
            )  # fmt: skip
            if trajectory:
                probs, traj = out
                return jnp.argmax(probs, -1), jnp.argmax(traj, -1)  # [B, N], [S, B, N]
            return jnp.argmax(out, -1)
        out = samplers.masked_sample(
            logits_fn, cond, key, num_classes=num_classes, num_steps=num_steps,
            schedule=mask_schedule(config.objective), seq_len=seq_len,
            return_trajectory=trajectory, **guide,
        )  # fmt: skip
        return (out[0], out[2]) if trajectory else out[0]

    return fn


def _gather(x: jax.Array) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def score(tokenizer: captions.Tokenizer, tokens: np.ndarray, references: list[list[str]],
          targets: list[list[str]], language: frozenset[str] | None = None) -> dict[str, float]:  # fmt: skip
    """Corpus metrics of sampled ``tokens`` [M, N] against the images' reference and target texts;
    with the task's ``language`` (Fashion-grid) also ``well_formed``, the fraction of samples that
    are valid captions of *some* image: coherence, apart from what the image shows."""
    N = tokens.shape[1]
    words = [tokenizer.decode(t).split() for t in tokens]
    refs = [[captions.normalize(r) for r in rs] for rs in references]
    bleu = caption_metrics.corpus_bleu(words, refs)
    cider, _ = caption_metrics.cider_d(words, refs)
    acc = [caption_metrics.token_accuracy(t, np.stack([tokenizer.encode(x, N) for x in ts]))
           for t, ts in zip(tokens, targets, strict=True)]  # fmt: skip
    exact = [caption_metrics.exact_match(w, [captions.normalize(x) for x in ts])
             for w, ts in zip(words, targets, strict=True)]  # fmt: skip
    out = {**{f"bleu{n}": bleu[f"bleu{n}"] for n in range(1, 5)}, "cider": cider,
           "token_accuracy": float(np.mean(acc)), "exact_match": float(np.mean(exact))}  # fmt: skip
    if language is not None:
        out["well_formed"] = float(np.mean([" ".join(w) in language for w in words]))
    return out


def baselines(references: list[list[str]]) -> dict[str, dict[str, float]]:
    """BLEU-4/CIDEr-D of each image's first reference against its other references ("reference")
    and against the next image's references ("shuffled", the paper's shuffled ground truth)."""
    if len(references) < 2 or min(len(r) for r in references) < 2:
        return {}
    refs = [[captions.normalize(r) for r in rs] for rs in references]
    out = {}
    for name, cands, against in (
        ("reference", [r[0] for r in refs], [r[1:] for r in refs]),
        ("shuffled", [r[0] for r in refs[1:] + refs[:1]], [r[1:] for r in refs]),
    ):
        out[name] = {"bleu4": caption_metrics.corpus_bleu(cands, against)["bleu4"],
                     "cider": caption_metrics.cider_d(cands, against)[0]}  # fmt: skip
    return out


def evaluate(
    config: ml_collections.ConfigDict, workdir: str, run: dict | None = None
) -> list[dict]:
    """Sample captions for the test images with every configured sampler and number of steps;
    write ``eval_results.json`` and ``samples/``; return the records."""
    from didiff_jax.evaluate import restore_for_eval, sampler_runs  # evaluate imports this module
    from didiff_jax.train import host_params

    if config.eval.get("corruptions"):
        raise ValueError("caption evaluation runs on clean images only: set eval.corruptions=()")
    N = int(config.data.seq_len)
    if int(config.model.get("seq_len", N)) != N:
        raise ValueError(f"model.seq_len ({config.model.seq_len}) must equal data.seq_len ({N})")
    if run is None:
        graphdef, state, info, mesh = restore_for_eval(config, workdir)
    else:
        graphdef, state, info, mesh = run["graphdef"], run["state"], run["info"], run["mesh"]
    params, rest = host_params(state, config.eval.get("use_ema", True))
    tokenizer = captions.tokenizer_for(config.data)
    V = info.num_classes
    source = pipeline.load_source(config.data, "test")
    batch_sharding = sharding.batch_sharding(mesh)
    data = pipeline.eval_dataset(config.data, info, split="test", source=source,
                                 global_batch_size=config.eval.get("batch_size", config.batch_size),
                                 max_examples=config.eval.get("max_examples", 0) or None)  # fmt: skip
    runs = [(sampler_label(e), s, e) for e, s in sampler_runs(config)]
    num_traj = int(config.eval.get("num_trajectories", 4))
    key = jax.random.key(config.seed + 2)
    compiled: dict[tuple, Any] = {}
    compile_s: dict[tuple, float] = {}
    sample_s = {(label, s): 0.0 for label, s, _ in runs}
    tokens = {(label, s): [] for label, s, _ in runs}
    trajectories: dict[tuple, np.ndarray] = {}
    indices = []
    for i, local in enumerate(data):
        batch = pipeline.to_global(local, batch_sharding)
        mask = _gather(batch["mask"])
        num_traj = min(num_traj, int(mask.sum())) if i == 0 else num_traj  # padding comes last
        indices.append(_gather(batch["index"])[mask])
        batch_key = jax.random.fold_in(key, i)
        for label, steps, entry in runs:
            k = (label, steps)
            args = (params, rest, batch["image"], batch_key)
            if k not in compiled:
                t0 = time.time()
                fn = make_sample_fn(config, graphdef, entry, steps, V, N)
                compiled[k] = jax.jit(fn).lower(*args).compile()
                compile_s[k] = time.time() - t0
            t0 = time.time()
            out = _gather(compiled[k](*args))
            sample_s[k] += time.time() - t0
            tokens[k].append(out[mask])
            if i == 0 and num_traj and entry is runs[0][2]:  # the first sampler entry's runs
                traj_fn = jax.jit(make_sample_fn(config, graphdef, entry, steps, V, N,
                                                 trajectory=True))  # fmt: skip
                images = _gather(batch["image"])[:num_traj]
                _, traj = traj_fn(params, rest, jnp.asarray(images), batch_key)
                trajectories[k] = np.asarray(traj)  # [S, num_traj, N]
    index = np.concatenate(indices)
    references = [source.references(int(j)) for j in index]
    targets = [source.targets(int(j)) for j in index]
    language = captions.fashion_grid_language() if config.data.name == "fashion_grid" else None
    records = []
    for label, steps, entry in runs:
        k = (label, steps)
        result = score(tokenizer, np.concatenate(tokens[k]), references, targets, language)
        records.append({
            "model": config.model.name, "objective": config.objective.name, "sampler": label,
            "steps": steps, "guidance_scale": entry.get("guidance_scale", 1.0),
            "condition": "clean", **result, "count": len(index),
            "sample_seconds": sample_s[k], "compile_seconds": compile_s[k],
            "images_per_s": len(index) / max(sample_s[k], 1e-9),
        })  # fmt: skip
        r = records[-1]
        print(f"caption eval {label} {steps} steps: BLEU-4 {r['bleu4']:.3f} CIDEr {r['cider']:.3f} "
              f"token acc {r['token_accuracy']:.3f} exact {r['exact_match']:.3f} "
              f"({r['sample_seconds']:.1f}s)", flush=True)  # fmt: skip
    if jax.process_index() == 0:
        _write(config, workdir, records, baselines(references), tokenizer, source, index, tokens,
               trajectories, V)  # fmt: skip
    return records


def _write(config, workdir: str, records: list[dict], base: dict, tokenizer, source, index,
           tokens: dict, trajectories: dict, V: int) -> None:  # fmt: skip
    out = checkpoint.workdir_path(workdir)  # gs:// too
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_results.json").write_text(
        json.dumps({"records": records, "baselines": base}, indent=1)
    )
    samples = out / "samples"
    samples.mkdir(exist_ok=True)
    num = int(config.eval.get("num_samples", 16))
    listing = {}
    for (label, steps), toks in tokens.items():
        toks = np.concatenate(toks)
        listing[f"{label}@{steps}"] = [
            {"image": source.images[int(j)]["file_name"], "caption": tokenizer.decode(t),
             "references": source.references(int(j))}
            for j, t in zip(index[:num], toks[:num], strict=True)
        ]  # fmt: skip
    (samples / "captions.json").write_text(json.dumps(listing, indent=1))
    for (label, steps), traj in trajectories.items():
        lines = []
        for b in range(traj.shape[1]):
            j = int(index[b])
            name = source.images[j]["file_name"]
            shutil.copyfile(source.path(j), samples / name)
            lines.append(f"image {name}; references: " + " | ".join(source.references(j)))
            for s in range(traj.shape[0]):
                text = tokenizer.render(traj[s, b], mask_id=V if label.startswith("mdd") else None)
                lines.append(f"  step {s + 1:>2}/{traj.shape[0]}: {text}")
            lines.append("")
        (samples / f"trajectory_{label}_{steps}.txt").write_text("\n".join(lines))


def predict(config: ml_collections.ConfigDict, workdir: str, paths: list[str]) -> list[dict]:
    """A caption for each image file, sampled with the first configured sampler at its largest
    number of steps; unreadable files are reported (``{"path", "error"}``) and the rest answered."""
    from didiff_jax.evaluate import restore_for_eval
    from didiff_jax.train import host_params

    graphdef, state, info, _ = restore_for_eval(config, workdir)
    params, rest = host_params(state, config.eval.get("use_ema", True))
    tokenizer = captions.tokenizer_for(config.data)
    entry = ml_collections.ConfigDict(config.eval.samplers[0])
    fn = jax.jit(make_sample_fn(config, graphdef, entry, max(entry.steps), info.num_classes,
                                int(config.data.seq_len)))  # fmt: skip
    mean, std = np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32)
    results = []
    for i, path in enumerate(paths):
        try:
            image = captions.read_image(pathlib.Path(path), info.image_shape[2])
        except ValueError as e:
            print(f"error: {e}", flush=True)
            results.append({"path": path, "error": str(e)})
            continue
        image = augment.resize(image, info.image_shape[:2]).astype(np.float32) / 255.0
        tokens = fn(params, rest, jnp.asarray((image - mean) / std)[None],
                    jax.random.fold_in(jax.random.key(0), i))  # fmt: skip
        caption = tokenizer.decode(np.asarray(tokens)[0])
        results.append({"path": path, "caption": caption})
        print(f"{path}: {caption}", flush=True)
    return results
