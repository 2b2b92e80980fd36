"""The uncertainty benchmark (``:uncertainty``) end to end on small step-0 runs: every figure it
writes, mCE against the paired baseline, the corrupted-set cache, and its input checks."""

import json
import shutil

import numpy as np
import pytest

from configs import fashion_mnist_didirn, fashion_mnist_resnet
from didiff_jax import main, preflight, uncertainty_stats
from didiff_jax.checks import InputError
from didiff_jax.data import corruptions_c

pytest.importorskip("imagecorruptions")

CORRUPTIONS = ("gaussian_noise", "contrast")


def _config(cache_dir, baselines=()):
    config = fashion_mnist_didirn.get_config("smoke,uncertainty")
    config.eval.uncertainty.update(corruptions=CORRUPTIONS, severities=(1, 5), num_samples=3,
                                   cache_dir=str(cache_dir))  # fmt: skip
    config.eval.baselines = list(baselines)
    config.eval.corruptions = ()
    return config


def test_the_benchmark_writes_every_figure_and_mce_against_the_baseline(smoke_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(smoke_run("fashion_mnist_didirn", trained=False), workdir)
    baseline = smoke_run("fashion_mnist_resnet", trained=False)
    cache = tmp_path / "cache"
    main.evaluate_run(_config(cache, [baseline]), str(workdir))

    saved = json.loads((workdir / "eval_results.json").read_text())
    assert saved["records"]  # the classification evaluation's records stay
    u = saved["uncertainty"]
    (base,) = u["baselines"]
    for result in (u, base):
        assert {k: len(v) for k, v in result["corruptions"]["top1"].items()} == {
            c: 2 for c in CORRUPTIONS
        }
        assert set(result["ood"]) == set(corruptions_c.OOD_SETS)
        for scores in result["ood"].values():
            assert set(scores) == {"max_probability", "entropy", "disagreement",
                                   "mutual_information"}  # fmt: skip
            assert all(0.0 <= m["auroc"] <= 1.0 for m in scores.values())
        assert 0.0 <= result["selective"]["aurc"] <= 1.0
    # The temperature is fitted on the run's held-out training images; the baseline's run held
    # none out, so it gets none (fitting on images it trained on would flatter it).
    assert u["calibration"]["temperature"] > 0 and u["calibration"]["after"]
    assert base["calibration"]["temperature"] is None and base["calibration"]["after"] is None
    errors = {c: [1 - a for a in v] for c, v in u["corruptions"]["top1"].items()}
    base_errors = {c: [1 - a for a in v] for c, v in base["corruptions"]["top1"].items()}
    assert u["corruptions"]["baseline"] == baseline
    assert u["corruptions"]["mce"] == pytest.approx(
        uncertainty_stats.mean_corruption_error(errors, base_errors)
    )
    # DiDiCM's draws are CL chains; a classifier's draws under other keys all agree.
    assert u["samples"]["sampler"] == "cl-euler-n3"
    assert base["samples"]["disagreement"] == 0 and base["samples"]["mutual_information"] == 0
    assert base["samples"]["card_uncertain_fraction"] == 0
    # One cached set per corruption and severity, shared by both runs (the same test images).
    assert len(list(cache.glob("*.npy"))) == len(CORRUPTIONS) * 2
    for name in ("risk_coverage", "corruptions", "roc_noise", "roc_inverted", "roc_flipped"):
        assert (workdir / "plots" / f"{name}.png").stat().st_size > 0


def test_a_run_on_five_classes_has_the_other_five_as_an_ood_set(smoke_run, tmp_path):
    """``:heldout``: trained on classes 0-4, the other classes' test images are OOD."""
    workdir = tmp_path / "run"
    classes = {"data.classes": (0, 1, 2, 3, 4)}
    shutil.copytree(smoke_run("fashion_mnist_resnet", trained=False, **classes), workdir)
    config = fashion_mnist_resnet.get_config("smoke,uncertainty,heldout")
    config.eval.uncertainty.update(corruptions=CORRUPTIONS[:1], severities=(1,),
                                   cache_dir=str(tmp_path / "cache"))  # fmt: skip
    config.eval.corruptions = ()
    main.evaluate_run(config, str(workdir))
    u = json.loads((workdir / "eval_results.json").read_text())["uncertainty"]
    assert set(u["ood"]) == {*corruptions_c.OOD_SETS, "heldout"}
    assert 0.0 <= u["ood"]["heldout"]["max_probability"]["auroc"] <= 1.0


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("eval.uncertainty.corruptions", ("gaussian_noise", "fogg"), "fogg"),
        ("eval.uncertainty.ood", ("noise", "rotated"), "rotated"),
        ("eval.uncertainty.severities", (0, 1), "severities has 0"),
        ("eval.uncertainty.max_examples", 0, "max_examples=0"),
        ("data.holdout", -1, "holdout=-1"),
        ("data.classes", (3, 3), "classes=\\(3, 3\\)"),
        ("data.classes", (4, 10), "0..9"),
    ],
)
def test_bad_uncertainty_settings_fail_before_training(key, value, match, tmp_path):
    config = _config(tmp_path)
    config.update_from_flattened_dict({key: value})
    with pytest.raises(InputError, match=match):
        preflight.check_config(config, mode="train", device_count=1)


def test_the_benchmark_needs_one_process(tmp_path):
    with pytest.raises(InputError, match="one process"):
        preflight.check_config(_config(tmp_path), mode="train", device_count=2, process_count=2)


def test_ood_sets_keep_shape_and_range():
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    for kind in corruptions_c.OOD_SETS:
        out = corruptions_c.ood_images(images, kind, seed=1)
        assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(corruptions_c.ood_images(images, "inverted"), 255 - images)
    np.testing.assert_array_equal(corruptions_c.ood_images(images, "flipped")[:, 0], images[:, -1])


def test_the_docs_table_is_made_from_the_archived_results():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "uncertainty_table.py"
    spec = importlib.util.spec_from_file_location("uncertainty_table", path)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    archived = sorted(table.ARCHIVE.glob("*.json"))
    assert archived, "benchmarks/results/uncertainty/ holds the docs' results"
    result = json.loads(archived[0].read_text())
    run, baseline = table.rows(result, "a")
    assert run["mCE"] == result["corruptions"]["mce"] and baseline["mCE"] == 1.0
    assert run["seed"] == result["train_seed"] and run["pair"] == baseline["pair"] == run["model"]
    # Two more seeds, made from the first by moving the run's AURC: mean, sd and paired wins.
    seeds = []
    for seed, shift in ((0, 0.0), (1, -0.01), (2, -0.5)):
        r, b = ({**x, "seed": seed} for x in (run, baseline))
        r["AURC"] = baseline["AURC"] + shift
        seeds += [r, b]
    text = table.summary_markdown(seeds)
    aurc = [baseline["AURC"] + s for s in (0.0, -0.01, -0.5)]
    want = f"{100 * np.mean(aurc):.2f} ± {100 * np.std(aurc, ddof=1):.2f}"
    assert f"| AURC | {want} |" in text and "3 seeds" in text
    diffs, wins = table.paired(seeds)[run["pair"]]["AURC"]
    np.testing.assert_allclose(diffs, [0.0, -0.01, -0.5], atol=1e-12)
    assert wins == 2  # lower is better: not the tie
    assert "(2/3)" in table.paired_markdown(seeds).split("| AURC |")[1].split("\n")[0]
    per_seed = table.per_seed_markdown(seeds)
    assert per_seed.count("\n") == len(table._spec(seeds)) + 1  # a header, a rule, a row each
