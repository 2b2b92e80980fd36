"""didiff_jax against the official DiDiCM PyTorch release, side by side on this machine, in one run.

Two parts, each for DiDiRN-18 at 28 px and K = 10 on the same random input:

* **train**: one training step (score entropy + LAMB) at batch 128. The official step is timed by
  the anchors' ``official_step_speed.py``; didiff_jax's is ``train.make_train_step`` for the main
  job's config (``configs/fashion_mnist_didirn.py``).
* **cp8**: the CP evaluation, 8 Euler steps (``mode=min``), at the main job's evaluation batch
  (500). The official sampler is timed by ``benchmarks/official_cp_eval.py`` (which imports it
  from the anchors' snapshot); didiff_jax's is ``inference.make_predict_fn``, what the main job runs.

didiff_jax runs two settings: ``width64`` (the official network's own width and 3-channel input,
the like-for-like comparison) and ``main`` (the main job as configured: width 16, 1 channel; the
official code cannot build a narrower network, so its ratio is against the official width 64, the
speed a user of the official code gets). The official code runs in a separate Python that has
torch and timm (``--official-python``). To keep a
noisy VM's drift out of the ratios, ``--rounds`` rounds alternate the two implementations; each
figure is the median over rounds of per-round medians.

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch timm pyyaml numpy   # once
    python benchmarks/official_speed.py --official-python .venv-torch/bin/python \\
        --write-results docs/results.md

Prints JSON lines and a markdown table; ``--json FILE`` writes every row.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import ml_collections
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the configs package lives at the repository root
    sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import throughput  # noqa: E402

from configs import fashion_mnist_didirn  # noqa: E402
from didiff_jax import distributed, inference, state  # noqa: E402
from didiff_jax.data import pipeline  # noqa: E402

SETTINGS = {  # name -> (width, input channels)
    "width64": (64, 3),
    "main": (None, None),  # as configs/fashion_mnist_didirn.py has them
}


def project_config(setting: str):
    c = fashion_mnist_didirn.get_config()
    width, channels = SETTINGS[setting]
    if width is not None:
        c.model.width, c.model.in_channels = width, channels
    return c


def data_info(config) -> pipeline.DataInfo:
    ch = config.model.in_channels
    return pipeline.DataInfo(num_classes=10, class_names=tuple(map(str, range(10))),
                             image_shape=(28, 28, ch), mean=(0.0,) * ch, std=(1.0,) * ch)  # fmt: skip


def project_train(setting: str, batch: int) -> Callable[[int], float]:
    """A timer ``f(steps) -> median seconds per step`` of the library's compiled train step."""
    config = project_config(setting)
    step, init_fn, data = throughput.train_step_program(config, data_info(config), batch)
    state = {"s": init_fn()}
    compiled = step.lower(state["s"], data).compile()

    def run_once() -> None:
        state["s"], metrics = compiled(state["s"], data)
        jax.block_until_ready(metrics)

    run_once()
    return lambda n: _median_seconds(run_once, n)


