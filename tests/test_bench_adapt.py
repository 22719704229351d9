"""The adaptation benchmark's plan: which cases are corrected and which are scored."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_adapt
from bench_adapt import _store_with, plan_jobs, score, table

from phantom_support import phantom_case

CASES = [f"VB1/case-{i:02d}" for i in (2, 10, 11, 15, 16, 17)]


def test_a_case_whose_other_series_was_corrected_is_never_scored():
    same_session = {"VB1/case-10": ("VB1/case-11",), "VB1/case-11": ("VB1/case-10",)}
    for seed in range(6):
        jobs = plan_jobs(CASES, "VB1", [0, 1, 2, 4], [seed], "default", same_session=same_session)
        corrected = set(max(jobs, key=lambda job: job.k).corrected)
        scored = set(jobs[0].scored)
        assert scored and not corrected & scored
        for case, twins in same_session.items():
            assert not (case in corrected and set(twins) & scored), f"seed {seed}: {case} corrected, twin scored"


def test_without_sessions_every_case_after_the_largest_k_is_scored_unless_the_base_saw_it():
    jobs = plan_jobs(CASES, "VB1", [0, 4], [0], "default", seen=["VB1/case-02"])
    corrected, scored = set(jobs[-1].corrected), set(jobs[0].scored)
    assert corrected | scored | {"VB1/case-02"} == set(CASES) and len(corrected) == 4
    assert "VB1/case-02" not in scored


def test_a_seed_that_leaves_nothing_to_score_is_refused_naming_seeds_that_score():
    """VB1 seed 0 corrects case-11 and the base saw case-02: its rows would have read 0 % (2026-12-06 run)."""
    same_session = {"VB1/case-10": ("VB1/case-11",), "VB1/case-11": ("VB1/case-10",)}
    with pytest.raises(SystemExit, match=r"VB1 seed 0: no case left to score .*seeds below 20 .*: 1 3 4 5 "):
        plan_jobs(CASES, "VB1", [0, 1, 2, 4], [1, 0], "default", ["VB1/case-02"], same_session)
    jobs = plan_jobs(CASES, "VB1", [0, 1, 2, 4], [1, 3, 4], "default", ["VB1/case-02"], same_session)
    assert all(job.scored for job in jobs) and {job.seed for job in jobs} == {1, 3, 4}


def test_the_table_gives_the_active_model_s_identification_the_base_where_train_kept_it():
    """Seed 1's version was activated (90 %), seed 2's was not (10 %; its base, 70 %, stays in use)."""

    def row(seed: int, k: int, mode: str, identification: float, activated: bool | None = None) -> dict:
        figures = {"dtt_mean_mm": 2.0}
        metrics = {"identification": identification, "disc": figures, "vertebra": figures}
        return {"recipe": "default", "source": "VB1", "seed": seed, "k": k, "mode": mode, "metrics": metrics} | (
            {} if activated is None else {"activated": activated}
        )

    rows = [row(1, 0, "base", 0.5), row(2, 0, "base", 0.7), row(1, 4, "fine-tuned", 0.9, True)]
    rows.append(row(2, 4, "fine-tuned", 0.1, False))
    lines = table(rows).splitlines()
    assert lines[-1].endswith("| 50.00 ± 40.00 | 2.00 ± 0.00 | 2.00 ± 0.00 | 2, 1 activated | 80.00 ± 10.00 | – |")
    assert lines[-2].endswith("| 2 | – | – |")  # the bases: no active-model column; runs of before: no nameable figure
    rows[0]["metrics"]["identification_nameable"] = 0.625
    assert table(rows).splitlines()[-2].endswith("| 2 | – | 62.50 |")


def test_a_store_built_for_a_run_marks_the_cases_named_unsure(tmp_path):
    case, _ = phantom_case(("L3", "L4", "L5"), {"L3", "L4", "L5"})
    assert _store_with([case], tmp_path / "a", names_unsure={"phantom/case"}).case("phantom-case").names_unsure
    assert not _store_with([case], tmp_path / "b").case("phantom-case").names_unsure


def test_identification_of_the_nameable_levels_leaves_out_the_levels_the_model_lacks(monkeypatch):
    """Two cases, 10 reference levels; 2 (T10, S1) are not among the model's labels; 6 identified."""
    figures = {"dtt_mean_mm": 2.0, "dtt_sd_mm": 1.0, "fpr": 0.0}
    summary = {
        "disc": figures | {"n_annotated": 4, "identification": 0.5},
        "vertebra": figures | {"n_annotated": 6, "identification": 2 / 3},
    }
    monkeypatch.setattr(bench_adapt, "evaluate_cases", lambda *args: {"keypoints": summary})
    levels = (["T10", "L1", "L1-L2", "L2", "L2-L3"], ["L3", "L3-L4", "L4", "L4-L5", "S1"])
    cases = [SimpleNamespace(keypoints_vox=dict.fromkeys(names)) for names in levels]
    card = {"labels": ["L1", "L1-L2", "L2", "L2-L3", "L3", "L3-L4", "L4", "L4-L5", "L5"]}
    metrics = score(None, card, cases, "cpu")
    assert metrics["identification"] == pytest.approx(0.6)
    assert metrics["identification_nameable"] == pytest.approx(0.75)


def test_each_fine_tune_runs_with_the_benchmark_s_budget_epoch_cap_and_patience():
    settings = bench_adapt.Settings(Path("data"), Path("bases"), "cpu", 1, 20.0, 5.0, 80, patience=12)
    engine = bench_adapt._finetune_config(settings, seed=3).train_config()
    assert (engine.minutes, engine.max_epochs, engine.patience, engine.seed) == (5.0, 80, 12, 3)
    viewer_default = bench_adapt.Settings(Path("data"), Path("bases"), "cpu", 1, 20.0, 5.0, 80)
    assert bench_adapt._finetune_config(viewer_default, seed=0).patience == bench_adapt.FineTuneConfig.patience
