"""The annotator's ranking panel as a researcher uses it: rank the cases, follow Next case, see unsure points.

Real scans (``shared_data``) in a real viewer (under xvfb). The fast tests rank from scores
cached in the store for the bundled model (the ranking does not run the model again); the
slow one scores a real scan in the background.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from qtpy.QtCore import Qt

from napari_ivd.active import CachedCase, Finding, Placeholder, PointScore, ScoreCache, VolumeScore, model_key
from napari_ivd.io import read_volume
from napari_ivd.models import find_model_dir, read_card
from napari_ivd.store import AnnotationStore
from widget_support import (
    CASE_ID,
    copy_store,
    docked_annotator,
    exceptions_closing_napari,
    make_store,
    notifications_since,
)

IVD_11 = "lumbar/IVD/case-11/image.nii.gz"
VB3_01 = "lumbar/VB3/case-01/image.nii.gz"
RANK_TIMEOUT_MS = 240_000


@pytest.fixture(scope="module")
def three_case_store(tmp_path_factory, shared_data) -> Path:
    """Template store: case-07 with its reference annotation, and two scans not annotated yet."""
    location = make_store(tmp_path_factory.mktemp("ranking"), shared_data, with_annotations=True)
    store = AnnotationStore.open(location, fsync=False)
    store.add_case(read_volume(shared_data / IVD_11), "case-11_image")
    store.add_case(read_volume(shared_data / VB3_01), "case-01_image")
    return location


def _cache_scores(location: Path, scores: dict[str, float], missing: tuple[Placeholder, ...] = ()) -> None:
    """Scores as the bundled model would have cached them: case-07's L3 is the point likely wrong.

    ``missing``: case-07's placeholders (levels the ranking finds missing).
    """
    store = AnnotationStore.open(location)
    cache = ScoreCache(store, model_key(read_card(find_model_dir(None))))
    for n, (case_id, score) in enumerate(scores.items()):
        points = (PointScore("L3", 0.9, "L3 named L2 in 2 of 3 perturbed runs", 0.8, 1.2),)
        reason = points[0].reason if case_id == CASE_ID else f"L{n + 1} weak (0.20 peak)"
        volume_score = VolumeScore(
            score,
            reason,
            points if case_id == CASE_ID else (),
            (Finding(score, reason),),
            20.0,
            missing if case_id == CASE_ID else (),
        )
        embedding = np.eye(3)[n]
        cache.put(case_id, CachedCase(store.case(case_id).image_sha256, volume_score, embedding))
    cache.save()


def test_case_table_sorts_by_a_ranking_without_losing_the_selection(make_napari_viewer, qtbot, three_case_store):
    _viewer, widget = docked_annotator(make_napari_viewer)
    widget.open_store(three_case_store)
    table = widget.table
    assert table.case_ids() == [CASE_ID, "case-01_image", "case-11_image"]  # the store's order
    table.show_current("case-11_image")
    with qtbot.assertNotEmitted(table.case_chosen):
        table.set_scores({"case-11_image": (0.81, "L4-L5 missing between named levels"), CASE_ID: (0.2, "L1 weak")})
        table.set_order(["case-11_image", CASE_ID])
    assert table.case_ids() == ["case-11_image", CASE_ID, "case-01_image"]  # unranked cases last
    assert table.scores() == {"case-11_image": "0.81", CASE_ID: "0.20", "case-01_image": ""}
    assert table.item(0, 4).text() == "L4-L5 missing between named levels"
    assert table.statuses()[CASE_ID] == "in progress"
    assert {index.row() for index in table.selectedIndexes()} == {0}  # case-11 is still the selected case


def test_rank_sorts_the_cases_next_case_follows_and_the_unsure_point_stands_out(
    make_napari_viewer, qtbot, three_case_store, tmp_path
):
    location = copy_store(three_case_store, tmp_path)
    _cache_scores(location, {"case-11_image": 0.3, "case-01_image": 0.5, CASE_ID: 0.8})
    _viewer, widget = docked_annotator(make_napari_viewer)
    widget.auto_predict.setChecked(False)
    start = len(notification_manager.records)
    qtbot.mouseClick(widget.ranking.rank_button, Qt.MouseButton.LeftButton)
    assert notifications_since(start) == ["Open or create a store first"]

    widget.open_store(location)
    widget.ranking.refresh()  # what a finished fine-tuning calls: nothing was ranked yet, so nothing runs
    assert widget.ranking.worker is None
    with qtbot.waitSignal(widget.ranking.ranked, timeout=RANK_TIMEOUT_MS) as ranked:
        qtbot.mouseClick(widget.ranking.rank_button, Qt.MouseButton.LeftButton)
    assert ranked.args[0].case_ids() == [CASE_ID, "case-01_image", "case-11_image"]
    table = widget.table
    assert table.case_ids() == [CASE_ID, "case-01_image", "case-11_image"]
    assert table.scores() == {CASE_ID: "0.80", "case-01_image": "0.50", "case-11_image": "0.30"}
    assert table.item(0, 4).text() == "L3 named L2 in 2 of 3 perturbed runs"
    assert widget.ranking.status_label.text().endswith(f"next: {CASE_ID}")

    # Next case opens the top of the ranking; its likely-wrong L3 gets the orange border
    with qtbot.waitSignal(widget.case_opened, timeout=60_000) as opened:
        qtbot.mouseClick(widget.next_button, Qt.MouseButton.LeftButton)
    assert opened.args == [CASE_ID]
    vertebrae = widget.case.points_layers["vertebra"]
    levels = list(vertebrae.features["level"])
    orange = np.array([1.0, 165 / 255, 0.0, 1.0])
    for level, colour in zip(levels, vertebrae.border_color, strict=True):
        assert np.allclose(colour, orange) == (level == "L3"), level
    with qtbot.waitSignal(widget.case_opened, timeout=60_000) as opened:
        qtbot.mouseClick(widget.next_button, Qt.MouseButton.LeftButton)
    assert opened.args == ["case-01_image"]  # then down the ranking
    assert widget.case.unsure == {}

    # another strategy re-sorts the same table, and so does a refresh (after a fine-tuning)
    widget.ranking.strategy_box.setCurrentText("random")
    with qtbot.waitSignal(widget.ranking.ranked, timeout=RANK_TIMEOUT_MS) as ranked:
        widget.ranking.refresh()
    assert table.case_ids() == ranked.args[0].case_ids()
    assert {table.item(row, 4).text() for row in range(3)} == {"random draw (seed 0)"}


def test_a_missing_level_shows_as_an_orange_named_cross_to_accept_as_a_point_or_mark_absent(
    make_napari_viewer, qtbot, three_case_store, tmp_path
):
    location = copy_store(three_case_store, tmp_path)
    store = AnnotationStore.open(location)
    geometry = store.read_image(CASE_ID).geometry
    mm = {p.level: geometry.vox_to_mm(np.array([p.ijk_vox]))[0] for p in store.load(CASE_ID).points}
    where_mm = 2 * mm["L5"] - mm["L4-L5"]  # case-07's reference stops at L5: L5-S1 belongs one step below
    reason = "L5-S1 missing: the chain stops 40 mm above the end of the scan"
    _cache_scores(location, {CASE_ID: 0.99}, (Placeholder("L5-S1", tuple(where_mm), reason),))
    _viewer, widget = docked_annotator(make_napari_viewer)
    widget.auto_predict.setChecked(False)
    widget.open_store(location)
    panel = widget.ranking
    assert not panel.accept_button.isEnabled() and not panel.delete_button.isEnabled()
    with qtbot.waitSignal(panel.ranked, timeout=RANK_TIMEOUT_MS):
        qtbot.mouseClick(panel.rank_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(widget.case_opened, timeout=60_000):
        qtbot.mouseClick(widget.next_button, Qt.MouseButton.LeftButton)

    crosses = widget.case.placeholders
    assert crosses.name == f"{CASE_ID} missing levels" and list(crosses.features["level"]) == ["L5-S1"]
    assert list(crosses.features["reason"]) == [reason]
    assert np.allclose(crosses.face_color[0], [1.0, 165 / 255, 0.0, 1.0])  # orange
    shown_vox = widget.case.view.display_to_vox(crosses.data)[0]
    assert np.allclose(geometry.vox_to_mm(shown_vox[None])[0], where_mm, atol=1e-4)
    assert panel.accept_button.isEnabled() and panel.delete_button.isEnabled()
    before = widget.case.points()

    # accepted: a disc point named L5-S1 where the cross was, one undoable edit, unsaved until saved
    qtbot.mouseClick(panel.accept_button, Qt.MouseButton.LeftButton)
    discs = widget.case.points_layers["disc"]
    assert "L5-S1" in list(discs.features["level"]) and len(crosses.data) == 0
    (accepted,) = [p for p in widget.case.points() if p.level == "L5-S1"]
    assert np.allclose(geometry.vox_to_mm(np.array([accepted.ijk_vox]))[0], where_mm, atol=1e-4)
    assert widget.has_unsaved_changes() and not panel.accept_button.isEnabled()
    qtbot.mouseClick(widget.tools.undo_button, Qt.MouseButton.LeftButton)
    assert widget.case.points() == before

    # shown again (the level is still missing) and deleted: the researcher says L5-S1 is not in this scan
    panel.highlight()
    assert list(widget.case.placeholders.features["level"]) == ["L5-S1"]
    assert panel.delete_button.toolTip().startswith("Mark the selected missing levels as not present in this scan")
    qtbot.mouseClick(panel.delete_button, Qt.MouseButton.LeftButton)
    assert len(widget.case.placeholders.data) == 0 and widget.case.points() == before
    assert widget.annotator.absent == {"L5-S1"} and widget.has_unsaved_changes()
    panel.highlight()  # the ranking's cross does not come back for a level known not to be there
    assert len(widget.case.placeholders.data) == 0
    qtbot.mouseClick(widget.tools.undo_button, Qt.MouseButton.LeftButton)  # undoable like a point edit
    assert widget.annotator.absent == frozenset() and not widget.has_unsaved_changes()
    qtbot.mouseClick(widget.tools.redo_button, Qt.MouseButton.LeftButton)

    # saved with the next revision: training and the next ranking read it from there
    with qtbot.waitSignal(widget.saved, timeout=30_000) as saved:
        qtbot.mouseClick(widget.save_button, Qt.MouseButton.LeftButton)
    assert AnnotationStore.open(location).load(CASE_ID, saved.args[0]).absent == ("L5-S1",)
    assert not widget.has_unsaved_changes()


def _one_scan_ranking(make_napari_viewer: Any, shared_data: Path, tmp_path: Path) -> tuple[Any, Any, Path]:
    """The viewer and the docked annotator with a fresh store of one real scan open, and the store's path."""
    location = tmp_path / "one.zarr"
    store = AnnotationStore.open(location, create=True, fsync=False)
    store.add_case(read_volume(shared_data / VB3_01), "VB3_case-01")
    viewer, widget = docked_annotator(make_napari_viewer)
    widget.auto_predict.setChecked(False)
    widget.open_store(location)
    return viewer, widget, location


