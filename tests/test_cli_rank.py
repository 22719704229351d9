"""``napari-ivd rank`` as a lab runs it: which cases to correct next, as CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from napari_ivd.active import ranking
from napari_ivd.cli import main
from napari_ivd.io import Volume, VolumeGeometry, read_volume
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.store import AnnotationStore


def _noise(seed: int) -> Volume:
    array = np.random.default_rng(seed).integers(0, 500, (6, 48, 48)).astype(np.int16)
    return Volume(array, VolumeGeometry(np.diag([8.0, 1.0, 1.0, 1.0]), array.shape, "noise"), Path(f"n{seed}.nii.gz"))


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_rank_of_a_missing_store_is_a_clear_error(tmp_path, capsys):
    assert main(["rank", "--store", str(tmp_path / "nowhere.zarr")]) == 2
    err = capsys.readouterr().err
    assert "nowhere.zarr: no annotation store here" in err and "Traceback" not in err


def test_rank_with_an_unknown_strategy_names_the_valid_ones(tmp_path, capsys):
    AnnotationStore.open(tmp_path / "s.zarr", create=True)
    assert main(["rank", "--store", str(tmp_path / "s.zarr"), "--strategy", "newest"]) == 2
    assert "choose one of random, uncertainty, uncertainty+diversity" in capsys.readouterr().err


def test_random_rank_lists_every_case_not_verified_once_in_a_seeded_order(tmp_path, capsys):
    location = tmp_path / "s.zarr"
    store = AnnotationStore.open(location, create=True, fsync=False)
    for seed in range(6):
        store.add_case(_noise(seed), f"scan-{seed}")
    store.add_case(_noise(9), "done", points=[LabelledPoint("L3", (3.0, 24.0, 24.0))], status="verified")

    assert main(["rank", "--store", str(location), "--strategy", "random", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "rank,case_id,status,score,reason"
    rows = _rows(out)
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert sorted(r["case_id"] for r in rows) == [f"scan-{s}" for s in range(6)]  # the verified case is done
    assert {(r["status"], r["score"], r["reason"]) for r in rows} == {("new", "", "random draw (seed 5)")}
    assert main(["rank", "--store", str(location), "--strategy", "random", "--seed", "5"]) == 0
    assert _rows(capsys.readouterr().out) == rows


@pytest.mark.slow
def test_uncertainty_rank_scores_real_scans_once_and_explains_each_place(shared_data, tmp_path, capsys, monkeypatch):
    scored: list[str] = []
    real_score = ranking.score_volume_steps

    def score(volume, *args, **kwargs):
        scored.append(volume.name)
        return real_score(volume, *args, **kwargs)

    monkeypatch.setattr(ranking, "score_volume_steps", score)
    location = tmp_path / "lab.zarr"
    store = AnnotationStore.open(location, create=True, fsync=False)
    store.add_case(read_volume(shared_data / "lumbar/VB3/case-13/image.nii.gz"), "VB3_case-13")
    store.add_case(_noise(0), "no-spine")

    assert main(["rank", "--store", str(location), "--model", "ivdnet-lumbar", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    rows = _rows(captured.out)
    assert [r["case_id"] for r in rows] == ["no-spine", "VB3_case-13"]
    assert rows[0]["score"] == "1.0000" and rows[0]["reason"] == "no disc or vertebra found"
    real = rows[1]
    assert 0.0 < float(real["score"]) < 1.0
    assert any(level in real["reason"] for level in ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"))
    key = captured.err.strip().rsplit(" with ", 1)[1]
    assert set(AnnotationStore.open(location).cached_scores(key)["cases"]) == {"VB3_case-13", "no-spine"}

    assert sorted(scored) == ["image", "n0"]

    assert main(["rank", "--store", str(location), "--model", "ivdnet-lumbar", "--device", "cpu"]) == 0
    assert _rows(capsys.readouterr().out) == rows and len(scored) == 2  # the second ranking comes from the cache
