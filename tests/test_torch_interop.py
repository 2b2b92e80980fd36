"""Official PyTorch DiDiRN and timm ResNet weights reproduce the reference outputs (fixtures)."""

import json
import os
import pathlib
import subprocess
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from didiff_jax.models import create_model
from didiff_jax.models.torch_interop import (
    StateDictMismatch,
    export_torch_state_dict,
    load_torch_weights,
)
from didiff_jax.state import restore_for_eval

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = np.load(pathlib.Path(__file__).parent / "fixtures" / "reference_networks.npz")
META = json.loads(bytes(FIXTURES["state_dicts_json"]).decode("utf-8"))
STEMS = {"didirn18": "reference", "didirn50": "reference", "resnet18": "imagenet",
         "resnet50": "imagenet"}  # fmt: skip


def recipe_tensor(name: str, shape: list[int]) -> np.ndarray:
    """The fixture's weight recipe (tests/fixtures/README.md), in float64."""
    n = int(np.prod(shape))
    j = np.arange(n, dtype=np.uint64)
    offset = np.uint64((zlib.crc32(name.encode("utf-8")) * 97531 + 12345) % 2**32)
    h = (j * np.uint64(2654435761) + offset) % np.uint64(2**32)
    u = h.astype(np.float64) / 2**32
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "weight" and len(shape) >= 2 and "embed" in name:
        v = (2 * u - 1) * 1.7
    elif leaf == "weight" and len(shape) >= 2:
        v = (2 * u - 1) / np.sqrt(np.prod(shape[1:]))
    elif leaf in ("weight", "running_var"):
        v = 0.5 + u
    else:
        v = (2 * u - 1) * 0.2
    return v.reshape(shape)


def reference_state_dict(net: str) -> dict[str, np.ndarray]:
    return {k: recipe_tensor(k, m["shape"]).astype(np.float32) for k, m in META[net].items()}


@pytest.mark.parametrize("net", sorted(META))
def test_recipe_matches_fixture_checksums(net):
    for key, m in META[net].items():
        v = recipe_tensor(key, m["shape"]).astype(np.float32).astype(np.float64)  # as stored
        assert v.sum() == pytest.approx(m["sum"], rel=1e-9, abs=1e-9), key
        assert (v**2).sum() == pytest.approx(m["sumsq"], rel=1e-9), key


@pytest.mark.parametrize("net", sorted(META))
def test_outputs_match_official_networks(net):
    model = create_model(net, num_classes=10, rngs=nnx.Rngs(0), stem=STEMS[net])
    load_torch_weights(model, reference_state_dict(net))
    images = jnp.asarray(np.transpose(FIXTURES["images_nchw"], (0, 2, 3, 1)))  # NCHW -> NHWC
    ref = FIXTURES[f"{net}/logits"]
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    if net.startswith("didirn"):
        x_t, sigma = jnp.asarray(FIXTURES["x_t"]), jnp.asarray(FIXTURES["sigma"])
        raw = model.logits(images, x_t, sigma, train=False)
        np.testing.assert_allclose(np.asarray(raw), ref, atol=tol, rtol=0)
        log_score = ref.copy()
        log_score[np.arange(4), FIXTURES["x_t"]] = 0.0
        np.testing.assert_allclose(np.asarray(model(images, x_t, sigma, train=False)), log_score,
                                   atol=tol, rtol=0)  # fmt: skip
    else:
        np.testing.assert_allclose(np.asarray(model(images, train=False)), ref, atol=tol, rtol=0)


