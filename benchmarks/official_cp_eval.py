#!/usr/bin/env python3
"""Time the OFFICIAL DiDiCM release's CP sampler (its own ``DiDiCMCPSampler``, eval mode, no grad)
on the official DiDiRN-18, run from the anchors' snapshot of the release; prints one JSON line.

Run by ``benchmarks/official_speed.py`` with a Python that has torch and timm (the project's
``torch`` extra plus ``timm``); nothing of the official code is copied here, it is imported from
``--official-dir``. The official network hard-codes 3 input channels: the input is random
[batch, 3, size, size], as in the anchors' ``official_step_speed.py``.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import statistics
import sys
import time
import types


class _NoTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """timm imports torchvision at import time only for parts the timed code does not use."""

    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attr: type(attr, (), {})
        return module

    def exec_module(self, module):
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official-dir", required=True, help="the didicm-official checkout")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=8, help="CP steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.meta_path.insert(0, _NoTorchvision())
    import timm
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.official_dir)
    import didicm  # noqa: F401  (registers didirn18 with timm)
    from didicm import score_sampling

    torch.manual_seed(0)
    model = timm.create_model("didirn18", pretrained=False, num_classes=args.classes, in_chans=3)
    model.eval()
    sampler = score_sampling.get_sampler(
        "cp", mode="min", num_classes=args.classes, noise_type="loglinear", steps=args.steps
    )
    images = torch.randn(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        sampler.run(model, images)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            sampler.run(model, images)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({"impl": "official-pytorch", "torch": torch.__version__, "part": "cp_eval",
                      "batch": args.batch, "size": args.size, "cp_steps": args.steps,
                      "threads": args.threads, "seconds_median": med,
                      "images_per_s": args.batch / med}))  # fmt: skip


if __name__ == "__main__":
    main()
