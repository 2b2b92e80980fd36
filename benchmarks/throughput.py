"""Speed of the library: training throughput, sampler latency, and a roofline projection for a GPU.

Three parts, each printing JSON lines and a markdown table:

1. **Training throughput** of the library's own train step (``train.make_train_step``: the DiDiCM or
   cross-entropy loss, LAMB, the ImageNet recipes of ``configs/imagenet_{didirn50,resnet50}.py``) for
   DiDiRN-18/50 and ResNet-18/50 (K = 1000, width 64, each with its default stem) at the given sizes,
   batch sizes doubling from 32 up to what fits, float32 and bfloat16. Memory is XLA's compiled
   footprint of the step (arguments + outputs + temporaries - donated aliases, from
   ``compiled.memory_analysis()``); where the device reports it (GPUs, TPUs) also its peak.
2. **Sampler latency** per image against the number of steps for CP (euler, analytic), CL (10 chains)
   and ADD (with and without guidance) on the Fashion-MNIST study networks
   (``configs/fashion_mnist_{didirn,add_vit}.py``), and the share of the chain's time spent outside
   the network: the same chain with the network replaced by a free stand-in, over the real chain.
3. **Projection** (``--project``): FLOPs and bytes that XLA's cost analysis counts for the DiDiRN-50
   224 px bfloat16 train step (at the largest power-of-two batch whose compiled footprint fits the
   GPU's memory) and for the CP-8 chain, against the bf16 dense peak and HBM bandwidth of an H100
   SXM or an H200 (``--gpu``; the counts and the bound: ``didiff_jax.study.roofline``).
   This is a roofline BOUND, a projection, never a measurement: it says how fast the step could be if
   it ran at the GPU's peak arithmetic or memory rate, whichever binds.

    python benchmarks/throughput.py --quick --project          # what docs/results.md reports (CPU)
    python benchmarks/throughput.py                            # the whole grid (hours on a CPU)
    python benchmarks/throughput.py --parts train --sizes 224 --dtypes bfloat16   # on a GPU

``--json FILE`` also writes every row; ``--write-results docs/results.md`` replaces the generated
block of the "Speed" section there (between ``<!-- speed:TAG:begin -->`` and ``...:end -->``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the configs package lives at the repository root
    sys.path.insert(0, str(ROOT))

from didiff_jax import distributed, losses, optim, samplers, sharding, state, train  # noqa: E402
from didiff_jax.data import pipeline  # noqa: E402
from didiff_jax.study.io import write_block, write_json  # noqa: E402
from didiff_jax.study.roofline import (  # noqa: E402
    GPUS,
    chain_cost,
    footprint_bytes,
    roofline,
    xla_cost,
)

# ------------------------------------------------------------------------------- train step


def imagenet_config(kind: str, depth: int, size: int, dtype: str) -> ml_collections.ConfigDict:
    """The ImageNet config of ``kind`` ('didirn' or 'resnet') at ``depth``, ``size`` px, ``dtype``."""
    from configs import imagenet_didirn50, imagenet_resnet50

    module = imagenet_didirn50 if kind == "didirn" else imagenet_resnet50
    c = module.get_config()
    c.model.name = f"{kind}{depth}"
    c.model.dtype = dtype
    c.data.image_size = size
    c.ema_decay = 0.0  # the reference recipe keeps no EMA
    return c


def imagenet_info(size: int, num_classes: int = 1000) -> pipeline.DataInfo:
    """ImageNet's data info without reading ImageNet (class names are not needed to time a step)."""
    return pipeline.DataInfo(num_classes, tuple(str(i) for i in range(num_classes)),
                             (size, size, 3), pipeline.IMAGENET_MEAN, pipeline.IMAGENET_STD)  # fmt: skip