@pytest.mark.parametrize("net", ["didirn18", "resnet50"])
def test_export_then_import_is_identity(net):
    src = create_model(net, num_classes=10, rngs=nnx.Rngs(1), width=16, stem=STEMS[net])
    # Non-trivial batch statistics.
    src(jnp.ones((2, 16, 16, 3)), train=True) if net.startswith("resnet") else src(
        jnp.ones((2, 16, 16, 3)), jnp.array([1, 2]), jnp.array([0.1, 1.0]), train=True
    )
    sd = export_torch_state_dict(src)
    assert all(not k.startswith("stem") for k in sd)
    dst = create_model(net, num_classes=10, rngs=nnx.Rngs(2), width=16, stem=STEMS[net])
    load_torch_weights(dst, sd)
    for a, b in zip(
        jax.tree.leaves(nnx.state(src, nnx.Any(nnx.Param, nnx.BatchStat))),
        jax.tree.leaves(nnx.state(dst, nnx.Any(nnx.Param, nnx.BatchStat))),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_export_matches_official_names():
    model = create_model("didirn50", num_classes=10, rngs=nnx.Rngs(0))
    sd = export_torch_state_dict(model)
    assert {k: list(v.shape) for k, v in sd.items()} == {
        k: m["shape"] for k, m in META["didirn50"].items()
    }


def test_mismatch_errors_list_everything_and_write_nothing():
    sd = reference_state_dict("didirn18")
    model = create_model("didirn18", num_classes=10, rngs=nnx.Rngs(0))
    before = np.asarray(model.fc.kernel[...]).copy()
    # Another K: every class-sized tensor is a shape mismatch.
    wrong_k = create_model("didirn18", num_classes=7, rngs=nnx.Rngs(0))
    with pytest.raises(
        StateDictMismatch, match=r"shape mismatch \(3\): fc.bias.*fc.weight.*label_embedder"
    ):
        load_torch_weights(wrong_k, sd)
    # Another depth: missing and unexpected keys.
    deeper = create_model("didirn34", num_classes=10, rngs=nnx.Rngs(0))
    with pytest.raises(StateDictMismatch, match=r"missing \(\d+\): .*layer1.2.conv1.weight"):
        load_torch_weights(deeper, sd)
    # A ResNet checkpoint into a DiDiRN: unexpected downsample keys, missing conditioning.
    resnet_sd = reference_state_dict("resnet18")
    with pytest.raises(StateDictMismatch, match=r"unexpected \(\d+\): .*downsample"):
        load_torch_weights(model, resnet_sd)
    # Another stem: the 7x7 conv does not fit the 3x3 one.
    with pytest.raises(StateDictMismatch, match=r"conv1.weight: checkpoint \(64, 3, 7, 7\)"):
        load_torch_weights(create_model("resnet18", num_classes=10, rngs=nnx.Rngs(0),
                                        stem="reference"), resnet_sd)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(model.fc.kernel[...]), before)
    # Non-strict loading ignores missing/unexpected keys but never a shape mismatch.
    partial = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    load_torch_weights(model, partial, strict=False)
    np.testing.assert_array_equal(np.asarray(model.fc.kernel[...]), before)


