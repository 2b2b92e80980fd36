"""How far each DiDiCM sampler lands from the true posterior when the score is exact.

An oracle ``score_fn`` returns the exact log concrete score of known posteriors (random
Dirichlet(0.1) draws), so every difference from the posterior is the sampler's own error:
Euler discretisation (CP and CL), Monte-Carlo noise (CL) or numerics (analytic CP). The last row
is no sampler: the histogram of exact draws from the posterior, the floor of a label histogram. Prints JSON lines
and a markdown table of the mean L1 distance and the top-1 agreement with the posterior.

    python benchmarks/sampler_accuracy.py [--classes 10 1000] [--batch 128]
"""

from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from didiff_jax import samplers
from didiff_jax.diffusion import uniform_marginal


def oracle_score_fn(posterior: jax.Array, x_t: jax.Array, sigma: jax.Array) -> jax.Array:
    log_p = jnp.log(uniform_marginal(posterior, sigma))  # [B, K]
    return log_p - jnp.take_along_axis(log_p, x_t[:, None], axis=-1)


def exact_draws(score_fn, posterior, key, *, num_classes, num_steps, num_chains=1000):
    """Not a sampler: the histogram of ``num_chains`` exact draws from the posterior itself, the
    Monte-Carlo floor that any label sampler with that many chains sits on (``num_steps`` unused)."""
    draws = jax.random.categorical(key, jnp.log(posterior), shape=(num_chains, posterior.shape[0]))
    return jnp.mean(jax.nn.one_hot(draws, num_classes), axis=0)


SAMPLERS = {
    "CP euler": functools.partial(samplers.cp_sample, method="euler"),
    "CP analytic": functools.partial(samplers.cp_sample, method="analytic"),
    "CL euler, 10 chains": functools.partial(samplers.cl_sample, method="euler", num_chains=10),
    "CL euler, 1000 chains": functools.partial(samplers.cl_sample, method="euler", num_chains=1000),
    "CL analytic, 1000 chains": functools.partial(
        samplers.cl_sample, method="analytic", num_chains=1000
    ),
    "exact draws, 1000 (Monte-Carlo floor)": exact_draws,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration")
    args = parser.parse_args()

    rows = []
    for K in args.classes:
        rng = np.random.default_rng(K)
        posterior = jnp.asarray(rng.dirichlet(np.full(K, args.alpha), size=args.batch), jnp.float32)
        for name, sampler in SAMPLERS.items():
            for S in args.steps:
                fn = jax.jit(
                    functools.partial(sampler, oracle_score_fn, num_classes=K, num_steps=S)
                )
                probs = fn(posterior, jax.random.key(S))
                l1 = float(jnp.mean(jnp.sum(jnp.abs(probs - posterior), axis=-1)))
                top1 = float(jnp.mean(probs.argmax(-1) == posterior.argmax(-1)))
                row = {"K": K, "sampler": name, "steps": S, "l1": l1, "top1_agreement": top1}
                rows.append(row)
                print(json.dumps(row), flush=True)

    print(f"\nOracle score, {args.batch} Dirichlet({args.alpha}) posteriors per K, float32, CPU")
    for K in args.classes:
        print(f"\nK = {K}: mean L1 to the posterior / top-1 agreement")
        print("| sampler | " + " | ".join(f"{s} steps" for s in args.steps) + " |")
        print("|---" * (len(args.steps) + 1) + "|")
        for name in SAMPLERS:
            cells = [
                f"{r['l1']:.3g} / {r['top1_agreement']:.2f}"
                for r in rows
                if r["K"] == K and r["sampler"] == name
            ]
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