def train_step_program(config: ml_collections.ConfigDict, info: pipeline.DataInfo, batch: int,
                       *, abstract: bool = False):  # fmt: skip
    """(jitted train step, state initialiser, a random batch): the library's own step for
    ``config``. ``abstract``: the batch as shapes only (to lower and count, not to run)."""
    mesh = sharding.make_mesh(data=1, fsdp=1, devices=jax.devices()[:1])
    tx, _ = optim.make_optimizer(config.optimizer, 1000)
    graphdef, _, _, init_fn = state.init_train_state(config, info, tx, mesh, [])
    loss_fn = losses.make_objective(config.objective, info.num_classes)
    step = jax.jit(
        train.make_train_step(graphdef, loss_fn, tx, config.get("ema_decay", 0.0)),
        donate_argnums=0,
    )
    H, W, C = info.image_shape
    if abstract:
        data = {"image": jax.ShapeDtypeStruct((batch, H, W, C), jnp.float32),
                "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}  # fmt: skip
        return step, init_fn, data
    k_img, k_lab = jax.random.split(jax.random.key(0))
    data = {
        "image": jax.random.normal(k_img, (batch, H, W, C)),  # [B, H, W, C]
        "label": jax.random.randint(k_lab, (batch,), 0, info.num_classes),  # [B]
    }
    return step, init_fn, data


def device_peak_bytes() -> int | None:
    """The device's peak memory in use, where it reports one (GPU, TPU); None on CPU."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def measure_train(config, info, batch: int, *, repeats: int, max_bytes: float,
                  max_step_s: float) -> dict:  # fmt: skip
    """Compile and time the train step at ``batch``: examples/s from the median of ``repeats`` steps
    after one warm-up step, in wall time and per CPU-second of this process (``process_time``,
    all threads: about the same on a busy machine as on an idle one, where wall time is not). Not run when the compiled footprint exceeds ``max_bytes`` or when the
    warm-up step alone takes longer than ``max_step_s`` (then only the warm-up time is given)."""
    step, init_fn, data = train_step_program(config, info, batch)
    state = init_fn()
    t0 = time.perf_counter()
    compiled = step.lower(state, data).compile()
    row = {"compile_s": time.perf_counter() - t0, "footprint_bytes": footprint_bytes(compiled),
           **{f"xla_{k}": v for k, v in xla_cost(compiled).items()}}  # fmt: skip
    if row["footprint_bytes"] > max_bytes:
        return {**row, "status": "does not fit"}
    t0 = time.perf_counter()
    state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    warm = time.perf_counter() - t0
    if warm > max_step_s:
        return {**row, "status": f"one step {warm:.0f} s > {max_step_s:.0f} s",
                "examples_per_s": batch / warm, "timed_steps": 1}  # fmt: skip
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {**row, "status": "ok", "examples_per_s": batch / statistics.median(times),
            "examples_per_cpu_s": batch / statistics.median(cpu), "timed_steps": repeats,
            "device_peak_bytes": device_peak_bytes()}  # fmt: skip


def train_grid(args) -> Iterator[dict]:
    """The training-throughput rows, one per (size, depth, model, dtype, batch), as measured."""
    max_bytes = args.max_gib * 2**30
    for size in args.sizes:
        for depth in args.depths:
            for kind in ("didirn", "resnet"):
                for dtype in args.dtypes:
                    config = imagenet_config(kind, depth, size, dtype)
                    batch = args.min_batch
                    while batch <= args.max_batch:
                        if args.batches and batch not in args.batches:
                            batch *= 2
                            continue
                        row = {"part": "train", "model": f"{kind}{depth}", "stem": config.model.stem,
                               "size": size, "dtype": dtype, "batch": batch}  # fmt: skip
                        row.update(measure_train(config, imagenet_info(size), batch,
                                                 repeats=args.repeats, max_bytes=max_bytes,
                                                 max_step_s=args.max_step_s))  # fmt: skip
                        yield row
                        if row["status"] != "ok":
                            break
                        batch *= 2


# ---------------------------------------------------------------------------------- samplers


def _best_time(fn, *args, repeats: int) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds of this process) of ``repeats`` calls after a warm-up."""
    jax.block_until_ready(fn(*args))  # compile + warm-up
    wall = cpu = math.inf
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu


def study_networks(num_classes: int):
    """The Fashion-MNIST study's DiDiRN-18 and ADD-ViT (random weights: speed only) and their
    configs."""
    from configs import fashion_mnist_add_vit, fashion_mnist_didirn

    nets = {}
    for name, module in (("didicm", fashion_mnist_didirn), ("add", fashion_mnist_add_vit)):
        config = module.get_config()
        info = pipeline.dataset_info(config.data)
        info = pipeline.DataInfo(num_classes, tuple(map(str, range(num_classes))),
                                 info.image_shape, info.mean, info.std)  # fmt: skip
        nets[name] = (state.build_model(config, info, nnx.Rngs(0)), config, info)
    return nets


SAMPLERS = (
    ("CP euler", "didicm", {"method": "euler"}),
    ("CP analytic", "didicm", {"method": "analytic"}),
    ("CL euler, 10 chains", "didicm", {"method": "euler", "num_chains": 10}),
    ("ADD argmax", "add", {"guidance_scale": 1.0}),
    ("ADD argmax, guidance 2", "add", {"guidance_scale": 2.0}),
)
"""(label, network, options) of each timed sampler."""


def sampler_chains(kind: str, options: dict, model, config, num_classes: int, num_steps: int):
    """``(chain(images, key), null_chain(images, key), network_only(images, key))`` jitted: the
    sampler with the real network, with a free stand-in network, and the network evaluations alone
    (as many as the chain makes)."""
    graphdef, state = nnx.split(model)
    K = num_classes
    if kind == "didicm":
        sched = losses.ctmc_schedule(config.objective)
        chains = options.get("num_chains")
        sample = functools.partial(
            samplers.cl_sample if chains else samplers.cp_sample, num_classes=K,
            num_steps=num_steps, schedule=sched, method=options["method"],
            **({"num_chains": chains} if chains else {}),
        )  # fmt: skip

        def chain(images, key):
            m = nnx.merge(graphdef, state)
            return sample(lambda i, x, s: m(i, x, s, train=False), images, key)

        def null_chain(images, key):
            base = jnp.mean(images, axis=(1, 2, 3))[:, None] * jnp.arange(K)  # [B, K], cheap
            base = jnp.tile(base, (chains or 1, 1))  # CL queries B x num_chains labels at once

            def score_fn(imgs, x_t, sigma):  # the network contract's shapes, no network
                ls = base / (1.0 + sigma[:, None])  # [B', K]
                return ls.at[jnp.arange(x_t.shape[0]), x_t].set(0.0)

            return sample(score_fn, images, key)

        evals = num_steps * (chains or 1)

        def network_only(images, key):
            m = nnx.merge(graphdef, state)
            imgs = jnp.tile(images, (chains or 1, 1, 1, 1))
            B = imgs.shape[0]
            x = jax.random.randint(key, (B,), 0, K)

            def body(acc, s):
                return acc + m(imgs, x, jnp.full((B,), s), train=False).sum(), None

            return jax.lax.scan(body, 0.0, jnp.linspace(0.1, 5.0, num_steps))[0]

        return jax.jit(chain), jax.jit(null_chain), jax.jit(network_only), evals

    sched = losses.gaussian_schedule(config.objective)
    g = options["guidance_scale"]
    sample = functools.partial(samplers.onehot_sample, num_classes=K, num_steps=num_steps,
                               schedule=sched, to_one="argmax", guidance_scale=g)  # fmt: skip

    def chain(images, key):
        m = nnx.merge(graphdef, state)
        c = m.encode(images, train=False)
        null = m.null_condition(c.shape[0]) if g != 1.0 else None
        return sample(lambda y, t, cc: m.denoise(y, t, cc, train=False), c, key, null_cond=null)

    def null_chain(images, key):
        c = jnp.mean(images, axis=(1, 2))[:, :1] * jnp.arange(K)  # [B, K], cheap

        def logits_fn(y, t, cc):
            return cc + 0.1 * y * t[:, None]

        return sample(logits_fn, c, key, null_cond=jnp.zeros_like(c) if g != 1.0 else None)

    evals = num_steps * (2 if g != 1.0 else 1)

    def network_only(images, key):
        m = nnx.merge(graphdef, state)
        c = m.encode(images, train=False)
        B = c.shape[0]
        y = jax.random.normal(key, (B, K))

        def body(acc, t):
            return acc + m.denoise(y, jnp.full((B,), t), c, train=False).sum(), None

        return jax.lax.scan(body, 0.0, jnp.linspace(1.0, 0.1, evals))[0]

    return jax.jit(chain), jax.jit(null_chain), jax.jit(network_only), evals


def sampler_grid(args) -> Iterator[dict]:
    """The sampler-latency rows, one per (sampler, steps), as measured."""
    nets = study_networks(args.sampler_classes)
    key = jax.random.key(1)
    for label, kind, options in SAMPLERS:
        model, config, info = nets[kind]
        H, W, C = info.image_shape
        images = jax.random.normal(jax.random.key(0), (args.sampler_batch, H, W, C))
        for S in args.sampler_steps:
            chain, null_chain, network_only, evals = sampler_chains(
                kind, options, model, config, args.sampler_classes, S
            )
            (t_chain, c_chain), (t_null, c_null), (t_net, c_net) = (
                _best_time(fn, images, key, repeats=args.repeats)
                for fn in (chain, null_chain, network_only)
            )
            B = args.sampler_batch
            row = {"part": "sampler", "sampler": label, "network": config.model.name,
                   "classes": args.sampler_classes, "batch": B, "steps": S,
                   "network_evals": evals, "ms_per_image": 1e3 * t_chain / B,
                   "cpu_ms_per_image": 1e3 * c_chain / B, "outside_share": c_null / c_chain,
                   "network_only_cpu_ms_per_image": 1e3 * c_net / B}  # fmt: skip
            yield row


# -------------------------------------------------------------------------------- projection


def projection(args) -> Iterator[dict]:
    """The roofline PROJECTION of the DiDiRN-50 224 px bfloat16 train step and CP-8 chain on the GPU
    ``GPUS[args.gpu]``, from XLA's counts on this machine's compiler."""
    gpu = GPUS[args.gpu]
    config = imagenet_config("didirn", 50, 224, "bfloat16")
    info = imagenet_info(224)

    def compiled_step(batch):
        step, init_fn, data = train_step_program(config, info, batch, abstract=True)
        abstract = jax.eval_shape(init_fn)
        return step.lower(abstract, data).compile()

    batch = args.project_batch
    if not batch:  # the largest power of two whose footprint fits 90% of the GPU's memory
        f32, f64 = footprint_bytes(compiled_step(32)), footprint_bytes(compiled_step(64))
        per_example, fixed = (f64 - f32) / 32, 2 * f32 - f64
        fits = (0.9 * gpu["memory"] - fixed) / per_example
        batch = 2 ** int(math.floor(math.log2(max(fits, 1))))
        print(json.dumps({"part": "project", "footprint_32": f32, "footprint_64": f64,
                          "chosen_batch": batch}), flush=True)  # fmt: skip
    compiled = compiled_step(batch)
    cost = xla_cost(compiled)
    rows = [{"part": "project", "what": "DiDiRN-50 train step (LAMB), 224 px, bfloat16",
             "batch": batch, "footprint_bytes": footprint_bytes(compiled),
             **roofline(cost["flops"], cost["bytes"], peak_flops=gpu["peak_flops"],
                        bandwidth=gpu["bandwidth"])}]  # fmt: skip

    model = state.build_model(config, info, nnx.Rngs(0))
    graphdef, weights = nnx.split(model)
    images = jax.ShapeDtypeStruct((batch, 224, 224, 3), jnp.float32)

    def lower_chain(S):
        def chain(weights, images, key):
            m = nnx.merge(graphdef, weights)
            return samplers.cp_sample(lambda i, x, s: m(i, x, s, train=False), images, key,
                                      num_classes=1000, num_steps=S, method="euler")  # fmt: skip

        return jax.jit(chain).lower(weights, images, jax.random.key(0))

    cost = chain_cost(lower_chain, 8)
    rows.append({"part": "project", "what": "DiDiRN-50 CP-8 chain (euler), 224 px, bfloat16",
                 "batch": batch, **roofline(cost["flops"], cost["bytes"],
                                            peak_flops=gpu["peak_flops"],
                                            bandwidth=gpu["bandwidth"])})  # fmt: skip
    for r in rows:
        r["images_per_s_bound"] = r["batch"] / r["bound_s"]
        r["gpu"] = args.gpu
        yield r


# ------------------------------------------------------------------------------------ tables


def _gib(b) -> str:
    return "-" if b is None else f"{b / 2**30:.2f} GiB"


def markdown(rows: list[dict]) -> str:
    out = []
    train_rows = [r for r in rows if r["part"] == "train"]
    if train_rows:
        out += ["Training throughput (the library's train step, K = 1000, width 64; memory = XLA's "
                "compiled footprint of the step):", "",
                "| model | stem | px | dtype | batch | examples/s | examples / CPU-s | memory | "
                "GFLOP/example (XLA) | status |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in train_rows:
            eps = f"{r['examples_per_s']:.1f}" if "examples_per_s" in r else "-"
            epc = f"{r['examples_per_cpu_s']:.1f}" if "examples_per_cpu_s" in r else "-"
            out.append(f"| {r['model']} | {r['stem']} | {r['size']} | {r['dtype']} | {r['batch']} "
                       f"| {eps} | {epc} | {_gib(r['footprint_bytes'])} | "
                       f"{r['xla_flops'] / r['batch'] / 1e9:.2f} | {r['status']} |")  # fmt: skip
        out.append("")
    sampler_rows = [r for r in rows if r["part"] == "sampler"]
    if sampler_rows:
        r0 = sampler_rows[0]
        out += [f"Sampler latency (batch {r0['batch']}, K = {r0['classes']}, the Fashion-MNIST study "
                "networks; outside = CPU time of the chain with a free stand-in network over that "
                "of the real chain):", "",
                "| sampler | network | steps | network evals | ms / image (wall) | CPU ms / image "
                "| outside the network | network alone, CPU ms / image |",
                "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in sampler_rows:
            out.append(f"| {r['sampler']} | {r['network']} | {r['steps']} | {r['network_evals']} | "
                       f"{r['ms_per_image']:.3f} | {r['cpu_ms_per_image']:.3f} | "
                       f"{100 * r['outside_share']:.1f}% | "
                       f"{r['network_only_cpu_ms_per_image']:.3f} |")  # fmt: skip
        out.append("")
    proj_rows = [r for r in rows if r["part"] == "project" and "what" in r]
    # rows from before --gpu existed have no "gpu" key: they were made for the H100
    for gpu_key in dict.fromkeys(r.get("gpu", "h100") for r in proj_rows):
        proj = [r for r in proj_rows if r.get("gpu", "h100") == gpu_key]
        g = GPUS[gpu_key]
        out += [f"PROJECTION for {g['name']} (roofline bound from XLA's counts on this machine's "
                f"compiler, NOT a measurement; {g['peak_flops'] / 1e12:.0f} TFLOP/s bf16 dense, "
                f"{g['bandwidth'] / 1e12:.2f} TB/s). Compute term = FLOPs / peak, memory term = bytes "
                "/ bandwidth, bound = the larger:", "",
                "| computation | batch | GFLOP / image | GB / image | FLOP / byte (ridge) | "
                "compute term, ms | memory term, ms | bound by | images/s at most (roofline) | "
                "images/s at most (compute only) |",
                "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in proj:
            out.append(f"| {r['what']} | {r['batch']} | {r['flops'] / r['batch'] / 1e9:.1f} | "
                       f"{r['bytes'] / r['batch'] / 1e9:.3f} | {r['intensity']:.0f} "
                       f"({r['ridge']:.0f}) | {1e3 * r['compute_s']:.1f} | "
                       f"{1e3 * r['memory_s']:.1f} | {r['limited_by']} | "
                       f"{r['images_per_s_bound']:,.0f} | {r['batch'] / r['compute_s']:,.0f} |")  # fmt: skip
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="18/50 at 32 px, batch 32 and 64, f32/bf16; CP/CL/ADD at 1 and 8 steps")  # fmt: skip
    parser.add_argument("--parts", nargs="+", default=["train", "sampler"],
                        choices=["train", "sampler", "project"])  # fmt: skip
    parser.add_argument("--project", action="store_true", help="also the GPU projection")
    parser.add_argument("--depths", type=int, nargs="+", default=[18, 50])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 224])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--min-batch", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--batches", type=int, nargs="*", default=None,
                        help="only these batch sizes (default: 32, 64, ... up to what fits)")  # fmt: skip
    parser.add_argument("--max-gib", type=float, default=None,
                        help="memory that counts as fitting (default: the device's, or half the RAM)")  # fmt: skip
    parser.add_argument("--max-step-s", type=float, default=120.0,
                        help="stop growing the batch once one step takes longer (CPU practicality)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sampler-steps", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--sampler-batch", type=int, default=64)
    parser.add_argument("--sampler-classes", type=int, default=10)
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h100",
                        help="the GPU of the projection")  # fmt: skip
    parser.add_argument("--project-batch", type=int, default=0,
                        help="batch of the projection (0: the largest that fits the GPU)")  # fmt: skip
    parser.add_argument("--json", default="", help="also write all rows to this file")
    parser.add_argument("--write-results", default="",
                        help="replace the generated Speed block of this markdown file")  # fmt: skip
    parser.add_argument("--from-json", nargs="*", default=[],
                        help="measure nothing: render the tables of --json files of earlier runs "
                             "(several: their rows together, each command with its machine)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.from_json:
        missing = [f for f in args.from_json if not pathlib.Path(f).is_file()]
        if missing:
            parser.error(f"--from-json: no such file {', '.join(missing)}")
        runs = [json.loads(pathlib.Path(f).read_text()) for f in args.from_json]
        render([r for run in runs for r in run["rows"]], runs, args.write_results,
               quick=all("--quick" in run["command"] for run in runs))  # fmt: skip
        return
    if args.quick:
        args.sizes, args.batches, args.max_batch = [32], [32, 64], 64
        args.sampler_steps, args.repeats = [1, 8], 2
    if args.project and "project" not in args.parts:
        args.parts.append("project")
    if args.max_gib is None:
        limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
        if limit is None:
            limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2
        args.max_gib = limit / 2**30

    t0 = time.time()
    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    run = {"machine": distributed.describe_machine(), "command": command, "wall_s": 0.0,
           "complete": False, "rows": []}  # fmt: skip
    parts = {"train": train_grid, "sampler": sampler_grid, "project": projection}
    for part in (p for p in parts if p in args.parts):
        for row in parts[part](args):
            print(json.dumps(row), flush=True)
            run["rows"].append(row)
            run["wall_s"] = time.time() - t0
            if args.json:  # after every row: a killed run keeps what it measured
                write_json(pathlib.Path(args.json), run)
    run["wall_s"], run["complete"] = time.time() - t0, True
    if args.json:
        write_json(pathlib.Path(args.json), run)
    render(run["rows"], [run], args.write_results, quick=args.quick)


def render(rows: list[dict], runs: list[dict], results: str, *, quick: bool) -> None:
    """Print the tables of ``rows``, headed by each run's machine, wall time and command; with
    ``results``, also replace the Speed block (tag quick/full) there."""

    def wall(run: dict) -> str:
        if run.get("complete", True):  # files from before "complete" existed hold whole runs
            return f"{run['wall_s'] / 60:.1f} min wall for the whole command"
        return f"STOPPED after {run['wall_s'] / 60:.1f} min, {len(run['rows'])} rows measured"

    header = "\n".join(f"{run['machine']}; {wall(run)}.\n\n    {run['command']}\n"
                       for run in runs)  # fmt: skip
    table = markdown(rows)
    print("\n" + header + "\n" + table)
    if results:
        write_block(pathlib.Path(results), "speed", "quick" if quick else "full",
                    header + "\n" + table)  # fmt: skip


if __name__ == "__main__":
    main()
