"""Forward cost of DiDiRN against the same-width ResNet: the conditioning must not cost a second network.

Times the jitted eval-mode forward of ``didirn{D}`` and ``resnet{D}`` with the same stem, width,
batch and resolution (best of several runs after compilation) and prints JSON lines and a table
with the ratio. Also prints XLA's FLOP count of each compiled forward.

    python benchmarks/model_forward.py [--depths 18 50] [--batch 64] [--size 32] [--width 64]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
from flax import nnx

from didiff_jax.models import create_model


def jitted_forward(name: str, *, stem: str, width: int, dtype, batch: int, size: int):
    model = create_model(
        name, num_classes=10, rngs=nnx.Rngs(0), stem=stem, width=width, dtype=dtype
    )
    graphdef, state = nnx.split(model)
    images = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
    x_t = jnp.arange(batch) % 10
    sigma = jnp.linspace(0.01, 6.9, batch)

    @jax.jit
    def forward(state, images, x_t, sigma):
        m = nnx.merge(graphdef, state)
        if name.startswith("didirn"):
            return m(images, x_t, sigma, train=False)
        return m(images, train=False)

    args = (state, images, x_t, sigma)
    compiled = forward.lower(*args).compile()
    return compiled, args


def best_time(compiled, args, repeats: int) -> float:
    compiled(*args).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        compiled(*args).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[18, 50])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--stem", default="reference")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)

    rows = []
    for depth in args.depths:
        row = {"depth": depth, "batch": args.batch, "size": args.size, "width": args.width,
               "stem": args.stem, "dtype": args.dtype}  # fmt: skip
        for kind in ("resnet", "didirn"):
            compiled, fargs = jitted_forward(
                f"{kind}{depth}", stem=args.stem, width=args.width, dtype=dtype,
                batch=args.batch, size=args.size,
            )  # fmt: skip
            row[f"{kind}_s"] = best_time(compiled, fargs, args.repeats)
            row[f"{kind}_gflops"] = compiled.cost_analysis().get("flops", float("nan")) / 1e9
        row["ratio"] = row["didirn_s"] / row["resnet_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(
        f"\n{jax.devices()[0].device_kind}, stem={args.stem}, width={args.width}, "
        f"batch={args.batch}, {args.size}x{args.size}, {args.dtype}, eval-mode forward"
    )
    print("| depth | ResNet ms | DiDiRN ms | DiDiRN / ResNet | ResNet GFLOP | DiDiRN GFLOP |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['depth']} | {1e3 * r['resnet_s']:.1f} | {1e3 * r['didirn_s']:.1f} | "
            f"{r['ratio']:.2f}x | {r['resnet_gflops']:.2f} | {r['didirn_gflops']:.2f} |"
        )


if __name__ == "__main__":
    main()
