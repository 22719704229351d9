"""The questions the annotator asks the user, in one replaceable object.

Every modal dialog goes through :class:`Dialogs`, so tests (and scripted sessions) swap in
an object with the same methods that answers without a window: ``widget.dialogs = Fake()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from qtpy.QtWidgets import QFileDialog, QMessageBox, QWidget

from napari_ivd.annotator import ConflictAnswer

UnsavedAnswer = Literal["save", "discard", "cancel"]
PredictionAnswer = Literal["keep", "replace"]
TrainingAnswer = Literal["stop", "keep"]


class Dialogs:
    """Qt dialogs parented to the annotator widget."""

    def __init__(self, parent: QWidget | None = None) -> None:
        self.parent = parent

    def ask_unsaved(self, case_id: str, action: str) -> UnsavedAnswer:
        """Case ``case_id`` has unsaved edits and the user asked to ``action``: save, discard or cancel?"""
        box = QMessageBox(self.parent)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Unsaved correction")
        box.setText(f"{case_id} has unsaved changes.")
        box.setInformativeText(f"Save them as a new revision before you {action}?")
        box.setStandardButtons(
            QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard | QMessageBox.StandardButton.Cancel
        )
        box.setDefaultButton(QMessageBox.StandardButton.Save)
        answer = box.exec()
        if answer == QMessageBox.StandardButton.Save:
            return "save"
        if answer == QMessageBox.StandardButton.Discard:
            return "discard"
        return "cancel"

    def ask_prediction_over_edits(self, case_id: str, edited: list[str]) -> PredictionAnswer:
        """``edited`` layers of ``case_id`` were changed while the prediction ran: keep them, or replace them?"""
        box = QMessageBox(self.parent)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Prediction finished")
        box.setText(f"You edited the {' and the '.join(edited)} of {case_id} while the prediction ran.")
        box.setInformativeText(
            "Keep your edits (the prediction fills only what you did not touch), or replace them with the "
            "prediction? The prediction stays in the case's history as a proposal either way."
        )
        keep = box.addButton("Keep my edits", QMessageBox.ButtonRole.AcceptRole)
        box.addButton("Use the prediction", QMessageBox.ButtonRole.DestructiveRole)
        box.setDefaultButton(keep)
        box.exec()
        return "keep" if box.clickedButton() in (keep, None) else "replace"

    def ask_stop_training(self) -> TrainingAnswer:
        """napari is closing while a fine-tuning run goes on: stop the run (and close), or keep training?"""
        box = QMessageBox(self.parent)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Fine-tuning in progress")
        box.setText("A fine-tuning run is still going; closing napari stops it.")
        box.setInformativeText(
            "Stop the run and close napari once it has stopped (nothing of this run is stored), or keep training?"
        )
        stop = box.addButton("Stop training and close", QMessageBox.ButtonRole.DestructiveRole)
        keep = box.addButton("Keep training", QMessageBox.ButtonRole.RejectRole)
        box.setDefaultButton(keep)
        box.exec()
        return "stop" if box.clickedButton() is stop else "keep"

    def ask_conflict(self, case_id: str, started_from: str | None, head: str | None) -> ConflictAnswer:
        """``head`` was saved after this edit started from ``started_from``: keep mine on top, reload, or cancel?"""
        box = QMessageBox(self.parent)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Saved by someone else meanwhile")
        box.setText(f"{case_id}: {head} was saved after your edit started from {started_from}.")
        box.setInformativeText(
            f"Keep your edit as a new revision on top of {head} (both stay in the history), "
            f"or reload {case_id} to see {head} (your edit is dropped)?"
        )
        on_top = box.addButton("Keep mine on top", QMessageBox.ButtonRole.AcceptRole)
        reload = box.addButton("Reload", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(on_top)
        box.exec()
        clicked = box.clickedButton()
        return "on_top" if clicked is on_top else "reload" if clicked is reload else "cancel"

    def choose_store(self) -> Path | None:
        """An existing annotation store folder (``*.zarr``), or None."""
        path = QFileDialog.getExistingDirectory(self.parent, "Open annotation store (a .zarr folder)")
        return Path(path) if path else None

    def choose_image_folder(self) -> Path | None:
        """A folder of scans (searched recursively; BIDS datasets included), or None."""
        path = QFileDialog.getExistingDirectory(self.parent, "Folder of scans to annotate")
        return Path(path) if path else None

    def choose_new_store(self, suggestion: Path) -> Path | None:
        """Where to create (or extend) a store; ``suggestion`` is pre-filled."""
        path, _ = QFileDialog.getSaveFileName(
            self.parent, "Create annotation store", str(suggestion), "Annotation store (*.zarr)"
        )
        if not path:
            return None
        return Path(path) if path.endswith(".zarr") else Path(path + ".zarr")

    def choose_model_folder(self) -> Path | None:
        """A model folder (``card.json`` + ``weights.safetensors``), or None."""
        path = QFileDialog.getExistingDirectory(self.parent, "Model folder (card.json + weights.safetensors)")
        return Path(path) if path else None
