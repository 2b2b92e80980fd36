"""Each convolution form of ``didiff_jax.models.conv`` on every convolution shape of DiDiRN-18.

For the 28 px networks (reference stem: conv3x3 + maxpool, stages at 14, 7, 4 and 2 px) at the
given width and batch, times the forward pass and forward + backward (both gradients) of every
applicable form, and marks the one ``select_form`` picks on this backend. The rule in
``select_form`` is read off this table (and the one at ``--width 16``).

    python benchmarks/conv_forms.py --width 64 --batch 128        # ~2 min on 2 cores

Prints a markdown table (median milliseconds of ``--repeats`` calls after a warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from didiff_jax.models.conv import conv_general_dilated, select_form

DN = ("NHWC", "HWIO", "NHWC")


def shapes(width: int, in_channels: int) -> list[tuple[int, int, int, int, int]]:
    """(map size, Cin, Cout, kernel, stride) of DiDiRN-18's convolutions at 28 px."""
    w = width
    return [
        (28, in_channels, w, 3, 1),
        (14, w, w, 3, 1), (14, w, 2 * w, 3, 2), (14, w, 2 * w, 1, 2),
        (7, 2 * w, 2 * w, 3, 1), (7, 2 * w, 4 * w, 3, 2), (7, 2 * w, 4 * w, 1, 2),
        (4, 4 * w, 4 * w, 3, 1), (4, 4 * w, 8 * w, 3, 2), (4, 4 * w, 8 * w, 1, 2),
        (2, 8 * w, 8 * w, 3, 1),
    ]  # fmt: skip


def median_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    backend = jax.default_backend()
    print(f"backend {backend}, batch {args.batch}, width {args.width}; ms, median of "
          f"{args.repeats}; * = select_form's choice\n")  # fmt: skip
    print("| map | Cin -> Cout | kernel/stride | form | forward | forward + backward |")
    print("|---:|---|---|---|---:|---:|")
    for size, cin, cout, k, s in shapes(args.width, args.in_channels):
        p_ = k // 2
        pad = ((p_, p_), (p_, p_))
        kx, kw = jax.random.split(jax.random.key(0))
        x = jax.random.normal(kx, (args.batch, size, size, cin))  # [B, H, W, Cin]
        w = jax.random.normal(kw, (k, k, cin, cout)) * 0.05  # [k, k, Cin, Cout]
        chosen = select_form((size, size), (k, k), (s, s), pad, backend)
        forms = ["xla", "im2col"] + (["matmul"] if k == 1 else [])
        for form in forms:

            def conv(x, w, form=form, s=s, pad=pad):
                return conv_general_dilated(x, w, (s, s), pad, dimension_numbers=DN, form=form)

            fwd = jax.jit(conv)
            fwd_bwd = jax.jit(jax.grad(lambda x, w, c=conv: jnp.sum(c(x, w) ** 2), argnums=(0, 1)))
            mark = "*" if form == chosen else ""
            print(f"| {size} | {cin} -> {cout} | {k}x{k}/{s} | {form}{mark} | "
                  f"{median_ms(fwd, x, w, repeats=args.repeats):.1f} | "
                  f"{median_ms(fwd_bwd, x, w, repeats=args.repeats):.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
