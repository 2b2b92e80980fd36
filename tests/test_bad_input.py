"""Bad input fails early with one line that names it (issue 27): the Fashion-MNIST directory, labels
out of range, config values that cannot run, batches that do not divide over the devices, and the
entry point's usage errors (one line on stderr, status 2, no workdir written; a bug in a config file
still shows its traceback).

Everything here runs without the real data set: the IDX files are written by the tests."""

import gzip
import math
import os
import pathlib
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from configs import common, fashion_mnist_resnet
from didiff_jax import checks, preflight, train
from didiff_jax.data import fashion_mnist, pipeline
from didiff_jax.state import total_steps

REPO = pathlib.Path(__file__).resolve().parents[1]
NAMES = [name for pair in fashion_mnist.FILES.values() for name in pair]


def write_idx(path: pathlib.Path, array: np.ndarray) -> None:
    """``array`` (uint8) as an IDX file; gzipped when ``path`` ends in ``.gz``."""
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def fake_fashion_dir(root: pathlib.Path, *, seed: int, n: int = 6, labels=None,
                     skip: str | None = None) -> pathlib.Path:  # fmt: skip
    """Four IDX files of ``n`` random 28 x 28 images (train and test) in ``root``, gzipped for
    train, plain for test; ``skip`` leaves that file out, ``labels`` replaces the test labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for split, (images_name, labels_name) in fashion_mnist.FILES.items():
        suffix = ".gz" if split == "train" else ""
        split_labels = rng.integers(0, 10, n) if labels is None or split == "train" else labels
        for name, array in ((images_name, rng.integers(0, 256, (n, 28, 28))),
                            (labels_name, split_labels)):  # fmt: skip
            if name != skip:
                write_idx(root / f"{name}{suffix}", array)
    return root


@pytest.fixture
def system_copies(tmp_path, monkeypatch):
    """A complete "system" Fashion-MNIST (the Debian directory) and a complete
    ``$DIDIFF_FASHION_MNIST`` directory, both different from the user's files: a test that reads
    either of them instead of the user's directory sees other arrays (or no error)."""
    debian = fake_fashion_dir(tmp_path / "debian", seed=100)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(debian))
    monkeypatch.delenv("DIDIFF_FASHION_MNIST", raising=False)
    return debian


# -------------------------------------------------------------------- case 1: the data directory


def test_user_data_dir_is_the_only_place_read(tmp_path, monkeypatch, system_copies):
    with pytest.raises(checks.MissingInputError,
                       match=r"^data\.data_dir=/no/such/dir: no such directory \(expected the "
                             r"four Fashion-MNIST IDX files"):  # fmt: skip
        fashion_mnist.load("train", "/no/such/dir")
    # One file missing: named, for either split (nothing is filled in from the system copy).
    partial = fake_fashion_dir(tmp_path / "partial", seed=1, skip="t10k-labels-idx1-ubyte")
    for split in ("train", "test"):
        with pytest.raises(checks.MissingInputError,
                           match=rf"^data\.data_dir={partial} has no t10k-labels-idx1-ubyte or "
                                 r"t10k-labels-idx1-ubyte\.gz"):  # fmt: skip
            fashion_mnist.load(split, str(partial))
    # A complete user directory: exactly its arrays.
    user = fake_fashion_dir(tmp_path / "user", seed=2)
    images, labels = fashion_mnist.load("test", str(user))
    want = fashion_mnist._read_idx(user / "t10k-images-idx3-ubyte")
    np.testing.assert_array_equal(images[..., 0], want)
    assert images.shape == (6, 28, 28, 1) and labels.dtype == np.int32
    # '' = the default: $DIDIFF_FASHION_MNIST when set (and then only it), else the system copy.
    system = fashion_mnist._read_idx(system_copies / "t10k-images-idx3-ubyte")
    np.testing.assert_array_equal(fashion_mnist.load("test", "")[0][..., 0], system)
    monkeypatch.setenv("DIDIFF_FASHION_MNIST", str(user))
    np.testing.assert_array_equal(fashion_mnist.load("test", "")[0][..., 0], want)
    monkeypatch.setenv("DIDIFF_FASHION_MNIST", str(tmp_path / "gone"))
    with pytest.raises(checks.MissingInputError,
                       match=r"^\$DIDIFF_FASHION_MNIST=.*gone: no such directory"):  # fmt: skip
        fashion_mnist.load("train", "")


def test_idx_files_that_do_not_pair_up_are_rejected(tmp_path, system_copies):
    user = fake_fashion_dir(tmp_path / "user", seed=3)
    write_idx(user / "t10k-labels-idx1-ubyte", np.zeros(5))  # 6 images, 5 labels
    with pytest.raises(checks.InputError, match=r"disagree: 6 images, 5 labels"):
        fashion_mnist.load("test", str(user))
    write_idx(user / "t10k-labels-idx1-ubyte", np.zeros((6, 1)))
    with pytest.raises(checks.InputError, match=r"expected labels N, the header says \(6, 1\)"):
        fashion_mnist.check(str(user))
    labels = user / "t10k-labels-idx1-ubyte"
    labels.write_bytes(bytes([0, 0, 8, 1]) + (6).to_bytes(4, "big") + bytes(4))
    with pytest.raises(checks.InputError, match=r"is truncated: header says \(6,\), found 4 bytes"):
        fashion_mnist.load("test", str(user))
    labels.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(checks.InputError, match=r"is not an unsigned-byte IDX file \(bad magic"):
        fashion_mnist.load("test", str(user))


