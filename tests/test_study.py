"""The robustness study's library (``didiff_jax.study``), on synthetic runs: the grid (conditions,
same budget within a pair, the headline samplers), the skip/resume and archive rules, the cost
estimate, the summary, the verdict and the report it writes; and the writers and roofline bound
the benchmark drivers share. The drivers themselves are tested in ``test_benchmarks.py``."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from didiff_jax import evaluate, inference
from didiff_jax.data import corruptions
from didiff_jax.study.cost import estimate_seconds, machine_speed
from didiff_jax.study.grid import (
    CONDITIONS,
    GRIDS,
    HEADLINE_SAMPLER,
    PAIRS,
    SAMPLERS,
    Cell,
    Grid,
    build_config,
    cells,
    pair_epochs,
)
from didiff_jax.study.io import write_block
from didiff_jax.study.report import pooled_reliability, write_report
from didiff_jax.study.roofline import chain_cost, roofline
from didiff_jax.study.runner import ARCHIVED, StudyMismatch, archive_run, collect, run_study
from didiff_jax.study.stats import spearman, spearman_p_greater, summarize
from didiff_jax.study.verdict import steps_statement, verdict

# ------------------------------------------------------------------------------- the grid


def test_lowres_conditions_are_exactly_14_and_7_px():
    image = np.random.default_rng(0).uniform(size=(28, 28, 1)).astype(np.float32)
    for name, px in (("lowres14", 14), ("lowres7", 7)):
        cond = CONDITIONS[name]
        got = corruptions.corrupt(image, cond.kind, cond.severity, np.random.default_rng(1))
        np.testing.assert_array_equal(got, corruptions.downsample_to(image, px))
        assert cond.variant == f"lowres={cond.severity}"


@pytest.mark.parametrize("grid_name", ["full", "quick"])
@pytest.mark.parametrize("condition", ["clean", "noise3", "lowres7", "ratio0.01"])
def test_a_pair_gets_the_same_budget_and_test_condition(grid_name, condition):
    grid = GRIDS[grid_name]
    cond = CONDITIONS[condition]
    for pair in PAIRS:
        d, b = (build_config(Cell(pair, role, condition, 2), grid)
                for role in ("diffusion", "baseline"))  # fmt: skip
        epochs = grid.epochs if grid.epochs is not None else pair_epochs(pair)
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


@pytest.mark.parametrize("key", sorted(SAMPLERS))
def test_the_first_sampler_entry_is_the_headline_sampler_and_the_only_one(key):
    """The study finds the headline sampler's step counts as the first entry of its list; the
    evaluation labels the records (``inference.sampler_label``), so the first entry must carry the
    headline label, alone."""
    objective, _ = key
    labels = [inference.sampler_label(ml_collections.ConfigDict(e)) for e in SAMPLERS[key]]
    assert labels[0] == HEADLINE_SAMPLER[objective]
    assert HEADLINE_SAMPLER[objective] not in labels[1:]


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


def fake_runner(calls: list):
    """A runner that writes records like the real one, with top-1 from TRUTH (the headline
    sampler) and lower values for the other samplers and step counts."""

    def run(cell, config, workdir):
        calls.append(cell)
        kind, sev = ("clean", 0) if config.eval.clean else (config.eval.corruptions[0],
                                                            config.eval.severities[0])  # fmt: skip
        records = []
        for entry, steps in inference.sampler_runs(config):
            label = inference.sampler_label(entry)
            base, diff = TRUTH[(cell.condition, cell.seed)]
            top1 = base if cell.role == "baseline" else diff
            if label != HEADLINE_SAMPLER[config.objective.name] or steps not in (None, 2):
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
def study(tmp_path_factory):
    """A finished synthetic study: DiDiRN vs ResNet, clean / noise3 / ratio0.1, seeds 0 and 1."""
    out = tmp_path_factory.mktemp("study")
    grid = Grid("smoke", ("didirn-resnet",), ("clean", "noise3", "ratio0.1"), (0, 1), None, 32)
    calls = []
    status = run_study(grid, out, runner=fake_runner(calls), log=lambda s: None)
    assert set(status.values()) == {"ran"} and len(calls) == 12
    return grid, out


def test_finished_runs_are_skipped_and_a_missing_one_rerun(study, tmp_path):
    grid, out = study
    calls = []
    status = run_study(grid, out, runner=fake_runner(calls), log=lambda s: None)
    assert calls == [] and set(status.values()) == {"done"}

    # another output directory: delete one result, it alone runs again
    other = tmp_path / "copy"
    shutil.copytree(out, other)
    cell = Cell("didirn-resnet", "baseline", "noise3", 1)
    (cell.workdir(other) / "eval_results.json").unlink()
    status = run_study(grid, other, runner=fake_runner(calls), log=lambda s: None)
    assert calls == [cell] and status[cell] == "ran"

    # a time budget already spent starts nothing
    (cell.workdir(other) / "eval_results.json").unlink()
    calls.clear()
    status = run_study(grid, other, runner=fake_runner(calls), time_budget_s=-1.0,
                       log=lambda s: None)  # fmt: skip
    assert calls == [] and status[cell] == "not started"


def test_archive_alone_rebuilds_the_study_and_continues_it(study, tmp_path):
    """On a machine without the run directories, the committed archive gives the same summary,
    counts as done, and a run it lacks is run and archived."""
    grid, out = study
    archive = tmp_path / "archive"
    copied = [archive_run(cell, out, archive) for cell in cells(grid)]
    assert all(copied) and not any(archive_run(c, out, archive) for c in cells(grid))
    for cell in cells(grid):  # only the small JSON files, never checkpoints
        assert {p.name for p in cell.workdir(archive).iterdir()} <= set(ARCHIVED)
    fresh = tmp_path / "fresh"  # the run directories of another machine: empty
    assert summarize(grid, collect(grid, fresh, archive)) == summarize(grid, collect(grid, out))

    missing = Cell("didirn-resnet", "diffusion", "ratio0.1", 1)
    shutil.rmtree(missing.workdir(archive))
    calls = []
    status = run_study(grid, fresh, runner=fake_runner(calls), archive=archive,
                       log=lambda s: None)  # fmt: skip
    assert calls == [missing] and status[missing] == "ran"
    assert (missing.workdir(archive) / "eval_results.json").exists()
    assert sum(v == "done" for v in status.values()) == len(cells(grid)) - 1

    # an archived run made with other settings is never reused either
    other_grid = dataclasses.replace(grid, epochs=0.5, tag="quick")
    with pytest.raises(StudyMismatch, match="num_steps"):
        run_study(other_grid, tmp_path / "empty", runner=fake_runner(calls), archive=archive,
                  log=lambda s: None)  # fmt: skip


def test_machine_speed_is_the_median_ratio_of_unresumed_runs_on_that_machine(study, tmp_path):
    grid, out = study
    ratios = [15.0 / estimate_seconds(build_config(c, grid)) for c in cells(grid)]
    assert machine_speed(grid, collect(grid, out), "test machine") == (np.median(ratios), 12)
    assert machine_speed(grid, collect(grid, out), "another machine") is None

    other = tmp_path / "copy"
    shutil.copytree(out, other)
    slow = Cell("didirn-resnet", "diffusion", "clean", 0)
    meta = {"train_s": 1e6, "eval_s": 0.0, "machine": "test machine", "resumed": True}
    (slow.workdir(other) / "study_run.json").write_text(json.dumps(meta))
    (Cell("didirn-resnet", "baseline", "clean", 0).workdir(other) / "study_run.json").unlink()
    kept = [r for c, r in zip(cells(grid), ratios, strict=True) if c.condition != "clean" or c.seed]
    assert machine_speed(grid, collect(grid, other), "test machine") == (np.median(kept), 10)


def test_a_run_with_other_settings_is_never_reused(study):
    grid, out = study
    other_grid = dataclasses.replace(grid, tag="quick", epochs=0.5, eval_examples=100)
    calls = []
    with pytest.raises(StudyMismatch, match="num_steps"):
        run_study(other_grid, out, runner=fake_runner(calls), log=lambda s: None)
    assert calls == []  # checked before anything runs


def test_summary_pairs_gains_by_seed(study):
    grid, out = study
    summary = summarize(grid, collect(grid, out))
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


def test_verdict_names_where_the_claim_fails(study):
    grid, out = study
    lines = verdict(grid, summarize(grid, collect(grid, out)))
    top1 = next(s for s in lines if "top-1 (" in s)
    expected = "2 seeds, paired by seed): ahead in 2 of 3 conditions run (clean, noise3), behind in"
    assert f"{expected} ratio0.1" in top1
    assert "does not hold here" in top1
    grows = next(s for s in lines if "with difficulty" in s)
    assert "does not grow" in grows  # the hardest condition (ratio0.1) is the one it loses


def test_verdict_gives_the_range_of_seeds_when_conditions_differ(study):
    grid, out = study
    found = collect(grid, out)
    for role in ("diffusion", "baseline"):  # noise3 keeps seed 0 only
        del found[Cell("didirn-resnet", role, "noise3", 1)]
    top1 = next(s for s in verdict(grid, summarize(grid, found)) if "top-1 (" in s)
    assert "; 1-2 seeds per condition, paired by seed): ahead in 2 of 3" in top1


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, 12).astype(float), rng.normal(size=12)  # x has ties
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_spearman_permutation_p_value():
    """Exact one-sided p: 1/24 for 4 points in perfect order (no 4-condition study can reach
    0.05); a vectorised count equal to a loop over every permutation; the sampled version
    small for a perfect 9-point ranking."""
    assert spearman_p_greater([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1 / 24)
    assert spearman_p_greater([1, 2, 3, 4], [0.4, 0.3, 0.2, 0.1]) == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=6), rng.integers(0, 3, 6).astype(float)  # y has ties
    rho = spearman(x, y)
    loop = np.mean([spearman(x, q) >= rho - 1e-12 for q in itertools.permutations(y)])
    assert spearman_p_greater(x, y) == pytest.approx(loop)
    x9 = np.arange(9.0)  # 9 points: sampled; rho = 1 is reached by 1 of 9! orderings
    assert spearman_p_greater(x9, x9, draws=20_000) < 1e-3


@pytest.mark.parametrize(
    "curve, expected",
    [({1: 0.30, 2: 0.78, 4: 0.794, 8: 0.795}, "4 steps come within 0.5 points of 8."),
     ({1: 0.712, 2: 0.705, 4: 0.705, 8: 0.697}, "more steps do not help: 1 step scores 1.50 points above 8.")],
)  # fmt: skip
def test_steps_statement_says_when_more_steps_hurt(curve, expected):
    rows = [{"pair": "addvit-vit", "condition": "clean", "role": "diffusion", "sampler": "s",
             "steps": k, "top1": {"mean": v}} for k, v in curve.items()]  # fmt: skip
    headline = [{"pair": "addvit-vit", "condition": "clean",
                 "diffusion": {"sampler": "s", "steps": 8, "top1": {"mean": curve[8]}}}]  # fmt: skip
    assert steps_statement("addvit-vit", {"rows": rows, "headline": headline}).endswith(expected)


def test_report_keeps_other_sections_and_marks_missing_cells(study, tmp_path):
    grid, out = study
    results = tmp_path / "docs" / "results.md"
    results.parent.mkdir()
    captioning = "# Results\n\n## Captioning\n\nTheir table | stays.\n"
    results.write_text(captioning + "\n## Speed\n\nspeed text\n")
    wider = Grid("smoke", grid.pairs, (*grid.conditions, "lowres7"), grid.seeds, None, 32)
    write_report(wider, out, results, "python benchmarks/robustness.py --smoke")
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
    write_report(wider, out, results, "python benchmarks/robustness.py --smoke")
    assert results.read_text() == first  # regenerating replaces its block, nothing else
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["headline"]) == 4


def test_pooled_reliability_is_count_weighted():
    a = {"count": [2, 0], "confidence": [0.5, None], "accuracy": [1.0, None]}
    b = {"count": [6, 4], "confidence": [0.7, 0.9], "accuracy": [0.5, 0.25]}
    pooled = pooled_reliability([a, b])
    assert pooled["count"] == [8, 4]
    assert pooled["confidence"] == pytest.approx([(2 * 0.5 + 6 * 0.7) / 8, 0.9])
    assert pooled["accuracy"] == pytest.approx([(2 * 1.0 + 6 * 0.5) / 8, 0.25])


# ------------------------------------------------------------------ writers, roofline bound


def test_chain_cost_counts_every_step_of_a_scan():
    M, N, S = 64, 128, 8

    def lower_chain(steps):
        def chain(x, w):
            return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=steps)[0]

        return jax.jit(chain).lower(jnp.ones((M, N)), jnp.ones((N, N)))

    matmul_flops = 2 * M * N * N
    cost = chain_cost(lower_chain, S)
    assert cost["flops"] == pytest.approx(S * matmul_flops, rel=0.01)
    assert cost["bytes"] >= S * 4 * (M * N + N * N)  # each step reads c and w at least

    peak, bw = 989e12, 3.35e12
    proj = roofline(cost["flops"], cost["bytes"], peak_flops=peak, bandwidth=bw)
    assert proj["bound_s"] == max(cost["flops"] / peak, cost["bytes"] / bw)
    # a matmul of width 128 in float32 reads about as many bytes as it does FLOPs / 32: far
    # below the H100's ridge of ~295 FLOP/byte, so memory binds
    assert proj["limited_by"] == "memory" and proj["intensity"] < proj["ridge"]


def test_write_block_inserts_in_its_section_and_replaces_itself(tmp_path):
    path = tmp_path / "results.md"
    path.write_text("# Results\n\n## Captioning\n\nkeep me\n")
    write_block(path, "speed", "quick", "first")
    write_block(path, "robustness-study", "quick", "rq", intro="Intro.")
    write_block(path, "speed", "full", "sf")
    write_block(path, "speed", "quick", "second")
    text = path.read_text()
    assert text.startswith("# Results\n\n## Captioning\n\nkeep me\n")
    assert text.count("<!-- speed:quick:begin -->") == 1 and "first" not in text
    speed, robust = text.index("## Speed"), text.index("## Robustness study")
    assert speed < text.index("second") < text.index("sf") < robust < text.index("rq")
