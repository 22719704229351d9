"""Fine-tuning from the viewer (under xvfb): Train, watch it, keep annotating, pick the new version, Predict.

Runs train three real water cases (``training_store_template``) for a few CPU steps: they
check the plumbing between the widget and the core, not accuracy.
"""

from __future__ import annotations

import threading
import time

import pytest
from napari.utils.notifications import notification_manager
from qtpy.QtCore import Qt, QThreadPool, QTimer

from napari_ivd import worklist
from napari_ivd._widgets._train_panel import PROGRESS_MAX
from napari_ivd.data import sample_t2w_path
from napari_ivd.models import bundled_model_names
from napari_ivd.store import AnnotationStore
from napari_ivd.training import finetune
from widget_support import CASE_ID, copy_store, docked_annotator, make_store, notifications_since

#: A run of seconds: two epochs of two steps, validated after each.
SHRUNK = {"epochs": 2, "samples_per_epoch": 4, "batch_size": 2, "validate_every_epochs": 1, "device": "cpu"}
RUN_TIMEOUT_MS = 300_000


def _open(make_napari_viewer, location, show: bool = False):
    viewer, widget = docked_annotator(make_napari_viewer, show=show)
    widget.auto_predict.setChecked(False)
    widget.open_store(location)
    widget.train_panel.config_overrides = dict(SHRUNK)
    return viewer, widget


@pytest.mark.slow
def test_train_runs_in_the_background_stores_a_version_and_predict_uses_it(
    make_napari_viewer, qtbot, training_store_template, tmp_path, monkeypatch, request
):
    location = copy_store(training_store_template, tmp_path)
    _viewer, widget = _open(make_napari_viewer, location, show=True)
    panel = widget.train_panel
    assert panel.plan_label.text().startswith("Fine-tuning learns from 2 corrected cases; validates on 1: VB3-case-0")
    assert [widget.model_box.itemData(i) for i in range(widget.model_box.count())] == [*bundled_model_names(), None]
    assert widget.models.active_label.text() == "Active: ivdnet-lumbar — bundled starter model"

    # the run scores its parent only once a case has opened, so the case must open mid-run, on a
    # machine whose Qt pool holds one worker (one core) too
    opened = threading.Event()
    widget.case_opened.connect(lambda *_: opened.set())
    score_parent = finetune.evaluate_cases

    def score_once_a_case_opened(*args, **kwargs):
        opened.wait(60)
        return score_parent(*args, **kwargs)

    monkeypatch.setattr(finetune, "evaluate_cases", score_once_a_case_opened)
    pool = QThreadPool.globalInstance()
    cores = pool.maxThreadCount()
    pool.setMaxThreadCount(1)
    request.addfinalizer(lambda: pool.setMaxThreadCount(cores))
    progress: list[int] = []
    panel.progress.valueChanged.connect(progress.append)
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(50)
    start = time.perf_counter()
    with qtbot.waitSignal(panel.run_done, timeout=RUN_TIMEOUT_MS):
        qtbot.mouseClick(panel.train_button, Qt.MouseButton.LeftButton)
        assert panel.cancel_button.isEnabled() and not panel.train_button.isEnabled()
        # the annotator is not blocked by the run: a case opens while it trains
        with qtbot.waitSignal(widget.case_opened, timeout=60_000):
            widget.table.selectRow(0)
        assert panel.running and widget.annotator.case_id == "VB3-case-01"
    elapsed = time.perf_counter() - start
    timer.stop()
    assert len(ticks) >= elapsed / 0.05 / 4, f"{len(ticks)} ticks in {elapsed:.1f} s: the GUI thread stalled"
    assert progress == sorted(progress) and len(set(progress)) >= 4 and progress[-1] == PROGRESS_MAX
    assert len(panel.plot.loss) == 2 and len(panel.plot.error_mm) == 2 and panel.plot.parent_error_mm is not None

    (version,) = AnnotationStore.open(location).list_models()
    new = version.model_id
    assert new in panel.status_label.text() and "validates" in panel.status_label.text()
    assert widget.model_box.findData(new) >= 0
    if widget.models.current() != new:  # the core kept the parent active: choose the new version by hand
        widget.model_box.setCurrentIndex(widget.model_box.findData(new))
        with qtbot.waitSignal(widget.job_done, timeout=30_000):
            qtbot.mouseClick(widget.models.activate_button, Qt.MouseButton.LeftButton)
    assert widget.models.active_label.text().startswith(f"Active: {new} — ")
    shown = widget.model_box.currentText()  # the same-run comparison, with its case count
    assert shown.startswith(f"★ {new} (fine-tuned from ivdnet-lumbar: ") and shown.endswith(" on 1 held-out case)")
    assert " mm vs parent " in shown
    assert AnnotationStore.open(location).active_model().model == new

    used: list[str | None] = []
    predict_case_steps = worklist.predict_case_steps

    def spy(store, case_id, volume, model=None, device="auto", cache=None):
        used.append(model)
        return predict_case_steps(store, case_id, volume, model, device, cache)

    monkeypatch.setattr(worklist, "predict_case_steps", spy)
    with qtbot.waitSignal(widget.predicted, timeout=RUN_TIMEOUT_MS):
        qtbot.mouseClick(widget.predict_button, Qt.MouseButton.LeftButton)
    assert used == [new]
    [proposal] = AnnotationStore.open(location).proposals("VB3-case-01")
    assert proposal.model == new  # the proposal names the version that made it


