"""Cost of one CP sampler step outside the network: the O(K) update against the reference's dense one.

For K in {10, 1000, 10000} and B = 256 it prints, for the library's O(K) Euler step and for the
reference's B x K x K reverse-rate update (SPEC 1.5): XLA's compiled memory footprint of a 16-step
chain (arguments + outputs + temporaries, from ``compiled.memory_analysis()``) and the measured time
per step. The "network" is a constant log-score, so only the sampler's own work is timed. The dense
chain is compiled at every K (compiling allocates nothing) but only run where it fits in memory.

    python benchmarks/sampler_memory.py [--batch 256] [--steps 16] [--max-dense-gib 8]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from didiff_jax import samplers
from didiff_jax.diffusion.schedules import LogLinear


def dense_cp_chain(log_score: jax.Array, num_steps: int) -> jax.Array:
    """The reference's update: ``p + dt * Rbar p`` with a [B, K, K] reverse-rate matrix per step."""
    B, K = log_score.shape
    ts, dt = samplers.euler_grid(num_steps)
    sched = LogLinear()
    Q = jnp.ones((K, K)) / K - jnp.eye(K)

    def step(p, t):
        x = jnp.argmin(p, axis=-1)
        ls = log_score.at[jnp.arange(B), x].set(0.0)
        p_hat = jax.nn.softmax(ls, axis=-1)
        S = p_hat[:, :, None] / p_hat[:, None, :]  # [B, K, K]
        M = S * Q  # [B, K, K]
        Rbar = M - jnp.eye(K) * jnp.sum(M, axis=1)[:, None, :]  # [B, K, K]
        p = p + dt * sched.dsigma(t) * jnp.einsum("bij,bj->bi", Rbar, p)
        p = jnp.clip(p, 0.0, 1.0)
        return p / jnp.sum(p, axis=-1, keepdims=True), None

    p, _ = jax.lax.scan(step, jnp.full((B, K), 1.0 / K), jnp.asarray(ts))
    return p


def ok_cp_chain(log_score: jax.Array, num_steps: int) -> jax.Array:
    """The library's chain with a constant network (the x_t entry set to 0, as a network does)."""

    def score_fn(ls, x_t, sigma):
        return ls.at[jnp.arange(ls.shape[0]), x_t].set(0.0)

    return samplers.cp_sample(
        score_fn, log_score, jax.random.key(0), num_classes=log_score.shape[1], num_steps=num_steps
    )


def footprint_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def time_per_step(fn, arg, num_steps: int, repeats: int = 3) -> float:
    fn(arg).block_until_ready()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(arg).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best / num_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--max-dense-gib", type=float, default=8.0)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 1000, 10000])
    args = parser.parse_args()

    rows = []
    for K in args.classes:
        log_score = jax.random.normal(jax.random.key(K), (args.batch, K))
        row = {"K": K, "B": args.batch}
        for name, chain in (("ok", ok_cp_chain), ("dense", dense_cp_chain)):
            fn = jax.jit(lambda ls, chain=chain: chain(ls, args.steps))
            compiled = fn.lower(log_score).compile()
            row[f"{name}_bytes"] = footprint_bytes(compiled)
            fits = row[f"{name}_bytes"] < args.max_dense_gib * 2**30
            row[f"{name}_ms_per_step"] = (
                1e3 * time_per_step(compiled, log_score, args.steps) if fits else None
            )
        rows.append(row)
        print(json.dumps(row), flush=True)

    def mib(b):
        return f"{b / 2**20:,.1f} MiB"

    def ms(v):
        return "not run (too large)" if v is None else f"{v:.3f} ms"

    print(
        f"\n{jax.devices()[0].device_kind}, B = {args.batch}, {args.steps}-step chain, network excluded"
    )
    print(
        "| K | O(K) step: memory | O(K) step: time/step | dense B x K x K: memory | dense: time/step |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['K']} | {mib(r['ok_bytes'])} | {ms(r['ok_ms_per_step'])} | "
            f"{mib(r['dense_bytes'])} | {ms(r['dense_ms_per_step'])} |"
        )


if __name__ == "__main__":
    main()
