"""A colleague saves the case while it is open here: the annotator asks, never silently supersedes."""

from __future__ import annotations

from pathlib import Path

import pytest
from qtpy.QtCore import Qt

from napari_ivd.io import read_volume
from napari_ivd.io.annotations import find_annotations
from napari_ivd.store import AnnotationStore
from widget_support import CASE_07, CASE_ID, docked_annotator


@pytest.fixture
def proposed_store(tmp_path, shared_data) -> Path:
    """case-07 with only a model proposal (its reference annotation), no revision."""
    location = tmp_path / "annotations.zarr"
    store = AnnotationStore.open(location, create=True, fsync=False)
    volume = read_volume(shared_data / CASE_07 / "image.nii.gz")
    points, mask = find_annotations(shared_data / CASE_07, volume.geometry)
    store.add_case(volume, CASE_ID)
    store.add_proposal(CASE_ID, "refnet", points, mask)
    return location


def test_a_colleagues_save_is_kept_and_mine_goes_on_top_only_when_chosen(make_napari_viewer, qtbot, proposed_store):
    _viewer, widget = docked_annotator(make_napari_viewer)
    widget.auto_predict.setChecked(False)
    widget.dialogs.store = proposed_store
    qtbot.mouseClick(widget.open_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        widget.table.selectRow(widget.table.case_ids().index(CASE_ID))
    assert (widget.annotator.parent_revision, widget.annotator.proposal) == (None, "p000001")

    colleague = AnnotationStore.open(proposed_store)
    shown = colleague.load_proposal(CASE_ID)
    colleague.save_revision(CASE_ID, shown.points[1:], shown.mask_tss, author="colleague", proposal="p000001")
    qtbot.mouseClick(widget.tools.down_button, Qt.MouseButton.LeftButton)  # my edit: every level one down

    widget.dialogs.answers = ["cancel"]
    with qtbot.waitSignal(widget.job_done, timeout=30_000):
        widget.save()
    qtbot.waitUntil(lambda: len(widget.dialogs.asked) == 1, timeout=10_000)
    assert widget.dialogs.asked == [(CASE_ID, "conflict p000001 -> r000001")]
    store = AnnotationStore.open(proposed_store)
    assert [r.author for r in store.revisions(CASE_ID)] == ["colleague"]  # nothing superseded
    assert widget.has_unsaved_changes()  # and my edit is still shown

    widget.dialogs.answers = ["on_top"]
    with qtbot.waitSignal(widget.saved, timeout=30_000):
        widget.save()
    mine = AnnotationStore.open(proposed_store).revision(CASE_ID)
    assert (mine.revision_id, mine.author, mine.based_on, mine.merged_over) == (
        "r000002",
        "dr-test",
        "p000001",
        "r000001",
    )
    assert (
        mine.proposal == "p000001"
        and widget.annotator.parent_revision == "r000002"
        and not widget.has_unsaved_changes()
    )


def test_reload_after_a_conflict_shows_the_colleagues_revision_and_drops_mine(
    make_napari_viewer, qtbot, proposed_store
):
    _viewer, widget = docked_annotator(make_napari_viewer)
    widget.auto_predict.setChecked(False)
    widget.open_store(proposed_store)
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        widget.next_case()
    colleague = AnnotationStore.open(proposed_store)
    shown = colleague.load_proposal(CASE_ID)
    colleague.save_revision(CASE_ID, shown.points[1:], shown.mask_tss, author="colleague", proposal="p000001")
    qtbot.mouseClick(widget.tools.down_button, Qt.MouseButton.LeftButton)

    widget.dialogs.answers = ["reload"]
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        widget.save()
    assert widget.annotator.parent_revision == "r000001" and not widget.has_unsaved_changes()
    assert len(widget.case.points()) == len(shown.points) - 1  # the colleague's points, not mine
    assert [r.author for r in AnnotationStore.open(proposed_store).revisions(CASE_ID)] == ["colleague"]
