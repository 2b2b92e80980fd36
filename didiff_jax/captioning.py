"""Caption evaluation: TDD and MDD samplers at each configured number of steps, text metrics,
decoded-text trajectories and samples. The batch loop, restore and results writer are the
classification evaluator's (``evaluate``); the predictors come from ``inference``.

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
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from didiff_jax import caption_metrics, inference, state
from didiff_jax.data import captions, pipeline
from didiff_jax.evaluate import eval_batches, gather, restored, write_results

log = logging.getLogger("didiff_jax")


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
    if config.eval.get("corruptions"):
        raise ValueError("caption evaluation runs on clean images only: set eval.corruptions=()")
    N = int(config.data.seq_len)
    if int(config.model.get("seq_len", N)) != N:
        raise ValueError(f"model.seq_len ({config.model.seq_len}) must equal data.seq_len ({N})")
    graphdef, train_state, info, mesh = restored(config, workdir, run)
    params, rest = state.host_params(train_state, config.eval.get("use_ema", True))
    tokenizer = captions.tokenizer_for(config.data)
    V = info.num_classes
    source = pipeline.load_source(config.data, "test")
    runs = [(inference.sampler_label(e, captions=True), s, e)
            for e, s in inference.sampler_runs(config)]  # fmt: skip
    predictors = {(label, s): inference.make_predict_fn(config, graphdef, e, s, V, seq_len=N)
                  for label, s, e in runs}  # fmt: skip
    num_traj = int(config.eval.get("num_trajectories", 4))
    key = jax.random.key(config.seed + 2)
    compiled: dict[tuple, Any] = {}
    compile_s: dict[tuple, float] = {}
    sample_s = {(label, s): 0.0 for label, s, _ in runs}
    tokens = {(label, s): [] for label, s, _ in runs}
    trajectories: dict[tuple, np.ndarray] = {}
    indices = []
    batches = eval_batches(config, info, mesh, source, what="caption eval")
    for i, batch, mask in batches:
        num_traj = min(num_traj, int(mask.sum())) if i == 0 else num_traj  # padding comes last
        indices.append(gather(batch["index"])[mask])
        batch_key = jax.random.fold_in(key, i)
        for label, steps, entry in runs:
            k = (label, steps)
            args = (params, rest, batch["image"], batch_key)
            if k not in compiled:
                t0 = time.time()
                compiled[k] = inference.jit_outputs(predictors[k], "answer").lower(*args).compile()
                compile_s[k] = time.time() - t0
            t0 = time.time()
            out = gather(compiled[k](*args))  # [B, N]
            sample_s[k] += time.time() - t0
            tokens[k].append(out[mask])
            if i == 0 and num_traj and entry is runs[0][2]:  # the first sampler entry's runs
                traj_fn = inference.jit_outputs(predictors[k], "traj")
                images = gather(batch["image"])[:num_traj]
                traj = traj_fn(params, rest, jnp.asarray(images), batch_key)
                trajectories[k] = np.asarray(inference.decoded_tokens(traj, V))  # [S, n, N]
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
    out = write_results(workdir, {"records": records, "baselines": base})
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