# ------------------------------------------------------------------ case 2: labels out of range


def test_labels_outside_the_classes_fail_at_load_naming_file_value_and_range(tmp_path,
                                                                             system_copies):  # fmt: skip
    user = fake_fashion_dir(tmp_path / "user", seed=4, labels=[0, 3, 9, 12, 1, 200])
    label_file = user / "t10k-labels-idx1-ubyte"
    message = (rf"^{label_file}: label 12 at index 3 is outside the valid range \[0, 10\) "
               r"\(2 of 6 labels out of range\)$")  # fmt: skip
    with pytest.raises(checks.InputError, match=message):
        fashion_mnist.load("test", str(user))
    fashion_mnist.load("train", str(user))  # the train split itself is fine...
    with pytest.raises(checks.InputError, match=message):  # ...but the pre-run check covers both
        fashion_mnist.check(str(user))
    cfg = ml_collections.ConfigDict(common.fashion_mnist_data(data_dir=str(user)))
    with pytest.raises(checks.InputError, match=message):
        pipeline.check_data(cfg)
    pipeline.check_data(cfg, ("train",))


@pytest.mark.parametrize("bad", [[0, 1, 3], [0, -1, 2]])
def test_sources_with_labels_outside_the_classes_give_no_batches(bad):
    cfg = ml_collections.ConfigDict(common.fashion_mnist_data(num_threads=1))
    info = pipeline.DataInfo(3, ("a", "b", "c"), (28, 28, 1), (0.5,), (0.5,))
    source = pipeline.ArraySource(np.zeros((3, 28, 28, 1), np.uint8), np.array(bad, np.int32))
    value = [v for v in bad if not 0 <= v < 3][0]
    message = rf"'train' source \(ArraySource\): label {value} at index \d is outside .*\[0, 3\)"
    with pytest.raises(checks.InputError, match=message):
        pipeline.train_dataset(cfg, info, global_batch_size=2, seed=0, source=source)
    with pytest.raises(checks.InputError, match=message.replace("train", "test")):
        pipeline.eval_dataset(cfg, info, split="test", global_batch_size=2, source=source)
    good = pipeline.ArraySource(source.images, np.array([0, 1, 2], np.int32))
    batch = next(iter(pipeline.eval_dataset(cfg, info, split="test", global_batch_size=2,
                                            source=good)))  # fmt: skip
    np.testing.assert_array_equal(batch["label"], [0, 1])


# ------------------------------------------------------------ cases 3 and 4: config values


def smoke(**overrides) -> ml_collections.ConfigDict:
    config = fashion_mnist_resnet.get_config("smoke")
    config.update_from_flattened_dict(overrides)
    return config


@pytest.mark.parametrize(
    "overrides,devices,message",
    [
        ({"num_steps": -3}, 1, r"^config\.num_steps=-3: expected an integer >= 0 \(0 = train for "
                               r"config\.num_epochs\)$"),
        ({"num_steps": 0, "num_epochs": 0.0}, 1, r"config\.num_epochs=0\.0: expected a number > 0"),
        ({"num_epochs": -1.0}, 1, r"config\.num_epochs=-1\.0: expected a number > 0"),
        ({"num_steps": 0, "num_epochs": math.nan}, 1, r"config\.num_epochs=nan"),
        ({"batch_size": 0}, 1, r"^config\.batch_size=0: expected an integer >= 1$"),
        ({"batch_size": -16}, 1, r"config\.batch_size=-16: expected an integer >= 1"),
        ({"log_every_steps": 0}, 1, r"config\.log_every_steps=0: expected an integer >= 1"),
        ({"checkpoint_every_steps": 0}, 1, r"config\.checkpoint_every_steps=0"),
        ({"keep_checkpoints": 0}, 1, r"config\.keep_checkpoints=0: expected an integer >= 1"),
        ({"data.train_ratio": 0.0}, 1, r"config\.data\.train_ratio=0\.0: expected a fraction"),
        ({"batch_size": 12}, 8, r"^config\.batch_size=12 does not divide over the 8 devices .*: "
                                r"use a multiple of 8, e\.g\. 16 or 8$"),
        ({"eval.batch_size": 500}, 8, r"^config\.eval\.batch_size=500 does not divide over the 8 "
                                      r"devices .*e\.g\. 504 or 496$"),
        ({"mesh.fsdp": 3}, 8, r"config\.mesh=\(data=-1, fsdp=3\) does not cover the 8 devices"),
        ({"objective.name": "didcm"}, 1, r"config\.objective\.name='didcm': expected one of"),
        ({"model.name": "resnet19"}, 1, r"config\.model\.name='resnet19': expected one of"),
        ({"data.corruption.kind": "fog"}, 1, r"config\.data\.corruption\.kind='fog'"),
        ({"eval.corruptions": ("snow",)}, 1, r"config\.eval\.corruptions has 'snow'"),
        ({"eval.severities": (0,)}, 1, r"config\.eval\.severities has 0: expected integers in 1\.\.5"),
    ],
)  # fmt: skip
def test_configs_that_cannot_run_are_rejected_in_one_line(overrides, devices, message):
    with pytest.raises(checks.InputError, match=message) as error:
        preflight.check_config(smoke(**overrides), mode="train", device_count=devices)
    assert "\n" not in str(error.value)


