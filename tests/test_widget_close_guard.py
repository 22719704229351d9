"""Closing napari while a fine-tuning run goes on asks first: keep training, or stop it cleanly and close."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from napari.utils.notifications import notification_manager
from qtpy.QtCore import QEvent, QObject

from napari_ivd._widgets import _train_panel
from napari_ivd.progress import Job, Progress, Tally
from napari_ivd.training.finetune import Phase
from widget_support import copy_store, docked_annotator, make_store, notifications_since


@pytest.fixture(scope="module")
def store_template(tmp_path_factory, shared_data) -> Path:
    return make_store(tmp_path_factory.mktemp("close-guard"), shared_data, with_annotations=True)


def _endless_run(*_args, **_kwargs) -> Job[None]:
    """A run that reports every 20 ms and only ends when cancelled (the worker quits at a report)."""

    def body(tally: Tally) -> Iterator[Progress]:
        while True:
            time.sleep(0.02)
            yield tally.partial(0.1, "epoch 1 of 50", Phase("training"))

    return Job(1, body)


class CloseRecorder(QObject):
    """Installed before the annotator's guard, so it sees only the closes the guard lets through.

    It records them and stops them there, standing in for napari's own close (which would
    tear the viewer down under the test).
    """

    def __init__(self) -> None:
        super().__init__()
        self.closes = 0

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Close:
            self.closes += 1
            event.ignore()
            return True
        return False


def test_closing_napari_while_training_asks_keeps_training_or_stops_it_cleanly_then_closes(
    make_napari_viewer, qtbot, store_template, tmp_path, monkeypatch
):
    monkeypatch.setattr(_train_panel, "finetune_steps", _endless_run)
    viewer, widget = docked_annotator(make_napari_viewer)
    widget.auto_predict.setChecked(False)
    widget.open_store(copy_store(store_template, tmp_path))
    window, panel, dialogs = viewer.window._qt_window, widget.train_panel, widget.dialogs
    widget.guard_window()  # as when the dock is first shown
    napari_close = CloseRecorder()
    window.removeEventFilter(widget)
    window.installEventFilter(napari_close)
    window.installEventFilter(widget)  # the last installed filter runs first: the guard, then the recorder
    panel.train()
    qtbot.waitUntil(lambda: panel.status_label.text() == "epoch 1 of 50", timeout=30_000)

    # "keep training": napari does not close, the run goes on
    dialogs.training_answers = ["keep"]
    window.close()
    assert dialogs.asked_training == 1 and napari_close.closes == 0
    qtbot.wait(100)
    assert panel.running and panel.worker is not None

    # "stop": the run is cancelled (nothing stored) and napari closes once it has ended, without asking again
    start = len(notification_manager.records)
    dialogs.training_answers = ["stop"]
    with qtbot.waitSignal(panel.run_done, timeout=30_000):
        window.close()
        assert napari_close.closes == 0  # the close waits for the run to stop
        window.close()  # an impatient second click does not ask again
        assert dialogs.asked_training == 2 and napari_close.closes == 0
    qtbot.waitUntil(lambda: napari_close.closes == 1, timeout=10_000)
    assert not panel.running and dialogs.asked_training == 2
    assert "Fine-tune: cancelled; nothing was stored" in notifications_since(start)

    # no run: closing goes straight through
    window.close()
    assert napari_close.closes == 2 and dialogs.asked_training == 2
