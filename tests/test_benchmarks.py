"""The benchmark drivers' own logic, on synthetic runs: the robustness study's grid (conditions,
same budget within a pair), its skip/resume rules, the summary and report it writes, and the
throughput script's roofline projection. The drivers' long runs themselves are not tests; one
end-to-end smoke run of the study driver is marked slow."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


# ------------------------------------------------------------------------------- the grid


def test_lowres_conditions_are_exactly_14_and_7_px(rb):
    from didiff_jax.data import corruptions

    image = np.random.default_rng(0).uniform(size=(28, 28, 1)).astype(np.float32)
    for name, px in (("lowres14", 14), ("lowres7", 7)):
        cond = rb.CONDITIONS[name]
        got = corruptions.corrupt(image, cond.kind, cond.severity, np.random.default_rng(1))
        np.testing.assert_array_equal(got, corruptions.downsample_to(image, px))
        assert cond.variant == f"lowres={cond.severity}"


@pytest.mark.parametrize("grid_name", ["full", "quick"])
@pytest.mark.parametrize("condition", ["clean", "noise3", "lowres7", "ratio0.01"])
def test_a_pair_gets_the_same_budget_and_test_condition(rb, grid_name, condition):
    from didiff_jax import evaluate

    grid = rb.GRIDS[grid_name]
    cond = rb.CONDITIONS[condition]
    for pair in rb.PAIRS:
        d, b = (rb.build_config(rb.Cell(pair, role, condition, 2), grid)
                for role in ("diffusion", "baseline"))  # fmt: skip
        epochs = grid.epochs if grid.epochs is not None else rb.pair_epochs(pair)
        assert d.num_steps == b.num_steps == math.ceil(epochs * 60_000 / d.batch_size)
        assert d.batch_size == b.batch_size
        assert d.data.to_dict() == b.data.to_dict()  # same images, augmentation, observation
        assert d.optimizer.to_dict() == b.optimizer.to_dict()
        assert d.ema_decay == b.ema_decay and d.seed == b.seed == 2
        if pair == "didirn-resnet":  # the compute-matched bodies
            assert (d.model.width, d.model.stem) == (b.model.width, b.model.stem)
        for c in (d, b):  # trained and tested under the condition, and only under it
            assert evaluate.conditions(c) == [(cond.kind, cond.severity)]
            if cond.kind != "clean":
                assert (c.data.corruption.kind, c.data.corruption.severity) == (
                    cond.kind,
                    cond.severity,
                )
            assert c.data.train_ratio == (0.01 if condition == "ratio0.01" else 1.0)
            assert c.data.ratio_seed == 2
            assert c.eval.max_examples == grid.eval_examples
        assert [s["name"] for s in b.eval.samplers] == ["classifier"]


# --------------------------------------------------------------------------- synthetic runs

TRUTH = {  # (condition, seed) -> (baseline top-1, diffusion top-1 at the headline sampler)
    ("clean", 0): (0.80, 0.82),
    ("clean", 1): (0.78, 0.81),
    ("noise3", 0): (0.70, 0.75),
    ("noise3", 1): (0.71, 0.74),
    ("ratio0.1", 0): (0.60, 0.58),
    ("ratio0.1", 1): (0.62, 0.59),
}


def _reliability(top1: float) -> dict:
    counts = [0] * 13 + [30, 70]
    return {"count": counts, "bin_edges": list(np.linspace(0, 1, 16)),
            "confidence": [None] * 13 + [0.9, 0.97], "accuracy": [None] * 13 + [top1, top1]}  # fmt: skip


def fake_runner(rb, calls: list):
    """A runner that writes records like the real one, with top-1 from TRUTH (the headline
    sampler) and lower values for the other samplers and step counts."""
    from didiff_jax import evaluate

    def run(cell, config, workdir):
        calls.append(cell)
        kind, sev = ("clean", 0) if config.eval.clean else (config.eval.corruptions[0],
                                                            config.eval.severities[0])  # fmt: skip
        records = []
        for entry, steps in evaluate.sampler_runs(config):
            label = evaluate.sampler_label(entry)
            base, diff = TRUTH[(cell.condition, cell.seed)]
            top1 = base if cell.role == "baseline" else diff
            if label != rb.HEADLINE_SAMPLER[config.objective.name] or steps not in (None, 2):
                top1 -= 0.05 / (steps or 1)
            records.append({"model": config.model.name, "objective": config.objective.name,
                            "run": str(workdir), "sampler": label, "steps": steps,
                            "condition": kind, "severity": sev, "top1": top1,
                            "top5": min(1.0, top1 + 0.15), "nll": 1.0 - top1, "ece": 0.05,
                            "count": 100, "top1_per_step": [top1], "reliability": _reliability(top1)})  # fmt: skip
        (workdir / "eval_results.json").write_text(json.dumps({"records": records}))
        meta = {"train_s": 10.0, "eval_s": 5.0, "machine": "test machine", "command": "test"}
        (workdir / "study_run.json").write_text(json.dumps(meta))
        return meta

    return run


@pytest.fixture(scope="module")
def study(rb, tmp_path_factory):
    """A finished synthetic study: DiDiRN vs ResNet, clean / noise3 / ratio0.1, seeds 0 and 1."""
    out = tmp_path_factory.mktemp("study")
    grid = rb.Grid("smoke", ("didirn-resnet",), ("clean", "noise3", "ratio0.1"), (0, 1), None, 32)
    calls = []
    status = rb.run_study(grid, out, runner=fake_runner(rb, calls), log=lambda s: None)
    assert set(status.values()) == {"ran"} and len(calls) == 12
    return grid, out


def test_finished_runs_are_skipped_and_a_missing_one_rerun(rb, study, tmp_path):
    grid, out = study
    calls = []
    status = rb.run_study(grid, out, runner=fake_runner(rb, calls), log=lambda s: None)
    assert calls == [] and set(status.values()) == {"done"}

    # another output directory: delete one result, it alone runs again
    import shutil

    other = tmp_path / "copy"
    shutil.copytree(out, other)
    cell = rb.Cell("didirn-resnet", "baseline", "noise3", 1)
    (cell.workdir(other) / "eval_results.json").unlink()
    status = rb.run_study(grid, other, runner=fake_runner(rb, calls), log=lambda s: None)
    assert calls == [cell] and status[cell] == "ran"

    # a time budget already spent starts nothing
    (cell.workdir(other) / "eval_results.json").unlink()
    calls.clear()
    status = rb.run_study(grid, other, runner=fake_runner(rb, calls), time_budget_s=-1.0,
                          log=lambda s: None)  # fmt: skip
    assert calls == [] and status[cell] == "not started"


def test_archive_alone_rebuilds_the_study_and_continues_it(rb, study, tmp_path):
    """On a machine without the run directories, the committed archive gives the same summary,
    counts as done, and a run it lacks is run and archived."""
    import dataclasses
    import shutil

    grid, out = study
    archive = tmp_path / "archive"
    copied = [rb.archive_run(cell, out, archive) for cell in rb.cells(grid)]
    assert all(copied) and not any(rb.archive_run(c, out, archive) for c in rb.cells(grid))
    for cell in rb.cells(grid):  # only the small JSON files, never checkpoints
        assert {p.name for p in cell.workdir(archive).iterdir()} <= set(rb.ARCHIVED)
    fresh = tmp_path / "fresh"  # the run directories of another machine: empty
    assert rb.summarize(grid, rb.collect(grid, fresh, archive)) == rb.summarize(
        grid, rb.collect(grid, out))  # fmt: skip

    missing = rb.Cell("didirn-resnet", "diffusion", "ratio0.1", 1)
    shutil.rmtree(missing.workdir(archive))
    calls = []
    status = rb.run_study(grid, fresh, runner=fake_runner(rb, calls), archive=archive,
                          log=lambda s: None)  # fmt: skip
    assert calls == [missing] and status[missing] == "ran"
    assert (missing.workdir(archive) / "eval_results.json").exists()
    assert sum(v == "done" for v in status.values()) == len(rb.cells(grid)) - 1

    # an archived run made with other settings is never reused either
    other_grid = dataclasses.replace(grid, epochs=0.5, tag="quick")
    with pytest.raises(rb.StudyMismatch, match="num_steps"):
        rb.run_study(other_grid, tmp_path / "empty", runner=fake_runner(rb, calls),
                     archive=archive, log=lambda s: None)  # fmt: skip


def test_machine_speed_is_the_median_ratio_of_unresumed_runs_on_that_machine(rb, study, tmp_path):
    import shutil

    grid, out = study
    ratios = [15.0 / rb.estimate_seconds(rb.build_config(c, grid)) for c in rb.cells(grid)]
    assert rb.machine_speed(grid, rb.collect(grid, out), "test machine") == (np.median(ratios), 12)
    assert rb.machine_speed(grid, rb.collect(grid, out), "another machine") is None

    other = tmp_path / "copy"
    shutil.copytree(out, other)
    slow = rb.Cell("didirn-resnet", "diffusion", "clean", 0)
    meta = {"train_s": 1e6, "eval_s": 0.0, "machine": "test machine", "resumed": True}
    (slow.workdir(other) / "study_run.json").write_text(json.dumps(meta))
    (rb.Cell("didirn-resnet", "baseline", "clean", 0).workdir(other) / "study_run.json").unlink()
    kept = [
        r for c, r in zip(rb.cells(grid), ratios, strict=True) if c.condition != "clean" or c.seed
    ]
    assert rb.machine_speed(grid, rb.collect(grid, other), "test machine") == (np.median(kept), 10)


def test_a_run_with_other_settings_is_never_reused(rb, study):
    grid, out = study
    import dataclasses

    other_grid = dataclasses.replace(grid, tag="quick", epochs=0.5, eval_examples=100)
    calls = []
    with pytest.raises(rb.StudyMismatch, match="num_steps"):
        rb.run_study(other_grid, out, runner=fake_runner(rb, calls), log=lambda s: None)
    assert calls == []  # checked before anything runs


def test_summary_pairs_gains_by_seed(rb, study):
    grid, out = study
    summary = rb.summarize(grid, rb.collect(grid, out))
    for e in summary["headline"]:
        pairs = [TRUTH[(e["condition"], s)] for s in (0, 1)]
        gains = np.array([d - b for b, d in pairs])
        assert e["gain_top1"]["mean"] == pytest.approx(gains.mean())
        assert e["gain_top1"]["std"] == pytest.approx(gains.std(ddof=1))
        assert e["diffusion"]["sampler"] == "cp-euler" and e["diffusion"]["steps"] == 2
        assert e["difficulty"] == pytest.approx(1 - np.mean([b for b, _ in pairs]))
    # every sampler x steps of the grid has its row, with both seeds
    rows = [r for r in summary["rows"] if r["role"] == "diffusion" and r["condition"] == "clean"]
    assert {(r["sampler"], r["steps"]) for r in rows} == {
        ("cp-euler", 1), ("cp-euler", 2), ("cp-analytic", 2), ("cl-euler-n10", 1)}  # fmt: skip
    assert all(r["top1"]["n"] == 2 for r in rows)


def test_verdict_names_where_the_claim_fails(rb, study):
    grid, out = study
    lines = rb.verdict(grid, rb.summarize(grid, rb.collect(grid, out)))
    top1 = next(s for s in lines if "top-1 (" in s)
    expected = "2 seeds, paired by seed): ahead in 2 of 3 conditions run (clean, noise3), behind in"
    assert f"{expected} ratio0.1" in top1
    assert "does not hold here" in top1
    grows = next(s for s in lines if "with difficulty" in s)
    assert "does not grow" in grows  # the hardest condition (ratio0.1) is the one it loses


def test_verdict_gives_the_range_of_seeds_when_conditions_differ(rb, study):
    grid, out = study
    found = rb.collect(grid, out)
    for role in ("diffusion", "baseline"):  # noise3 keeps seed 0 only
        del found[rb.Cell("didirn-resnet", role, "noise3", 1)]
    top1 = next(s for s in rb.verdict(grid, rb.summarize(grid, found)) if "top-1 (" in s)
    assert "; 1-2 seeds per condition, paired by seed): ahead in 2 of 3" in top1


def test_spearman_matches_scipy(rb):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, 12).astype(float), rng.normal(size=12)  # x has ties
    assert rb._spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_spearman_permutation_p_value(rb):
    """Exact one-sided p: 1/24 for 4 points in perfect order (no 4-condition study can reach
    0.05); a vectorised count equal to a loop over every permutation; the sampled version
    small for a perfect 9-point ranking."""
    import itertools

    assert rb._spearman_p_greater([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1 / 24)
    assert rb._spearman_p_greater([1, 2, 3, 4], [0.4, 0.3, 0.2, 0.1]) == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=6), rng.integers(0, 3, 6).astype(float)  # y has ties
    rho = rb._spearman(x, y)
    loop = np.mean([rb._spearman(x, q) >= rho - 1e-12 for q in itertools.permutations(y)])
    assert rb._spearman_p_greater(x, y) == pytest.approx(loop)
    x9 = np.arange(9.0)  # 9 points: sampled; rho = 1 is reached by 1 of 9! orderings
    assert rb._spearman_p_greater(x9, x9, draws=20_000) < 1e-3


@pytest.mark.parametrize(
    "curve, expected",
    [({1: 0.30, 2: 0.78, 4: 0.794, 8: 0.795}, "4 steps come within 0.5 points of 8."),
     ({1: 0.712, 2: 0.705, 4: 0.705, 8: 0.697}, "more steps do not help: 1 step scores 1.50 points above 8.")],
)  # fmt: skip
def test_steps_statement_says_when_more_steps_hurt(rb, curve, expected):
    rows = [{"pair": "addvit-vit", "condition": "clean", "role": "diffusion", "sampler": "s",
             "steps": k, "top1": {"mean": v}} for k, v in curve.items()]  # fmt: skip
    headline = [{"pair": "addvit-vit", "condition": "clean",
                 "diffusion": {"sampler": "s", "steps": 8, "top1": {"mean": curve[8]}}}]  # fmt: skip
    assert rb._steps_statement("addvit-vit", {"rows": rows, "headline": headline}).endswith(
        expected
    )


def test_report_keeps_other_sections_and_marks_missing_cells(rb, study, tmp_path):
    grid, out = study
    results = tmp_path / "docs" / "results.md"
    results.parent.mkdir()
    captioning = "# Results\n\n## Captioning\n\nTheir table | stays.\n"
    results.write_text(captioning + "\n## Speed\n\nspeed text\n")
    wider = rb.Grid("smoke", grid.pairs, (*grid.conditions, "lowres7"), grid.seeds, None, 32)
    rb.write_report(wider, out, results, "python benchmarks/robustness.py --smoke")
    first = results.read_text()
    assert first.startswith(captioning + "\n## Speed\n\nspeed text\n")  # kept byte for byte
    assert first.count("## Robustness study") == 1  # its own section, added at the end
    assert "| 7 px | not run | not run | not run |" in first
    assert "12 of 16 runs done" in first
    assert "12 runs on test machine." in first  # each machine with its number of runs
    for name in ("gain_vs_difficulty", "accuracy_vs_steps", "accuracy_vs_severity",
                 "reliability_didirn", "reliability_resnet"):  # fmt: skip
        png = results.parent / "figures" / "robustness_smoke" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(figures/robustness_smoke/{name}.png)" in first
    rb.write_report(wider, out, results, "python benchmarks/robustness.py --smoke")
    assert results.read_text() == first  # regenerating replaces its block, nothing else
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["headline"]) == 4


def test_pooled_reliability_is_count_weighted(rb):
    a = {"count": [2, 0], "confidence": [0.5, None], "accuracy": [1.0, None]}
    b = {"count": [6, 4], "confidence": [0.7, 0.9], "accuracy": [0.5, 0.25]}
    pooled = rb._pooled_reliability([a, b])
    assert pooled["count"] == [8, 4]
    assert pooled["confidence"] == pytest.approx([(2 * 0.5 + 6 * 0.7) / 8, 0.9])
    assert pooled["accuracy"] == pytest.approx([(2 * 1.0 + 6 * 0.5) / 8, 0.25])


def test_a_subset_run_reports_the_whole_grid_and_its_own_runs(rb):
    argv = ["--pairs", "didirn-resnet", "--seeds", "1", "--conditions", "ratio0.01",
            "--time-budget-min", "45"]  # fmt: skip
    args = argparse.Namespace(quick=False, smoke=False, pairs=["didirn-resnet"], seeds=[1],
                              conditions=["ratio0.01"], epochs=None, eval_examples=None,
                              out=None, archive=None, results=None)  # fmt: skip
    grid = rb.grid_from_args(args)
    assert grid.seeds == (1,) and grid.pairs == ("didirn-resnet",)  # what this invocation runs
    report = rb.report_grid(grid)  # what its report shows: all of the full grid
    assert report == rb.GRIDS["full"]
    assert rb.report_command(args) == "python benchmarks/robustness.py"
    assert not any(a in rb.report_command(args) for a in argv)
    # a selection beyond the named grid joins it, in the grid's own order
    smoke = rb.grid_from_args(argparse.Namespace(**{**vars(args), "smoke": True, "seeds": [3],
                                                    "conditions": ["ratio0.1", "clean"]}))  # fmt: skip
    joined = rb.report_grid(smoke)
    assert joined.conditions == ("clean", "noise3", "ratio0.1") and joined.seeds == (0, 3)
    assert joined.pairs == rb.GRIDS["smoke"].pairs and joined.eval_examples == 32
    quick = argparse.Namespace(**{**vars(args), "quick": True, "epochs": 2.0})
    assert rb.report_command(quick) == "python benchmarks/robustness.py --quick --epochs 2"


# ------------------------------------------------------------------------------- throughput


def test_chain_cost_counts_every_step_of_a_scan(tp):
    M, N, S = 64, 128, 8

    def lower_chain(steps):
        def chain(x, w):
            return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=steps)[0]

        return jax.jit(chain).lower(jnp.ones((M, N)), jnp.ones((N, N)))

    matmul_flops = 2 * M * N * N
    cost = tp.chain_cost(lower_chain, S)
    assert cost["flops"] == pytest.approx(S * matmul_flops, rel=0.01)
    assert cost["bytes"] >= S * 4 * (M * N + N * N)  # each step reads c and w at least

    peak, bw = 989e12, 3.35e12
    proj = tp.roofline(cost["flops"], cost["bytes"], peak_flops=peak, bandwidth=bw)
    assert proj["bound_s"] == max(cost["flops"] / peak, cost["bytes"] / bw)
    # a matmul of width 128 in float32 reads about as many bytes as it does FLOPs / 32: far
    # below the H100's ridge of ~295 FLOP/byte, so memory binds
    assert proj["limited_by"] == "memory" and proj["intensity"] < proj["ridge"]


def test_write_block_inserts_in_its_section_and_replaces_itself(tp, tmp_path):
    path = tmp_path / "results.md"
    path.write_text("# Results\n\n## Captioning\n\nkeep me\n")
    tp.write_block(path, "speed", "quick", "first")
    tp.write_block(path, "robustness-study", "quick", "rq", intro="Intro.")
    tp.write_block(path, "speed", "full", "sf")
    tp.write_block(path, "speed", "quick", "second")
    text = path.read_text()
    assert text.startswith("# Results\n\n## Captioning\n\nkeep me\n")
    assert text.count("<!-- speed:quick:begin -->") == 1 and "first" not in text
    speed, robust = text.index("## Speed"), text.index("## Robustness study")
    assert speed < text.index("second") < text.index("sf") < robust < text.index("rq")


def test_projection_tables_name_each_rows_gpu_and_its_bound(tp, tmp_path):
    def row(gpu, flops, nbytes):
        g = tp.GPUS[gpu]
        r = {"part": "project", "what": "step", "batch": 64, "gpu": gpu,
             **tp.roofline(flops, nbytes, peak_flops=g["peak_flops"], bandwidth=g["bandwidth"])}  # fmt: skip
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
