"""PyTorch / timm checkpoints <-> didiff_jax run directories.

Import (a ``.pth``/``.pth.tar`` of the official DiDiCM release or timm/torchvision, or an ``.npz``
of PyTorch-named arrays) into a workdir that ``main --mode eval|predict`` reads::

    python -m didiff_jax.convert --model didirn50 --num-classes 1000 CHECKPOINT --workdir DIR [--ema]
        [--config configs/imagenet_didirn50.py] [--stem reference]

Export a run's model as a PyTorch-named state dict (``.npz``; ``.pth`` when torch is installed)::

    python -m didiff_jax.convert --export --workdir DIR OUT.npz|OUT.pth

The state dict is checked against the model before anything is written: a checkpoint of another
depth, K or stem fails listing missing keys, unexpected keys and shape mismatches.

``.pth`` files are read with PyTorch's restricted unpickler (``weights_only=True``, plus the
``argparse.Namespace`` of timm training checkpoints), so a downloaded checkpoint cannot run code;
``--unsafe-full-unpickle`` turns that off for a file you trust (see ``--help``).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import ml_collections
import numpy as np
from flax import nnx

from didiff_jax import checkpoint, optim, sharding, torch_checkpoint
from didiff_jax.data import pipeline
from didiff_jax.models.torch_interop import (
    StateDictMismatch,
    check_torch_weights,
    export_torch_state_dict,
    load_torch_weights,
)
from didiff_jax.state import build_model, host_params, init_train_state, restore_for_eval

REPO_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def read_state_dict(path: str, *, ema: bool = False, unsafe_full_unpickle: bool = False
                    ) -> dict[str, np.ndarray]:  # fmt: skip
    """``{name: array}`` from an ``.npz`` (read without pickle) or a torch checkpoint (timm:
    ``state_dict`` / ``state_dict_ema``; a ``module.`` prefix from DataParallel is stripped).

    Torch files are unpickled with PyTorch's restricted loader (see
    :mod:`didiff_jax.torch_checkpoint`); ``unsafe_full_unpickle`` lifts the restriction, which
    lets the file run arbitrary code."""
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    return torch_checkpoint.read(path, ema=ema, unsafe_full_unpickle=unsafe_full_unpickle)


def placeholder_info(config: ml_collections.ConfigDict, num_classes: int) -> pipeline.DataInfo:
    """What the model needs of the data (K and channels), without opening the dataset."""
    res, channels = config.data.image_size, config.model.get("in_channels", 3)
    return pipeline.DataInfo(num_classes, tuple(str(i) for i in range(num_classes)),
                             (res, res, channels), pipeline.IMAGENET_MEAN, pipeline.IMAGENET_STD)  # fmt: skip


def default_config(model: str) -> str:
    return str(REPO_CONFIGS / ("imagenet_didirn50.py" if model.startswith("didirn") else
                               "imagenet_resnet50.py"))  # fmt: skip


def import_checkpoint(state_dict: dict, config: ml_collections.ConfigDict, workdir: str, *,
                      num_classes: int) -> None:  # fmt: skip
    """Write ``state_dict`` as step 0 of a run of ``config`` in ``workdir`` (with its config.json)."""
    info = placeholder_info(config, num_classes)
    # Check the weights against a throw-away model first: nothing is written if they do not fit.
    check_torch_weights(nnx.eval_shape(lambda: build_model(config, info, nnx.Rngs(0))), state_dict)
    mesh = sharding.make_mesh(**config.mesh)
    tx, _ = optim.make_optimizer(config.optimizer, 1)
    graphdef, _, _, init_fn = init_train_state(config, info, tx, mesh, ())
    state = init_fn()
    model = nnx.merge(graphdef, state["params"], state["rest"])
    load_torch_weights(model, state_dict)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    state = {**state, "params": params, "rest": rest, "opt_state": tx.init(params),
             "ema": params if state["ema"] else {}, "ema_rest": rest if state["ema"] else {}}  # fmt: skip
    mgr = checkpoint.manager(workdir)
    if mgr.latest_step() is not None:
        raise SystemExit(f"{workdir} already holds checkpoints; use an empty workdir")
    checkpoint.write_config(workdir, config)
    checkpoint.save(mgr, 0, state, force=True)
    mgr.wait_until_finished()


def export_checkpoint(workdir: str, out: str, *, use_ema: bool = True) -> dict[str, np.ndarray]:
    config = checkpoint.read_config(workdir)
    # K from the saved head (ResNet/DiDiRN ``fc``), so that no dataset has to be opened.
    mgr = checkpoint.manager(workdir, read_only=True)
    saved = mgr.item_metadata(mgr.latest_step())["state"]
    num_classes = int(saved["params"]["fc"]["bias"]["value"].shape[0])
    info = placeholder_info(config, num_classes)
    graphdef, state, _, _ = restore_for_eval(config, workdir, info=info)
    params, rest = host_params(state, use_ema)
    sd = export_torch_state_dict(nnx.merge(graphdef, jax.device_get(params), jax.device_get(rest)))
    if out.endswith(".npz"):
        np.savez(out, **sd)
    else:
        try:
            import torch
        except ImportError:
            raise SystemExit("writing .pth needs PyTorch; write .npz instead") from None
        torch.save({"state_dict": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}},
                   out)  # fmt: skip
    return sd


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m didiff_jax.convert", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "checkpoint", help="import: the .pth/.npz to read; export: the file to write"
    )
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--export", action="store_true", help="write the workdir's model out")
    parser.add_argument("--model", help="import: didirn18..152 or resnet18..152")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument(
        "--config", help="import: the config of the run (default: the ImageNet one)"
    )
    parser.add_argument("--stem", help="import: override the config's stem")
    parser.add_argument("--ema", action="store_true", help="import timm's state_dict_ema")
    parser.add_argument(
        "--unsafe-full-unpickle",
        action="store_true",
        help="import: unpickle the .pth without restrictions (torch.load weights_only=False). "
        "UNSAFE: a crafted checkpoint can run arbitrary code on this machine; use only for files "
        "from a source you trust, and only when the default restricted loading refuses the file",
    )
    args = parser.parse_args(argv)
    if args.export:
        sd = export_checkpoint(args.workdir, args.checkpoint)
        print(f"wrote {len(sd)} tensors to {args.checkpoint}")
        return
    if not args.model:
        parser.error("--model is required to import")
    config = checkpoint.load_config_file(args.config or default_config(args.model))
    config.model.name = args.model
    if args.stem:
        config.model.stem = args.stem
    try:
        state_dict = read_state_dict(args.checkpoint, ema=args.ema,
                                     unsafe_full_unpickle=args.unsafe_full_unpickle)  # fmt: skip
        import_checkpoint(state_dict, config, args.workdir, num_classes=args.num_classes)
    except torch_checkpoint.UnsafeCheckpointError as e:
        sys.exit(f"error: {e}")
    except StateDictMismatch as e:
        sys.exit(f"error: {args.checkpoint}: {e}")
    print(f"imported {args.checkpoint} as {args.model} into {args.workdir}")


if __name__ == "__main__":
    main()
