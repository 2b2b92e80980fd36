"""The benchmark drivers as command lines: the robustness study's selection and the command its
report names, the throughput script's tables (projections per GPU, a killed run's rows) and the
official-speed table. The library they drive (``didiff_jax.study``) is tested in ``test_study.py``;
the drivers' long runs themselves are not tests; one end-to-end smoke run of the study driver is
marked slow."""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys

import jax
import pytest

from didiff_jax.study.grid import GRIDS, report_grid
from didiff_jax.study.roofline import GPUS, roofline

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name: str):
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rb():
    return _load("robustness")


@pytest.fixture(scope="module")
def tp():
    return _load("throughput")


# ------------------------------------------------------------------------------ robustness


def test_a_subset_run_reports_the_whole_grid_and_its_own_runs(rb):
    argv = ["--pairs", "didirn-resnet", "--seeds", "1", "--conditions", "ratio0.01",
            "--time-budget-min", "45"]  # fmt: skip
    args = argparse.Namespace(quick=False, smoke=False, pairs=["didirn-resnet"], seeds=[1],
                              conditions=["ratio0.01"], epochs=None, eval_examples=None,
                              out=None, archive=None, results=None)  # fmt: skip
    grid = rb.grid_from_args(args)
    assert grid.seeds == (1,) and grid.pairs == ("didirn-resnet",)  # what this invocation runs
    report = report_grid(grid)  # what its report shows: all of the full grid
    assert report == GRIDS["full"]
    assert rb.report_command(args) == "python benchmarks/robustness.py"
    assert not any(a in rb.report_command(args) for a in argv)
    # a selection beyond the named grid joins it, in the grid's own order
    smoke = rb.grid_from_args(argparse.Namespace(**{**vars(args), "smoke": True, "seeds": [3],
                                                    "conditions": ["ratio0.1", "clean"]}))  # fmt: skip
    joined = report_grid(smoke)
    assert joined.conditions == ("clean", "noise3", "ratio0.1") and joined.seeds == (0, 3)
    assert joined.pairs == GRIDS["smoke"].pairs and joined.eval_examples == 32
    quick = argparse.Namespace(**{**vars(args), "quick": True, "epochs": 2.0})
    assert rb.report_command(quick) == "python benchmarks/robustness.py --quick --epochs 2"


# ------------------------------------------------------------------------------- throughput


def test_projection_tables_name_each_rows_gpu_and_its_bound(tp, tmp_path):
    def row(gpu, flops, nbytes):
        g = GPUS[gpu]
        r = {"part": "project", "what": "step", "batch": 64, "gpu": gpu,
             **roofline(flops, nbytes, peak_flops=g["peak_flops"], bandwidth=g["bandwidth"])}  # fmt: skip
        r["images_per_s_bound"] = r["batch"] / r["bound_s"]
        return r

    legacy = row("h100", 1e12, 1e10)
    del legacy["gpu"]  # rows written before --gpu existed were made for the H100
    h200 = row("h200", 1e12, 1e10)
    # the same bytes move faster over the H200's HBM3e: a lower memory term, a higher bound
    assert h200["memory_s"] == pytest.approx(legacy["memory_s"] * 3.35 / 4.8)
    assert h200["images_per_s_bound"] > legacy["images_per_s_bound"]
    files = []
    for i, rows in enumerate(([legacy], [h200])):
        files.append(tmp_path / f"run{i}.json")
        files[-1].write_text(json.dumps({"machine": f"machine {i}", "command": f"cmd {i}",
                                         "wall_s": 60.0, "rows": rows}))  # fmt: skip
    results = tmp_path / "results.md"
    tp.main(["--from-json", *map(str, files), "--write-results", str(results)])
    text = results.read_text()
    assert "<!-- speed:full:begin -->" in text  # not every run was --quick
    assert text.index("machine 0") < text.index("cmd 0") < text.index("machine 1")
    h100_at, h200_at = (
        text.index("PROJECTION for NVIDIA H100"),
        text.index("PROJECTION for NVIDIA H200"),
    )
    assert h100_at < h200_at
    assert f"{h200['images_per_s_bound']:,.0f}" in text[h200_at:]