def test_convert_imports_a_run_that_reproduces_the_official_outputs(tmp_path):
    """`python -m didiff_jax.convert` path: .npz -> workdir -> restored model == reference logits."""
    from didiff_jax import convert

    npz = tmp_path / "didirn18.npz"
    np.savez(npz, **reference_state_dict("didirn18"))
    convert.main([str(npz), "--model", "didirn18", "--num-classes", "10", "--workdir",
                  str(tmp_path / "run")])  # fmt: skip
    config = convert.checkpoint.read_config(str(tmp_path / "run"))
    config.model.dtype = "float32"
    info = convert.placeholder_info(config, 10)
    graphdef, state, _, _ = restore_for_eval(config, str(tmp_path / "run"), info=info)
    model = nnx.merge(graphdef, state["params"], state["rest"])
    images = jnp.asarray(np.transpose(FIXTURES["images_nchw"], (0, 2, 3, 1)))
    raw = model.logits(
        images, jnp.asarray(FIXTURES["x_t"]), jnp.asarray(FIXTURES["sigma"]), train=False
    )
    ref = FIXTURES["didirn18/logits"]
    np.testing.assert_allclose(np.asarray(raw), ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
    # Export back: the same state dict.
    out = tmp_path / "back.npz"
    convert.main([str(out), "--export", "--workdir", str(tmp_path / "run")])
    with np.load(out) as back:
        for k, v in reference_state_dict("didirn18").items():
            np.testing.assert_array_equal(back[k], v)
    # A checkpoint of another K fails before anything is written.
    with pytest.raises(SystemExit, match="shape mismatch"):
        convert.main([str(npz), "--model", "didirn18", "--num-classes", "7", "--workdir",
                      str(tmp_path / "other")])  # fmt: skip
    assert not (tmp_path / "other").exists()


# ------------------------------------------------------------- reading .pth without running code

TORCH_PYTHON = os.environ.get("DIDIFF_TORCH_PYTHON") or str(REPO / ".venv-torch" / "bin" / "python")
needs_torch_python = pytest.mark.skipif(
    not pathlib.Path(TORCH_PYTHON).is_file(),
    reason="no Python with torch and timm (.venv-torch, or set DIDIFF_TORCH_PYTHON)",
)

# Runs in the torch environment: a checkpoint written by timm's CheckpointSaver, as the official
# DiDiCM train.py writes them (its argparse.Namespace of arguments, optimizer, EMA and AMP scaler
# states, saver bookkeeping), reads back through the restricted loader; a crafted one does not run.
PTH_SCRIPT = """
import argparse, os, pickle, sys
import torch
from timm import utils
from didiff_jax import torch_checkpoint

out = sys.argv[1]
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
model(torch.randn(2, 3, 8, 8)).square().mean().backward()
optimizer.step()
ema = utils.ModelEmaV3(model, decay=0.5)
with torch.no_grad():
    model[0].weight.add_(1.0)  # the EMA now differs from the model
try:
    scaler = utils.NativeScaler(device="cpu")
except TypeError:  # older timm
    scaler = utils.NativeScaler()
args = argparse.Namespace(model="didirn50", lr=None, opt_betas=None, model_kwargs={"stem": "x"},
                          mean=[0.5, 0.5, 0.5], input_size=(3, 224, 224), amp=True, epochs=600,
                          device="cpu", distributed=False, world_size=1)
saver = utils.CheckpointSaver(model=model, optimizer=optimizer, args=args, model_ema=ema,
                              amp_scaler=scaler, checkpoint_dir=out, recovery_dir=out,
                              decreasing=False, max_history=1)
saver.save_checkpoint(0, metric=0.5)
path = os.path.join(out, "last.pth.tar")
for ema_flag, source in ((False, model), (True, ema.module)):
    got = torch_checkpoint.read(path, ema=ema_flag)
    want = {k: v.numpy() for k, v in source.state_dict().items()}
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    assert all((got[k] == want[k]).all() for k in want), ema_flag
assert not (torch_checkpoint.read(path)["0.weight"] == torch_checkpoint.read(path, ema=True)["0.weight"]).all()
assert isinstance(torch_checkpoint.load(path)["args"], argparse.Namespace)

marker = os.path.join(out, "code-ran")
class Payload:
    def __reduce__(self):
        return (open, (marker, "w"))
evil = os.path.join(out, "evil.pth")
torch.save({"state_dict": model.state_dict(), "args": Payload()}, evil)
try:
    torch_checkpoint.read(evil)
    raise SystemExit("the crafted checkpoint was loaded")
except torch_checkpoint.UnsafeCheckpointError as e:
    print("REFUSED:", e)
assert not os.path.exists(marker), "the crafted checkpoint ran code"
torch_checkpoint.read(evil, unsafe_full_unpickle=True)
assert os.path.exists(marker)
print("OK")
"""


@needs_torch_python
def test_pth_files_load_weights_and_timm_metadata_but_run_no_code(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([TORCH_PYTHON, "-c", PTH_SCRIPT, str(tmp_path)], capture_output=True,
                         text=True, timeout=300, env=env, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0 and out.stdout.rstrip().endswith("OK"), out.stdout + out.stderr
    refused = next(line for line in out.stdout.splitlines() if line.startswith("REFUSED:"))
    assert f"{tmp_path / 'evil.pth'}: refused to unpickle io.open" in refused  # open is io.open
    assert "--unsafe-full-unpickle" in refused


def test_full_unpickling_is_opt_in_and_its_help_names_the_risk(capsys):
    from didiff_jax import convert

    with pytest.raises(SystemExit) as done:
        convert.main(["--help"])
    assert done.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--unsafe-full-unpickle" in help_text
    assert "can run arbitrary code on this machine" in help_text


def test_npz_state_dicts_are_read_without_pickle(tmp_path):
    from didiff_jax import convert

    path = tmp_path / "sd.npz"
    np.savez(path, weight=np.ones(3, np.float32), payload=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        convert.read_state_dict(str(path))
    np.savez(path, weight=np.ones(3, np.float32))
    np.testing.assert_array_equal(convert.read_state_dict(str(path))["weight"], np.ones(3))