def project_cp8(setting: str, batch: int) -> Callable[[int], float]:
    """A timer of the main job's CP-8 evaluation (``inference.make_predict_fn``, euler, min)."""
    config = project_config(setting)
    info = data_info(config)
    model = state.build_model(config, info, nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    entry = ml_collections.ConfigDict({"name": "cp", "method": "euler", "mode": "min"})
    fn = inference.jit_outputs(
        inference.make_predict_fn(config, graphdef, entry, 8, info.num_classes), "probs", "traj"
    )
    images = jax.random.normal(jax.random.key(1), (batch, *info.image_shape))  # [B, H, W, C]
    key = jax.random.key(2)
    compiled = fn.lower(params, rest, images, key).compile()

    def run_once() -> None:
        jax.block_until_ready(compiled(params, rest, images, key))

    run_once()
    return lambda n: _median_seconds(run_once, n)


def _median_seconds(fn: Callable[[], None], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def official(python: str, anchors: pathlib.Path, part: str, batch: int, repeats: int,
             threads: int) -> dict:  # fmt: skip
    """One timing of the official code in a subprocess: its JSON line."""
    if part == "train":
        cmd = [python, str(anchors / "official_step_speed.py"), "--model", "didirn18",
               "--batch", str(batch), "--steps", str(repeats), "--threads", str(threads)]  # fmt: skip
    else:
        cmd = [python, str(ROOT / "benchmarks" / "official_cp_eval.py"),
               "--official-dir", str(anchors / "didicm-official"), "--batch", str(batch),
               "--repeats", str(repeats), "--threads", str(threads)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the official code failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["seconds"] = row.get("step_s_median", row.get("seconds_median"))
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"{meta['cpu']}; {meta['threads']} threads; torch {meta['torch']}; "
        f"{meta['rounds']} alternating rounds, median of per-round medians; {meta['date']}.",
        "",
        "| part | didiff_jax setting | batch | didiff_jax /s | official /s (width 64) | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    unit = {"train": "examples", "cp8": "images"}
    for r in rows:
        lines.append(
            f"| {r['part']} ({unit[r['part']]}) | {r['setting']} | {r['batch']} | "
            f"{r['project_per_s']:.1f} | {r['official_per_s']:.1f} | **{r['ratio']:.2f}x** |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official-python", default=sys.executable,
                   help="a Python with torch and timm [this one]")  # fmt: skip
    p.add_argument("--anchors", type=pathlib.Path, default=ROOT.parent / "shared" / "anchors",
                   help="the folder with official_step_speed.py and didicm-official/")  # fmt: skip
    p.add_argument("--parts", nargs="+", default=["train", "cp8"], choices=["train", "cp8"])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--eval-batch", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=6, help="timed train steps per round and side")
    p.add_argument(
        "--eval-repeats", type=int, default=3, help="timed CP-8 calls per round and side"
    )
    p.add_argument("--json", type=pathlib.Path)
    p.add_argument("--write-results", type=pathlib.Path,
                   help="replace the generated block in this markdown file (docs/results.md)")  # fmt: skip
    args = p.parse_args(argv)
    if not (args.anchors / "official_step_speed.py").exists():
        raise SystemExit(f"no official_step_speed.py under --anchors {args.anchors}")
    threads = os.cpu_count() or 1
    repeats = {"train": args.repeats, "cp8": args.eval_repeats}

    timers = {}
    for part in args.parts:
        for setting in args.settings:
            batch = args.train_batch if part == "train" else args.eval_batch
            print(f"compiling didiff_jax {part} ({setting}, batch {batch})", flush=True)
            build = project_train if part == "train" else project_cp8
            timers[(part, setting)] = (batch, build(setting, batch))

    samples: dict[tuple, list[float]] = {k: [] for k in timers}
    off_samples: dict[str, list[float]] = {part: [] for part in args.parts}
    torch_version = "?"
    for r in range(args.rounds):
        for part in args.parts:
            for setting in args.settings:
                batch, timer = timers[(part, setting)]
                samples[(part, setting)].append(timer(repeats[part]))
            batch = args.train_batch if part == "train" else args.eval_batch
            row = official(args.official_python, args.anchors, part, batch, repeats[part], threads)
            off_samples[part].append(row["seconds"])
            torch_version = row.get("torch", torch_version)
            print(f"round {r + 1}/{args.rounds} {part}: official {row['seconds']:.3f} s, "
                  + ", ".join(f"{s} {samples[(part, s)][-1]:.3f} s" for s in args.settings),
                  flush=True)  # fmt: skip

    rows = []
    for (part, setting), (batch, _) in timers.items():
        ours = statistics.median(samples[(part, setting)])
        theirs = statistics.median(off_samples[part])
        rows.append({"part": part, "setting": setting, "batch": batch,
                     "project_s": ours, "official_s": theirs,
                     "project_per_s": batch / ours, "official_per_s": batch / theirs,
                     "ratio": theirs / ours, "rounds": args.rounds})  # fmt: skip
    meta = {"cpu": distributed.describe_machine(), "threads": threads, "torch": torch_version,
            "rounds": args.rounds, "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    for row in rows:
        print(json.dumps({**row, **meta}))
    table = markdown(rows, meta)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    if args.write_results:
        throughput.write_block(args.write_results, "speed", "official", table)


if __name__ == "__main__":
    main()