@pytest.mark.slow
@pytest.mark.usefixtures("child_better_but_renaming")
def test_train_keeps_the_parent_active_when_the_new_version_renames_a_case_it_never_saw(
    make_napari_viewer, qtbot, training_store_template, shared_data, tmp_path
):
    """The new version validates better on its one held-out case but names a waiting scan one level off."""
    from napari_ivd.io import read_volume

    location = copy_store(training_store_template, tmp_path)
    AnnotationStore.open(location).add_case(read_volume(shared_data / "lumbar/VB3/case-04/image.nii.gz"), "waiting")
    _viewer, widget = _open(make_napari_viewer, location)
    panel = widget.train_panel
    messages: list[str] = []
    panel.progress.valueChanged.connect(lambda _: messages.append(panel.status_label.text()))
    start = len(notification_manager.records)
    with qtbot.waitSignal(panel.run_done, timeout=RUN_TIMEOUT_MS):
        qtbot.mouseClick(panel.train_button, Qt.MouseButton.LeftButton)

    assert any(m.startswith("comparing the new version's names with its parent's on waiting") for m in messages)
    (version,) = AnnotationStore.open(location).list_models()
    text = panel.status_label.text()
    assert text.startswith(f"{version.model_id} stored; kept ivdnet-lumbar active: the new version validates better")
    assert "names 1 of 1 other cases differently from ivdnet-lumbar at the same places (waiting: " in text
    assert f"Fine-tune: {text}" in notifications_since(start)
    assert AnnotationStore.open(location).active_model() is None
    assert widget.models.active_label.text() == "Active: ivdnet-lumbar — bundled starter model"
    assert widget.model_box.findData(version.model_id) >= 0  # there to look at, and to make active by hand


@pytest.mark.slow
def test_cancel_during_training_stores_nothing(make_napari_viewer, qtbot, training_store_template, tmp_path):
    location = copy_store(training_store_template, tmp_path)
    _viewer, widget = _open(make_napari_viewer, location)
    panel = widget.train_panel
    panel.config_overrides.update(epochs=50, validate_every_epochs=100)  # a long run, no validation on the way
    start = len(notification_manager.records)
    with qtbot.waitSignal(panel.run_done, timeout=RUN_TIMEOUT_MS):
        qtbot.mouseClick(panel.train_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: bool(panel.plot.loss), timeout=RUN_TIMEOUT_MS)  # the first epoch is done
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    assert "Fine-tune: cancelled; nothing was stored" in notifications_since(start)
    assert panel.status_label.text() == "Cancelled: nothing was stored"
    assert panel.train_button.isEnabled() and not panel.cancel_button.isEnabled()
    store = AnnotationStore.open(location)
    assert store.list_models() == [] and store.active_model() is None
    assert widget.model_box.count() == len(bundled_model_names()) + 1  # the bundled models and Browse…