def test_a_killed_run_keeps_the_rows_it_measured(tp, tmp_path, monkeypatch):
    def grid(args):
        yield {"part": "train", "model": "didirn18", "stem": "reference", "size": 64,
               "dtype": "float32", "batch": 32, "footprint_bytes": 2**30, "xla_flops": 32e9,
               "status": "ok", "examples_per_s": 4.0, "examples_per_cpu_s": 2.0}  # fmt: skip
        raise KeyboardInterrupt  # killed while measuring the second row

    monkeypatch.setattr(tp, "train_grid", grid)
    path = tmp_path / "train.json"
    with pytest.raises(KeyboardInterrupt):
        tp.main(["--parts", "train", "--json", str(path)])
    saved = json.loads(path.read_text())
    assert not saved["complete"] and [r["batch"] for r in saved["rows"]] == [32]
    results = tmp_path / "results.md"
    tp.main(["--from-json", str(path), "--write-results", str(results)])
    text = results.read_text()
    assert "STOPPED after" in text and "| didirn18 | reference | 64 | float32 | 32 | 4.0 |" in text


# ------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_study_driver_end_to_end_at_smoke_size(rb, tmp_path):
    out, results = tmp_path / "study", tmp_path / "report.md"
    argv = ["--smoke", "--pairs", "didirn-resnet", "--conditions", "clean", "ratio0.1",
            "--out", str(out), "--results", str(results)]  # fmt: skip
    rb.main(argv)
    summary = json.loads((out / "summary.json").read_text())
    ran = {(e["pair"], e["condition"]) for e in summary["headline"] if "gain_top1" in e}
    assert ran == {("didirn-resnet", "clean"), ("didirn-resnet", "ratio0.1")}  # the rest: not run
    stamp = (out / "didirn-resnet/clean/fashion_mnist_didirn_seed0/eval_results.json").stat()
    rb.main(argv)  # everything is done: nothing reruns
    assert (
        out / "didirn-resnet/clean/fashion_mnist_didirn_seed0/eval_results.json"
    ).stat() == stamp
    # the report covers the smoke grid (2 pairs x clean, noise3) and the selected ratio0.1 too
    assert "4 of 12 runs done" in results.read_text()


def test_official_speed_table_and_missing_anchors(tmp_path):
    """The side-by-side table gives the ratio official time / didiff_jax time; a wrong anchors
    folder is named before anything compiles."""
    bench = _load("official_speed")
    rows = [{"part": "train", "setting": "width64", "batch": 128, "project_per_s": 150.0,
             "official_per_s": 100.0, "ratio": 1.5}]  # fmt: skip
    meta = {"cpu": "AMD EPYC, 2 cores, AVX-512", "threads": 2, "jax": "0.12", "torch": "2.14",
            "rounds": 3, "date": "2026-12-03"}  # fmt: skip
    table = bench.markdown(rows, meta)
    assert "| train (examples) | width64 | 128 | 150.0 | 100.0 | **1.50x** |" in table
    assert table.startswith("AMD EPYC, 2 cores, AVX-512; 2 threads")
    with pytest.raises(SystemExit, match="no official_step_speed.py"):
        bench.main(["--anchors", str(tmp_path)])


def test_throughput_builds_the_library_programs_it_times(tp):
    """The benchmark's entry points into the library (models, train state, train step) as they
    are now: built and lowered, not run (the benchmark's numbers are its own)."""
    nets = tp.study_networks(10)
    assert set(nets) == {"didicm", "add"}
    config, info = nets["didicm"][1], nets["didicm"][2]
    config.model.width = 8
    step, init, batch = tp.train_step_program(config, info, 4, abstract=True)
    assert callable(init) and step.lower(jax.eval_shape(init), batch) is not None
