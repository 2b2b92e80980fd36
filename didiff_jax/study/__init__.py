"""The library side of the benchmark studies; the drivers in ``benchmarks/`` are thin CLIs over it.

The robustness study (``benchmarks/robustness.py``: does label-space diffusion beat the standard
classifier with the same body?), one job per module, each importing only the ones above it here:

* ``io``: the writers both benchmark drivers share (atomic JSON, a generated markdown block).
* ``grid``: what runs: conditions, pairs, sampler entries, grids, cells and their configs.
* ``cost``: the estimated wall time of a run, and how a machine compares with the estimate.
* ``runner``: running, resuming, checking and archiving the runs; collecting the finished ones.
* ``stats``: means and spreads over seeds, paired gains, rank correlation.
* ``verdict``: the generated statements of where the claim holds.
* ``report``: the plots and the markdown block of ``docs/results.md``.

And for the speed benchmark (``benchmarks/throughput.py``): ``roofline``, XLA's counts of a
compiled computation and the roofline bound they give on a GPU.

The study's configs are the repository's ``configs/`` package (not part of the installed library):
``grid.load_config`` imports them by name, so the caller puts the repository root on ``sys.path``.
"""