def test_a_sampler_that_does_not_fit_the_objective_is_rejected():
    config = smoke()
    config.eval.samplers = [{"name": "cp", "steps": (2,)}]  # a DiDiCM sampler on a classifier
    with pytest.raises(checks.InputError, match=r"samplers\[0\]\.name='cp' does not fit objective "
                                                r"'classifier'"):  # fmt: skip
        preflight.check_config(config, mode="eval", device_count=1)


def test_what_the_config_check_lets_through():
    preflight.check_config(smoke(), mode="train", device_count=8, process_count=2)
    # No evaluation after training: the evaluation batch is not constrained by the devices.
    preflight.check_config(smoke(**{"eval.batch_size": 500, "eval.after_train": False}),
                        mode="train", device_count=8)  # fmt: skip
    # Prediction pads its chunks to the devices itself.
    preflight.check_config(smoke(**{"eval.batch_size": 500}), mode="predict", device_count=8)
    # Evaluating a run does not look at the training fields.
    preflight.check_config(smoke(num_steps=-3), mode="eval", device_count=1)
    with pytest.raises(checks.InputError, match="divide over the 2 processes"):
        preflight.check_config(smoke(batch_size=3), mode="train", device_count=1, process_count=2)


def test_num_steps_zero_means_train_for_num_epochs():
    config = smoke(num_steps=0, num_epochs=2.0, batch_size=16)
    preflight.check_config(config, mode="train", device_count=1)
    assert total_steps(config, train_size=100) == math.ceil(2.0 * 100 / 16) == 13
    config.num_steps = 5
    assert total_steps(config, train_size=100) == 5


def test_train_itself_rejects_negative_steps_before_writing(tmp_path):
    with pytest.raises(checks.InputError, match=r"config\.num_steps=-3"):
        train.train(smoke(num_steps=-3), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------- case 5: the entry point's errors


def main(*args: str, config: str = "configs/fashion_mnist_resnet.py:smoke", workdir=None,
         env: dict | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    cmd = [sys.executable, "-m", "didiff_jax.main", "--config", config, *args]
    if workdir is not None:
        cmd += ["--workdir", str(workdir)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})  # fmt: skip


@pytest.mark.parametrize(
    "args,config,message",
    [
        (["--config.batch_size=abc"], None,
         r"--config\.batch_size=abc: invalid literal for int\(\) with base 10: 'abc'; expected int "
         r"\(the config has 16\)"),
        ([], "configs/fashion_mnist_resnet.py:nosuchvariant",
         r"--config=configs/fashion_mnist_resnet\.py:nosuchvariant: unknown variant 'nosuchvariant'; "
         r"known: blur, heldout, lowres, noise, ratio, reference, smoke, uncertainty$"),
        ([], "configs/nosuch.py", r"no such config file 'configs/nosuch\.py'"),
        (["--mode=fit"], None, r"flag --mode=fit: value should be one of <train\|eval\|predict>"),
        (["--config.optimizer.lrr=0.1"], None,
         r"the config has no key 'optimizer\.lrr'\. Did you mean --config\.optimizer\.lr\?"),
        (["--config.num_steps=-3"], None, r"config\.num_steps=-3: expected an integer >= 0"),
        (["--config.data.data_dir=/no/such/dir"], None,
         r"data\.data_dir=/no/such/dir: no such directory"),
        # The tests' 8 fake CPU devices (XLA_FLAGS, inherited by the subprocess).
        (["--config.batch_size=12"], None, r"config\.batch_size=12 does not divide over the 8 devices"),
        (["stray.png"], None, r"unexpected arguments \['stray\.png'\]"),
        (["--mode=eval"], None, r"does not exist; expected a run directory"),
    ],
)  # fmt: skip
def test_main_usage_errors_are_one_line_with_status_2_and_write_nothing(tmp_path, args, config,
                                                                        message):  # fmt: skip
    workdir = tmp_path / "run"
    out = main(*args, config=config or "configs/fashion_mnist_resnet.py:smoke", workdir=workdir)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not workdir.exists()


def test_a_bug_in_a_config_file_keeps_its_traceback(tmp_path):
    """Only usage errors are shortened: an exception that is not the config's way of refusing an
    argument (ValueError, KeyError) is a bug and shows where it is."""
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(arg=None):\n    return undefined_name\n")
    out = main(config=str(broken), workdir=tmp_path / "run")
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "NameError: name 'undefined_name'" in out.stderr
    assert f'File "{broken}", line 2' in out.stderr
