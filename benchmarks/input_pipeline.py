"""CPU time of the training input pipeline per batch: whole-batch reading against per-example.

``pipeline.train_dataset`` reads an in-memory source a batch at a time when training has no
per-image randomness (``pipeline._batchwise``: the Fashion-MNIST configs' default) and otherwise
one example at a time through grain's ``random_map``. Both give the same batches; this times each
on the config's data, single-threaded, after a warm-up.

    python benchmarks/input_pipeline.py --config configs/fashion_mnist_didirn.py   # ~10 s

Prints milliseconds of process CPU time per batch of ``batch_size`` (median of ``--rounds``).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

from didiff_jax import checkpoint
from didiff_jax.data import pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the configs package lives at the repository root
    sys.path.insert(0, str(ROOT))


def ms_per_batch(stream, batches: int) -> float:
    next(stream)  # warm-up: the first batch starts grain's machinery
    t = time.process_time()
    for _ in range(batches):
        next(stream)
    return 1e3 * (time.process_time() - t) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/fashion_mnist_didirn.py")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config = checkpoint.load_config_file(args.config)
    config.data.num_threads = 0  # time the work itself, not the prefetch threads' overlap
    info = pipeline.dataset_info(config.data)
    source = pipeline.load_source(config.data, "train")
    sources = {
        "batch": source,
        "per example": pipeline.IndexedSource(source, np.arange(len(source))),
    }
    print(f"batchwise reading applies to this config: {pipeline._batchwise(config.data, source)}")
    times: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(args.rounds):  # alternate the two
        for name, src in sources.items():
            stream = iter(pipeline.train_dataset(config.data, info, source=src, seed=0,
                                                 global_batch_size=config.batch_size))  # fmt: skip
            times[name].append(ms_per_batch(stream, args.batches))
    print(f"| reading | ms per batch of {config.batch_size} |\n|---|---:|")
    for name, ms in times.items():
        print(f"| {name} | {statistics.median(ms):.2f} |")


if __name__ == "__main__":
    main()
