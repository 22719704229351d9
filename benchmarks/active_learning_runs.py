"""Bookkeeping of ``bench_active_learning.py`` run in pieces: one result file per seed, merged into a table.

An experiment is everything that makes two seeds' runs comparable (:func:`experiment_settings`);
its short hash (:func:`experiment_key`) names the folder ``<work>/<key>/`` that holds
``experiment.json`` (settings, validation and pool cases, the base model's figures),
``seed-<n>.json`` per finished seed and, while a seed runs, ``seed-<n>.partial.json`` (its
finished rounds, so a killed seed resumes at its last finished round). Every file is written
whole or not at all (:func:`write_json_atomic`), so a killed run never leaves half a seed
that counts. Plain data only (no torch, no models): the benchmark does the training.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Bump when the benchmark's round logic (the cases, start draw, picking, fine-tuning, judging)
#: changes what a seed measures: seeds run before and after then fall under different keys.
#: 2: a scan shipped twice is one case (:func:`napari_ivd.training.cases.merge_duplicates`).
#: 3: the uncertainty order puts the cases the chain checks say to fix as a whole first
#: (:attr:`napari_ivd.active.CaseRecord.fix_first`).
ROUND_LOGIC = 3

EXPERIMENT_FILE = "experiment.json"

#: What the table and the target line call each figure, how it is scaled and which way is better.
FIGURES = {
    "identification": ("identification %", 100.0, "higher"),
    "error_mm": ("distance mm", 1.0, "lower"),
    "dice": ("Dice", 1.0, "higher"),
}

#: The issue's target: the best strategy reaches random's final figures with at most this share of its cases.
TARGET_SHARE = 0.70


def experiment_settings(
    *,
    pool_source: str | None,
    contrast: str | None,
    base_sha256: str,
    val_fraction: float,
    start: int,
    k: int,
    rounds: int,
    minutes: float,
    max_epochs: int,
    strategies: Sequence[str],
    max_pool: int | None,
    device: str,
    patience: int | None = None,
    round_logic: int | None = None,
) -> dict[str, Any]:
    """What makes two seeds comparable; ``device`` is ``cpu`` or ``cuda`` (the budget is wall-clock time).

    ``patience`` (None: the viewer's early stopping) enters the settings only when given, so
    the seeds run before the option existed keep their key. ``round_logic`` (None: today's,
    :data:`ROUND_LOGIC`) names an earlier one, to report the seeds run under it.
    """
    return {
        "pool_source": pool_source,
        "contrast": contrast,
        "base_sha256": base_sha256,
        "val_fraction": float(val_fraction),
        "start": int(start),
        "k": int(k),
        "rounds": int(rounds),
        "minutes": float(minutes),
        "max_epochs": int(max_epochs),
        "strategies": sorted(strategies),  # each strategy's rounds are independent of the others'
        "max_pool": max_pool,
        "device": device,
        "round_logic": ROUND_LOGIC if round_logic is None else int(round_logic),
        **({"patience": int(patience)} if patience is not None else {}),
    }


def experiment_key(settings: dict[str, Any]) -> str:
    """A short hash of the settings: the same settings give the same key on every machine."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def settings_differences(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """The settings in which another experiment differs from ours, in words (``minutes 2.0 → 5.0``)."""
    return [f"{name} {theirs.get(name)} → {ours.get(name)}" for name in ours if ours.get(name) != theirs.get(name)]


def other_experiments(work: Path, key: str, settings: dict[str, Any]) -> list[str]:
    """The other experiments under ``work`` and how their settings differ from ours (a mistyped option shows)."""
    lines = []
    for path in sorted(work.glob(f"*/{EXPERIMENT_FILE}")):
        try:
            theirs = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(theirs, dict) and theirs.get("key") != key and isinstance(theirs.get("settings"), dict):
            lines.append(f"{theirs['key']} (differs: {', '.join(settings_differences(settings, theirs['settings']))})")
    return lines


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` whole or not at all (a temporary file beside it, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def seed_path(folder: Path, seed: int) -> Path:
    """The result file of a finished seed."""
    return folder / f"seed-{seed}.json"


def progress_path(folder: Path, seed: int) -> Path:
    """The finished rounds of a seed still running (or killed)."""
    return folder / f"seed-{seed}.partial.json"


def read_seed(path: Path, key: str, seed: int) -> tuple[dict[str, Any] | None, str | None]:
    """A finished seed's result, or ``None`` and why the file does not count."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return (
            None,
            f"seed {seed}: {path} is unreadable ({type(exc).__name__}), ignored; delete it to run the seed again",
        )
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not data["rows"]:
        return None, f"seed {seed}: {path} holds no rows, ignored; delete it to run the seed again"
    if data.get("key") != key or data.get("seed") != seed:
        return None, f"seed {seed}: {path} belongs to key {data.get('key')} seed {data.get('seed')}, ignored"
    return data, None