@pytest.mark.slow
def test_train_says_before_the_click_when_nothing_can_judge_and_stores_that_run_unjudged(
    make_napari_viewer, qtbot, shared_data, tmp_path
):
    location = make_store(tmp_path, shared_data, with_annotations=False, extra_images=(sample_t2w_path(),))
    _viewer, widget = _open(make_napari_viewer, location)
    panel = widget.train_panel
    assert not panel.train_button.isEnabled()
    assert "needs at least 1 corrected or verified case" in panel.plan_label.text()

    # a click that gets through anyway (say, from a script) is a notification, not a traceback
    start = len(notification_manager.records)
    with qtbot.waitSignal(panel.run_done, timeout=30_000):
        panel.train()
    (message,) = notifications_since(start)
    assert message.startswith("Fine-tune: fine-tuning needs at least 1 corrected or verified case")
    assert "Traceback" not in message and panel.status_label.text().startswith("Failed: ")

    # the parent's proposal, verified unchanged: the only verified case cannot judge the parent
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        widget.table.selectRow(widget.table.case_ids().index(CASE_ID))
    with qtbot.waitSignal(widget.predicted, timeout=RUN_TIMEOUT_MS):
        qtbot.mouseClick(widget.predict_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(widget.job_done, timeout=30_000):
        qtbot.mouseClick(widget.verify_button, Qt.MouseButton.LeftButton)
    store = AnnotationStore.open(location)
    assert store.case(CASE_ID).status == "verified" and store.revision(CASE_ID).source == "model:ivdnet-lumbar"
    text = panel.plan_label.text()
    assert text.startswith("Fine-tuning learns from 1 corrected case; no independent case to validate on")
    assert "correct or import a reference for at least one more case" in text
    assert f"train only (accepted unchanged from ivdnet-lumbar's proposal: trains, cannot judge it): {CASE_ID}" in text
    assert panel.train_button.isEnabled()

    # trained anyway: the version is stored, not judged, and the bundled parent stays active
    with qtbot.waitSignal(panel.run_done, timeout=RUN_TIMEOUT_MS):
        qtbot.mouseClick(panel.train_button, Qt.MouseButton.LeftButton)
    (version,) = AnnotationStore.open(location).list_models()
    assert panel.status_label.text() == (
        f"{version.model_id} stored; no independent held-out case: not judged; Make active by hand if you trust it"
    )
    assert AnnotationStore.open(location).active_model() is None
    listed = widget.model_box.itemText(widget.model_box.findData(version.model_id))
    assert listed == f"{version.model_id} (fine-tuned from ivdnet-lumbar: not judged, no independent held-out case)"
    assert widget.model_box.itemText(0).startswith("★ ivdnet-lumbar (bundled; ")
    assert widget.model_box.itemText(0).endswith(" mm on its card's dev set, not this store's)")

    # correcting another case by hand gives the run a case to judge on
    with qtbot.waitSignal(widget.case_opened, timeout=30_000):
        (other,) = (row for row, case_id in enumerate(widget.table.case_ids()) if case_id != CASE_ID)
        widget.table.selectRow(other)
    centre = tuple(s // 2 for s in widget.case.labels.data.shape)
    widget.case.labels.paint(centre, 41)
    with qtbot.waitSignal(widget.saved, timeout=30_000):
        qtbot.mouseClick(widget.save_button, Qt.MouseButton.LeftButton)
    assert panel.train_button.isEnabled()
    case_id = widget.annotator.case_id
    assert panel.plan_label.text().startswith(
        f"Fine-tuning learns from 1 corrected case; validates on 1: {case_id} (parent and new version alike)"
    )