def test_closing_napari_while_ranking_leaves_no_traceback(make_napari_viewer, qtbot, shared_data, tmp_path):
    """napari stops the ranking as its window closes; the end reaches no deleted widget (no traceback)."""
    viewer, widget, _ = _one_scan_ranking(make_napari_viewer, shared_data, tmp_path)
    panel = widget.ranking
    qtbot.mouseClick(panel.rank_button, Qt.MouseButton.LeftButton)
    assert exceptions_closing_napari(qtbot, viewer, panel, panel.worker, RANK_TIMEOUT_MS) == []


@pytest.mark.slow
def test_ranking_scores_a_real_scan_in_the_background_and_can_be_cancelled(
    make_napari_viewer, qtbot, shared_data, tmp_path
):
    _, widget, location = _one_scan_ranking(make_napari_viewer, shared_data, tmp_path)
    panel = widget.ranking

    qtbot.mouseClick(panel.rank_button, Qt.MouseButton.LeftButton)
    assert panel.cancel_button.isEnabled() and not panel.rank_button.isEnabled()
    with qtbot.waitSignal(panel.worker.finished, timeout=RANK_TIMEOUT_MS):
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    assert panel.status_label.text() == "Ranking cancelled" and widget.table.scores() == {"VB3_case-01": ""}
    assert panel.rank_button.isEnabled() and not panel.cancel_button.isEnabled()

    with qtbot.waitSignal(panel.ranked, timeout=RANK_TIMEOUT_MS) as ranked:
        qtbot.mouseClick(panel.rank_button, Qt.MouseButton.LeftButton)
    (row,) = ranked.args[0].cases
    assert 0.0 < row.score < 1.0 and widget.table.scores()["VB3_case-01"] == f"{row.score:.2f}"
    assert any(level in row.reason for level in ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"))
    key = ranked.args[0].model
    assert set(AnnotationStore.open(location).cached_scores(key)["cases"]) == {"VB3_case-01"}
