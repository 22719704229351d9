"""The bookkeeping that lets ``benchmarks/bench_active_learning.py`` run seed by seed across sessions.

Plain data (``benchmarks/active_learning_runs.py``), and the seed loop with its training and
picking replaced by bookkeeping: nothing is trained, no model is loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

# Benchmarks are scripts that import each other as siblings (bench_active_learning imports
# bench_adapt and active_learning_runs); they are not a package, so put their folder on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import active_learning_runs as runs

SETTINGS: dict[str, Any] = dict(
    pool_source="VB3",
    contrast=None,
    base_sha256="ab" * 32,
    val_fraction=0.4,
    start=2,
    k=2,
    rounds=4,
    minutes=5.0,
    max_epochs=80,
    strategies=["random", "uncertainty", "uncertainty+diversity"],
    max_pool=None,
    device="cpu",
    patience=None,
)
CHANGED = {
    "pool_source": "VB1",
    "contrast": "T1w",
    "base_sha256": "cd" * 32,
    "val_fraction": 0.5,
    "start": 3,
    "k": 1,
    "rounds": 5,
    "minutes": 2.0,
    "max_epochs": 40,
    "strategies": ["random", "uncertainty"],
    "max_pool": 10,
    "device": "cuda",
    "patience": 1000,
}


def _key(**changes: Any) -> str:
    return runs.experiment_key(runs.experiment_settings(**(SETTINGS | changes)))


def test_experiment_key_is_stable_for_the_same_settings() -> None:
    assert _key() == _key()
    assert _key(minutes=5) == _key(minutes=5.0)  # 5 and 5.0 are the same budget
    assert _key(strategies=list(reversed(SETTINGS["strategies"]))) == _key()  # the order runs them, nothing else
    assert len(_key()) == 12


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_experiment_key_changes_with_each_setting(name: str) -> None:
    assert set(CHANGED) == set(SETTINGS)  # every setting is tried
    assert _key(**{name: CHANGED[name]}) != _key()


def test_seeds_run_before_patience_was_an_option_keep_their_key() -> None:
    settings = runs.experiment_settings(**SETTINGS)
    assert "patience" not in settings  # the viewer's early stopping, as every seed before the option
    assert _key(patience=4) != _key()  # given, even at the viewer's value, it is another experiment


def test_patience_reaches_the_viewer_fine_tune_and_defaults_to_the_viewer_s() -> None:
    import bench_active_learning as bench

    from napari_ivd.training.finetune import FineTuneConfig

    args = argparse.Namespace(minutes=5.0, max_epochs=80, device="cpu", patience=None)
    viewer = bench.finetune_config(args, seed=3)
    assert (viewer.patience, viewer.minutes, viewer.epochs, viewer.seed) == (FineTuneConfig.patience, 5.0, 80, 3)
    assert bench.finetune_config(argparse.Namespace(**{**vars(args), "patience": 1000}), seed=3).patience == 1000


def test_experiment_key_changes_with_the_round_logic(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _key()
    monkeypatch.setattr(runs, "ROUND_LOGIC", runs.ROUND_LOGIC + 1)
    assert _key() != before


#: The README's command for the kept VB3 experiment: five seeds under round logic 2, and those of today's logic.
KEPT = Path(__file__).resolve().parents[1] / "benchmarks" / "active-learning-vb3"
KEPT_COMMAND = (
    f"--pool-source VB3 --base {KEPT / 'base'} --work {KEPT} --val-fraction 0.4 --start 2 --k 2 --rounds 4"
    " --minutes 5 --patience 1000 --seeds 0 1 2 3 4 --workers 2 --device cpu --report-only"
).split()


def test_each_kept_experiment_is_reported_under_its_round_logic_and_a_mistyped_option_names_the_difference(
    monkeypatch, capsys, tmp_path
):
    import bench_active_learning as bench

    png = ["--png", str(tmp_path / "report.png")]
    plotted: list[Path] = []
    monkeypatch.setattr(bench, "plot", lambda results, path: plotted.append(path))  # matplotlib is a benchmark extra
    monkeypatch.setattr(sys, "argv", ["bench", *KEPT_COMMAND, *png, "--round-logic", "2"])
    bench.main()
    assert "experiment e35ea9726f66: 5 of the 5 seeds asked for" in capsys.readouterr().out
    assert (tmp_path / "report.csv").exists() and plotted == [tmp_path / "report.png"]
    monkeypatch.setattr(sys, "argv", ["bench", *KEPT_COMMAND, *png])  # today's logic: the fix-first seeds
    bench.main()
    assert "experiment e79a2c318cca: 5 of the 5 seeds asked for" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["bench", *KEPT_COMMAND, *png, "--minutes", "4"])
    with pytest.raises(SystemExit, match=r"no seed of experiment (.|\n)*e79a2c318cca \(differs: minutes 5.0 → 4.0\)"):
        bench.main()


def test_an_earlier_round_logic_cannot_run_new_seeds(monkeypatch, capsys):
    import bench_active_learning as bench

    monkeypatch.setattr(
        sys, "argv", ["bench", *[a for a in KEPT_COMMAND if a != "--report-only"], "--round-logic", "2"]
    )
    with pytest.raises(SystemExit):
        bench.main()
    assert "--round-logic 2 can only be reported (--report-only)" in capsys.readouterr().err


def _row(seed: int, strategy: str, n: int, identification: float, error_mm: float) -> dict[str, Any]:
    return {
        "seed": seed,
        "strategy": strategy,
        "round": (n - 2) // 2,
        "n_annotated": n,
        "identification": identification,
        "error_mm": error_mm,
        "dice": None,
    }


#: Per strategy, (identification, distance) at 2, 4, 6 and 8 cases, for seeds 0 and 1 (mean = middle value).
CURVES = {
    "random": [(0.50, 5.0), (0.60, 4.0), (0.70, 3.0), (0.80, 2.0)],
    "uncertainty": [(0.50, 5.0), (0.85, 2.0), (0.90, 1.5), (0.95, 1.0)],  # reaches both at 4 cases: 50 %
    "uncertainty+diversity": [(0.50, 5.0), (0.70, 3.5), (0.82, 2.5), (0.90, 2.0)],  # 0.82 ≥ 0.80 at 6, 2.0 at 8
}


def _seed_result(seed: int, key: str = "k", curves: dict[str, list[tuple[float, float]]] = CURVES) -> dict[str, Any]:
    spread = 0.05 if seed == 0 else -0.05  # seeds spread symmetrically around the curve: the mean is the curve
    rows = [
        _row(seed, strategy, 2 + 2 * i, ident + spread / 10, dist + spread)
        for strategy, points in curves.items()
        for i, (ident, dist) in enumerate(points)
    ]
    return {"key": key, "seed": seed, "rows": rows, "picks": [], "device": "cpu", "commit": "abc1234"}


EXPERIMENT = {
    "key": "k",
    "settings": runs.experiment_settings(**SETTINGS),
    "command": "python benchmarks/bench_active_learning.py --pool-source VB3",
    "validation": ["VB3/case-30"],
    "pool": ["VB3/case-31"],
    "base": {"model": "base", "identification": 0.4, "error_mm": 6.0, "dice": None},
}


def _write_seeds(folder: Path, seeds: list[int], key: str = "k") -> None:
    for seed in seeds:
        runs.write_json_atomic(runs.seed_path(folder, seed), _seed_result(seed, key))


def test_seed_files_merge_into_the_table(tmp_path: Path) -> None:
    _write_seeds(tmp_path, [0, 1])
    todo, done, problems = runs.plan_seeds(tmp_path, [0, 1, 2], "k")
    assert (todo, sorted(done), problems) == ([2], [0, 1], [])
    results = runs.merge(EXPERIMENT, list(done.values()))
    assert results["seeds"] == [0, 1] and len(results["rows"]) == 2 * 12
    text = runs.table(results)
    # mean ± sd over the two seeds per strategy and cases annotated; dice is absent everywhere
    assert "| strategy | cases annotated | identification % | distance mm | seeds |" in text
    assert "| random | 8 | 80.00 ± 0.50 | 2.00 ± 0.05 | 2 |" in text
    assert "| uncertainty | 4 | 85.00 ± 0.50 | 2.00 ± 0.05 | 2 |" in text
    # the target line: cases until the mean reaches random's final (80 %, 2.00 mm at 8 cases)
    assert "(identification % 80.00, distance mm 2.00 at 8 cases), as a share of random's 8" in text
    assert "| random | 8 (100 %) | 8 (100 %) | 8 (100 %) | 8 (100 %) |" in text
    assert "| uncertainty | 4 (50 %) | 4 (50 %) | 4 (50 %) | 4 (50 %) |" in text
    assert "| uncertainty+diversity | 6 (75 %) | 8 (100 %) | 8 (100 %) | 8 (100 %) |" in text
    assert "best: uncertainty, 50 % of random's cases (target ≤ 70 %: met)" in text
    assert runs.seeds_line(results["seeds"], [0, 1, 2]) == "2 of the 3 seeds asked for (0, 1); still to run: 2"


def test_table_says_by_how_much_the_target_is_missed_and_what_is_never_reached() -> None:
    curves = {
        "random": CURVES["random"],
        "uncertainty": [(0.50, 5.0), (0.55, 4.5), (0.65, 3.0), (0.75, 2.5)],  # never reaches random's final
        "uncertainty+diversity": [(0.50, 5.0), (0.60, 4.0), (0.80, 2.0), (0.80, 2.0)],  # 6 of 8: 75 %
    }
    text = runs.table(runs.merge(EXPERIMENT, [_seed_result(0, curves=curves), _seed_result(1, curves=curves)]))
    assert "| uncertainty | not reached | not reached | not reached | not reached |" in text
    assert "best: uncertainty+diversity, 75 % of random's cases (target ≤ 70 %: missed by 5 points)" in text


def test_table_cannot_tell_when_random_ends_no_better_than_the_shared_start() -> None:
    flat = {s: [(0.5, 5.0)] * 4 for s in CURVES}
    text = runs.table(runs.merge(EXPERIMENT, [_seed_result(0, curves=flat), _seed_result(1, curves=flat)]))
    assert "cannot tell: random's final is no better than the 2 cases every strategy starts from" in text


def test_the_table_gives_each_seed_s_difference_from_random_at_random_s_final() -> None:
    behind = {**CURVES, "uncertainty": [(0.50, 5.0), (0.60, 4.0), (0.70, 3.0), (0.70, 1.5)]}  # seed 1: behind, nearer
    text = runs.table(runs.merge(EXPERIMENT, [_seed_result(0), _seed_result(1, curves=behind)]))
    assert "Per seed (0, 1) at 8 cases, minus random:" in text
    # seed 0: 0.955 - 0.805 and 0.95 - 1.95 mm (both seeds shift alike); seed 1: 0.695 - 0.795 and 1.45 - 1.95 mm
    uncertainty = "+15.00, -10.00 (mean +2.50; better in 1 of 2) | -1.00, -0.50 (mean -0.75; better in 2 of 2)"
    diversity = "+10.00, +10.00 (mean +10.00; better in 2 of 2) | +0.00, +0.00 (mean +0.00; better in 0 of 2)"
    assert f"| uncertainty | {uncertainty} |" in text and f"| uncertainty+diversity | {diversity} |" in text


@pytest.mark.parametrize(
    "content",
    [
        b'{"key": "k", "seed": 3, "rows": [{"seed": 3, "strat',  # cut short by a kill
        b"",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'{"key": "k", "seed": 3, "rows": []}',
    ],
    ids=["truncated", "empty", "binary", "not-an-object", "no-rows"],
)
def test_a_broken_seed_file_is_ignored_with_a_message(tmp_path: Path, content: bytes) -> None:
    _write_seeds(tmp_path, [0])
    runs.seed_path(tmp_path, 3).write_bytes(content)
    todo, done, problems = runs.plan_seeds(tmp_path, [0, 3], "k")
    assert todo == [3] and list(done) == [0]  # run again, not counted
    assert len(problems) == 1 and problems[0].startswith("seed 3: ") and "seed-3.json" in problems[0]


def test_a_seed_file_of_another_experiment_or_seed_does_not_count(tmp_path: Path) -> None:
    runs.write_json_atomic(runs.seed_path(tmp_path, 0), _seed_result(0, key="other"))
    runs.write_json_atomic(runs.seed_path(tmp_path, 1), _seed_result(2))  # renamed by hand
    todo, done, problems = runs.plan_seeds(tmp_path, [0, 1], "k")
    assert todo == [0, 1] and done == {}
    assert "belongs to key other seed 0" in problems[0] and "belongs to key k seed 2" in problems[1]


def test_only_missing_seeds_are_run_and_each_once(tmp_path: Path) -> None:
    _write_seeds(tmp_path, [0, 2, 7])
    todo, done, problems = runs.plan_seeds(tmp_path, [0, 1, 2, 3, 4, 1], "k")
    assert todo == [1, 3, 4]
    assert sorted(done) == [0, 2]  # seed 7 was not asked for
    assert problems == []
    assert runs.plan_seeds(tmp_path / "nothing-yet", [0, 1], "k") == ([0, 1], {}, [])


def test_write_json_atomic_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = runs.seed_path(tmp_path, 0)
    runs.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        runs.write_json_atomic(path, {"a": object()})  # not JSON: fails halfway through
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["seed-0.json"]  # no temporary file left


def test_a_killed_seed_resumes_at_its_last_round_whose_model_is_still_there(tmp_path: Path) -> None:
    steps = [{"strategy": "start", "round": 0}] + [{"strategy": "random", "round": r} for r in (1, 2, 3)]
    path = runs.progress_path(tmp_path, 4)
    runs.write_json_atomic(path, {"key": "k", "seed": 4, "steps": steps})
    assert runs.read_progress(path, "k", 4) == steps
    assert runs.read_progress(path, "other", 4) == [] and runs.read_progress(path, "k", 5) == []
    path.write_text('{"key": "k", "seed": 4, "ste')
    assert runs.read_progress(path, "k", 4) == []  # unreadable: the seed starts over
    gone = {("random", 2)}
    kept = runs.resumable(steps, lambda s: (s["strategy"], s["round"]) not in gone)
    assert kept == steps[:2]  # round 3 needs round 2's model to have picked: both run again
    assert runs.resumable(steps, lambda s: True) == steps


def test_other_experiments_say_which_settings_differ(tmp_path: Path) -> None:
    ours = runs.experiment_settings(**SETTINGS)
    theirs = runs.experiment_settings(**(SETTINGS | {"minutes": 2.0}))
    runs.write_json_atomic(tmp_path / "abc" / runs.EXPERIMENT_FILE, {"key": "abc", "settings": theirs})
    runs.write_json_atomic(tmp_path / "k" / runs.EXPERIMENT_FILE, {"key": "k", "settings": ours})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / runs.EXPERIMENT_FILE).write_text("{")
    assert runs.other_experiments(tmp_path, "k", ours) == ["abc (differs: minutes 2.0 → 5.0)"]


def test_the_share_is_of_the_cases_random_was_given_even_when_it_plateaued_earlier() -> None:
    curves = {
        "random": [(0.50, 5.0), (0.60, 4.0), (0.80, 2.0), (0.80, 2.0)],  # its final already at 6
        "uncertainty": [(0.50, 5.0), (0.85, 2.0), (0.90, 1.5), (0.95, 1.0)],
    }
    text = runs.table(runs.merge(EXPERIMENT, [_seed_result(0, curves=curves), _seed_result(1, curves=curves)]))
    assert "| random | 6 (75 %) | 6 (75 %) | 6 (75 %) | 6 (75 %) |" in text
    assert "best: uncertainty, 50 % of random's cases (target ≤ 70 %: met)\n" in text  # earlier than random


def test_the_verdict_says_when_random_itself_gets_there_as_early() -> None:
    curves = {
        "random": [(0.50, 5.0), (0.80, 2.0), (0.80, 2.0), (0.80, 2.0)],  # its final already at 4
        "uncertainty": [(0.50, 5.0), (0.85, 1.8), (0.90, 1.5), (0.95, 1.0)],  # also at 4
    }
    text = runs.table(runs.merge(EXPERIMENT, [_seed_result(0, curves=curves), _seed_result(1, curves=curves)]))
    assert (
        "best: uncertainty, 50 % of random's cases (target ≤ 70 %: met; random itself gets there with 4 (50 %):"
        " no saving over random shown)"
    ) in text


def test_an_early_peak_the_next_rounds_lose_is_reported_with_when_the_strategy_stays_there() -> None:
    curves = {
        "random": CURVES["random"],
        "uncertainty": [(0.50, 5.0), (0.85, 1.8), (0.70, 3.0), (0.90, 1.5)],  # reaches at 4, loses it at 6
    }
    text = runs.table(runs.merge(EXPERIMENT, [_seed_result(0, curves=curves), _seed_result(1, curves=curves)]))
    assert "| uncertainty | 4 (50 %) | 4 (50 %) | 4 (50 %) | 8 (100 %) |" in text
    assert (
        "best: uncertainty, 50 % of random's cases (target ≤ 70 %: met, but its mean falls below it again and"
        " stays at it only from 8 (100 %))"
    ) in text


class _Killed(Exception):
    """Stands for the run being killed in the middle of a round."""


def _fake_rounds(monkeypatch: pytest.MonkeyPatch, kill_at: int | None = None) -> list[tuple[str, int]]:
    """The benchmark with its training and picking replaced by bookkeeping; returns the rounds trained."""
    import bench_active_learning as bench  # torch and the training code, but nothing is trained or loaded

    trained: list[tuple[str, int]] = []
    pool = [SimpleNamespace(name=f"VB3/case-{i:02d}") for i in range(6)]
    monkeypatch.setattr(bench, "_cases", lambda args: (pool, [SimpleNamespace(name="VB3/case-99")], Path("base")))
    monkeypatch.setattr(
        bench, "_judge", lambda base, val, device: {"identification": 0.5, "error_mm": 4.0, "dice": None}
    )
    monkeypatch.setattr(bench, "_pick", lambda strategy, pool, annotated, model_dir, device, k, seed: (pool[:k], 0.0))

    def train_round(
        seed: int, strategy: str, round_: int, annotated: list, val: list, base: Path, out: Path, *_: Any
    ) -> dict[str, Any]:
        if len(trained) == kill_at:
            raise _Killed
        trained.append((strategy, round_))
        out.mkdir(parents=True, exist_ok=True)
        (out / "card.json").write_text("{}")
        n = len(annotated)
        return _row(seed, strategy, n, identification=n / 10, error_mm=10.0 / n) | {
            "annotated": [c.name for c in annotated]
        }

    monkeypatch.setattr(bench, "_train_round", train_round)
    return trained


def _bench_args(work: Path) -> argparse.Namespace:
    settings = dict(start=2, k=1, rounds=2, strategies=["random", "uncertainty"], pool_source="VB3", contrast=None)
    command = "python benchmarks/bench_active_learning.py"
    return argparse.Namespace(**settings, device="cpu", workers=1, work=work, command=command)


def test_a_seed_killed_midway_leaves_no_seed_file_and_resumes_at_its_last_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench_active_learning as bench

    whole = _fake_rounds(monkeypatch)
    bench.run(_bench_args(tmp_path / "whole"), tmp_path / "whole", "k", {}, [0])
    assert whole == [("start", 0), ("random", 1), ("random", 2), ("uncertainty", 1), ("uncertainty", 2)]
    expected = json.loads(runs.seed_path(tmp_path / "whole", 0).read_text())

    folder = tmp_path / "pieces"
    _fake_rounds(monkeypatch, kill_at=4)  # killed in uncertainty round 2
    with pytest.raises(_Killed):
        bench.run(_bench_args(folder), folder, "k", {}, [0])
    assert not runs.seed_path(folder, 0).exists()  # a half seed never counts
    assert runs.plan_seeds(folder, [0], "k")[0] == [0]
    resumed = _fake_rounds(monkeypatch)
    bench.run(_bench_args(folder), folder, "k", {}, [0])
    assert resumed == [("uncertainty", 2)]  # the 4 rounds finished before are not run again, their picks count
    result = json.loads(runs.seed_path(folder, 0).read_text())
    assert result["rows"] == expected["rows"] and result["picks"] == expected["picks"]
    assert not runs.progress_path(folder, 0).exists()


KEPT = Path(__file__).resolve().parents[1] / "benchmarks" / "active-learning-vb3"


def test_the_experiment_kept_in_git_belongs_to_its_base_and_each_seed_file_to_it() -> None:
    """The README's experiment: its folder is its settings' key, the settings name the kept base, every seed counts."""
    card = json.loads((KEPT / "base" / "card.json").read_text())
    assert hashlib.sha256((KEPT / "base" / "weights.safetensors").read_bytes()).hexdigest() == card["weights_sha256"]
    experiments = sorted(KEPT.glob(f"*/{runs.EXPERIMENT_FILE}"))
    assert experiments
    for path in experiments:
        experiment = json.loads(path.read_text())
        assert path.parent.name == experiment["key"] == runs.experiment_key(experiment["settings"])
        assert experiment["settings"]["base_sha256"] == card["weights_sha256"]
        seeds = [int(m[1]) for f in path.parent.iterdir() if (m := re.fullmatch(r"seed-(\d+)\.json", f.name))]
        _, done, problems = runs.plan_seeds(path.parent, seeds, experiment["key"])
        assert not problems and sorted(done) == sorted(seeds)


class _InProcessPool:
    """Stands for the process pool: the same calls, one after another in this process."""

    def __init__(self, workers: int, mp_context: Any) -> None:
        pass

    def __enter__(self) -> _InProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, function: Any, items: Any) -> Any:
        return map(function, items)


def test_workers_run_every_seed_with_their_share_of_the_cores_and_record_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench_active_learning as bench
    import torch

    trained = _fake_rounds(monkeypatch)
    monkeypatch.setattr(bench, "ProcessPoolExecutor", _InProcessPool)
    monkeypatch.setattr(bench, "usable_cpus", lambda: 4)
    args, threads = _bench_args(tmp_path), torch.get_num_threads()
    args.workers = 2
    try:
        bench.run(args, tmp_path, "k", {}, [0, 1])
    finally:
        torch.set_num_threads(threads)
    assert len(trained) == 2 * 5  # both seeds, every round
    for seed in (0, 1):
        result = json.loads(runs.seed_path(tmp_path, seed).read_text())
        assert result["seed"] == seed and result["threads"] == 2