def plan_seeds(folder: Path, seeds: Sequence[int], key: str) -> tuple[list[int], dict[int, dict[str, Any]], list[str]]:
    """The seeds still to run, the finished ones (seed → result) and why a seed file present does not count."""
    todo, done, problems = [], {}, []
    for seed in dict.fromkeys(seeds):
        path = seed_path(folder, seed)
        result, problem = read_seed(path, key, seed) if path.exists() else (None, None)
        if result is not None:
            done[seed] = result
        else:
            todo.append(seed)
            if problem:
                problems.append(problem)
    return todo, done, problems


def read_progress(path: Path, key: str, seed: int) -> list[dict[str, Any]]:
    """The finished rounds saved by an earlier, killed run of the seed (none when absent or unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    if not isinstance(data, dict) or data.get("key") != key or data.get("seed") != seed:
        return []
    steps = data.get("steps")
    return [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []


def resumable(steps: Sequence[dict[str, Any]], model_exists: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The finished rounds a seed can go on from: the longest run of them, in order, whose models are still there.

    A round's model picks the next round's cases, so a round whose model is gone (another
    machine, a cleaned folder) is run again, and every round after it.
    """
    kept = []
    for step in steps:
        if not model_exists(step):
            break
        kept.append(step)
    return kept


def merge(experiment: dict[str, Any], results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The finished seeds as one result (what the ``.json`` holds, the table and the plot read)."""
    ordered = sorted(results, key=lambda r: r["seed"])
    settings = experiment["settings"]
    return {
        "key": experiment["key"],
        "settings": settings,
        "command": experiment["command"],
        "contrast": settings["contrast"],
        "pool_source": settings["pool_source"],
        "validation": experiment["validation"],
        "base": experiment["base"],
        "seeds": [r["seed"] for r in ordered],
        "rows": [row for r in ordered for row in r["rows"]],
        "picks": [pick for r in ordered for pick in r.get("picks", [])],
        "runs": [{k: r.get(k) for k in ("seed", "device", "threads", "torch", "commit", "finished")} for r in ordered],
    }


def seeds_line(have: Sequence[int], asked: Sequence[int]) -> str:
    """How many of the seeds asked for the table holds, in words."""
    asked = list(dict.fromkeys(asked))
    missing = [s for s in asked if s not in have]
    line = f"{len(have)} of the {len(asked)} seeds asked for"
    if have:
        line += f" ({', '.join(map(str, have))})"
    return line + (f"; still to run: {' '.join(map(str, missing))}" if missing else "")


def _means(rows: Sequence[dict[str, Any]], key: str) -> dict[tuple[str, int], float]:
    """Mean over seeds of one figure, per strategy and number of cases annotated."""
    groups: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        if r.get(key) is not None:
            groups.setdefault((r["strategy"], r["n_annotated"]), []).append(r[key])
    return {group: float(np.mean(values)) for group, values in groups.items()}


def cases_to_reach(
    means: dict[str, dict[tuple[str, int], float]], strategy: str, targets: dict[str, float], kept: bool = False
) -> int | None:
    """The fewest cases annotated at which the strategy's mean reaches every target figure (``None``: never).

    ``kept``: and stays there at every larger number of cases, so a noisy early peak that
    the next rounds lose does not count as reaching.
    """
    sizes = sorted({n for key in targets for s, n in means[key] if s == strategy})

    def reaches(key: str, n: int) -> bool:
        value, target = means[key].get((strategy, n)), targets[key]
        return value is not None and (value >= target if FIGURES[key][2] == "higher" else value <= target)

    reached = {n: all(reaches(key, n) for key in targets) for n in sizes}
    if not kept:
        return next((n for n in sizes if reached[n]), None)
    first = None
    for n in reversed(sizes):
        if not reached[n]:
            break
        first = n
    return first


def table(results: dict[str, Any]) -> str:
    """Markdown: per strategy and cases annotated, mean ± sd over seeds; then the cases to reach random's final.

    The target line is the issue's: the cases a strategy needs until its mean over seeds
    reaches random's final mean of each figure (and of all of them at once, then also kept at
    every later round), as a share of the cases random was given; the target is at most 70 %.
    Where the first reach is a peak the next rounds lose, the verdict says from when the
    strategy stays there. Where random's own curve gets
    there as early (it plateaued, or dipped at its end), the verdict says that no saving
    over random is shown, whatever the share.
    """
    rows = results["rows"]
    keys = [k for k in FIGURES if any(r.get(k) is not None for r in rows)]
    lines = ["| strategy | cases annotated | " + " | ".join(FIGURES[k][0] for k in keys) + " | seeds |"]
    lines.append("|---" * (len(keys) + 3) + "|")
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    for strategy in strategies:
        for n in sorted({r["n_annotated"] for r in rows if r["strategy"] == strategy}):
            group = [r for r in rows if r["strategy"] == strategy and r["n_annotated"] == n]
            cells = []
            for key in keys:
                values = [FIGURES[key][1] * r[key] for r in group if r.get(key) is not None]
                cells.append(f"{np.mean(values):.2f} ± {np.std(values):.2f}" if values else "–")
            lines.append(f"| {strategy} | {n} | " + " | ".join(cells) + f" | {len(group)} |")
    if "random" not in strategies or not keys:
        return "\n".join(lines)
    means = {key: _means(rows, key) for key in keys}
    final_n = max(n for s, n in means[keys[0]] if s == "random")
    targets = {key: means[key][("random", final_n)] for key in keys if ("random", final_n) in means[key]}
    shown = ", ".join(f"{FIGURES[k][0]} {FIGURES[k][1] * v:.2f}" for k, v in targets.items())
    lines += [
        "",
        f"Cases annotated until the mean over seeds reaches random's final ({shown} at {final_n} cases),"
        f" as a share of random's {final_n} (target ≤ {100 * TARGET_SHARE:.0f} %):",
        "",
        "| strategy | " + " | ".join(FIGURES[k][0] for k in targets) + " | all at once | all, kept to the end |",
        "|---" * (len(targets) + 3) + "|",
    ]

    def cell(n: int | None) -> str:
        return f"{n} ({100 * n / final_n:.0f} %)" if n is not None else "not reached"

    needed, kept = {}, {}
    for strategy in strategies:
        each = [cell(cases_to_reach(means, strategy, {k: targets[k]})) for k in targets]
        needed[strategy] = cases_to_reach(means, strategy, targets)
        kept[strategy] = cases_to_reach(means, strategy, targets, kept=True)
        lines.append(f"| {strategy} | " + " | ".join(each) + f" | {cell(needed[strategy])} | {cell(kept[strategy])} |")
    others = {s: n for s, n in needed.items() if s != "random" and n is not None}
    if len(strategies) > 1:
        if others:
            best = min(others, key=others.get)
            share = others[best] / final_n
            target = f"target ≤ {100 * TARGET_SHARE:.0f} %"
            verdict = "met" if share <= TARGET_SHARE else f"missed by {100 * (share - TARGET_SHARE):.0f} points"
            first_n = min(r["n_annotated"] for r in rows)
            if others[best] == first_n:  # the start is the same for every strategy: nothing to compare
                verdict = (
                    f"cannot tell: random's final is no better than the {first_n} cases every strategy starts from"
                )
            elif needed.get("random") is not None and needed["random"] <= others[best]:
                verdict += f"; random itself gets there with {cell(needed['random'])}: no saving over random shown"
            elif kept[best] != others[best]:
                verdict += f", but its mean falls below it again and stays at it only from {cell(kept[best])}"
            lines.append(f"\nbest: {best}, {100 * share:.0f} % of random's cases ({target}: {verdict})")
        else:
            lines.append("\nno strategy but random reaches random's final figures: target missed")
        lines += ["", paired_differences(results, final_n, keys)]
    return "\n".join(lines)


def paired_differences(results: dict[str, Any], n: int, keys: Sequence[str]) -> str:
    """Markdown: per seed, each strategy minus random at ``n`` cases annotated, and in how many seeds it was better.

    A seed's strategies share its start, its first model and the validation cases, so the
    difference within a seed shows what the means over seeds blur: whether a strategy wins
    in most seeds or one seed decides the mean.
    """
    final = {(r["strategy"], r["seed"]): r for r in results["rows"] if r["n_annotated"] == n}
    seeds = sorted(seed for strategy, seed in final if strategy == "random")
    strategies = [s for s in dict.fromkeys(r["strategy"] for r in results["rows"]) if s != "random"]
    lines = [
        f"Per seed ({', '.join(map(str, seeds))}) at {n} cases, minus random:",
        "",
        "| strategy | " + " | ".join(FIGURES[k][0] for k in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for strategy in strategies:
        cells = []
        for key in keys:
            scale, better = FIGURES[key][1], FIGURES[key][2]
            pairs = [(final.get((strategy, seed), {}).get(key), final[("random", seed)][key]) for seed in seeds]
            diffs = [scale * (ours - theirs) for ours, theirs in pairs if None not in (ours, theirs)]
            wins = sum(d > 0 if better == "higher" else d < 0 for d in diffs)
            shown = ", ".join(f"{d:+.2f}" for d in diffs)
            cells.append(f"{shown} (mean {np.mean(diffs):+.2f}; better in {wins} of {len(diffs)})" if diffs else "–")
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
