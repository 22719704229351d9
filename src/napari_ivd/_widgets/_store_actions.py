"""The store half of the annotator: open a store, or create one from a folder of scans or an image layer.

A mixin of :class:`~napari_ivd._widgets.annotator.AnnotatorWidget` (it uses the widget's
``dialogs``, ``_run``, ``_confirm_leave`` and case methods), kept apart so each file stays
small.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import napari
from napari.utils.notifications import show_error, show_warning

from napari_ivd import worklist
from napari_ivd._widgets._jobs import notify_error
from napari_ivd.errors import IvdError
from napari_ivd.layer_data import METADATA_KEY
from napari_ivd.store import AnnotationStore

log = logging.getLogger(__name__)


class StoreActions:
    """Open, create and list stores; mixed into the annotator widget."""

    viewer: Any
    dialogs: Any
    store: AnnotationStore | None
    case_id: str | None
    table: Any
    store_label: Any
    models: Any
    train_panel: Any
    _after_job: list[Any]
    _busy: bool
    _run: Callable[..., None]
    _confirm_leave: Callable[..., bool]
    _close_case: Callable[[], None]
    _set_busy: Callable[[bool], None]
    open_case: Callable[[str], None]
    next_case: Callable[[], None]
    guard_window: Callable[[], None]

    def open_store(self, location: str | Path | None = None) -> None:
        """Open an existing store (asks for the folder when ``location`` is None)."""
        location = location or self.dialogs.choose_store()
        if location is None or not self._confirm_leave("open another store"):
            return
        try:
            store = AnnotationStore.open(location)
        except IvdError as exc:
            notify_error("Open store", exc)
            return
        self._use_store(store)

    def _use_store(self, store: AnnotationStore, open_first: bool = False) -> None:
        self._close_case()
        self.store = store
        self.store_label.setText(f"Store: {store.location}")
        self.refresh_cases()
        self.models.set_store(store)
        self.train_panel.set_store(store)
        self._set_busy(self._busy)
        self.guard_window()
        if open_first:
            self._after_job.append(self.next_case)

    def refresh_cases(self) -> None:
        """Re-read every case's status and head revision from the store."""
        if self.store is not None:
            self.table.set_cases([self.store.case(c) for c in self.store.case_ids()], self.case_id)

    def new_store_from_folder(self, folder: Path | None = None, location: Path | None = None) -> None:
        """Create (or extend) a store with every scan under a folder, then open its first case."""
        folder = folder or self.dialogs.choose_image_folder()
        if folder is None:
            return
        try:
            images = worklist.find_images(Path(folder))
        except IvdError as exc:
            notify_error("New store", exc)
            return
        if not images:
            show_warning(f"No NIfTI scans (.nii, .nii.gz) under {folder} (masks and labels are skipped)")
            return
        store = self._create_store(location or Path(folder) / "annotations.zarr", ask=location is None)
        if store is None:
            return

        def imported(report: worklist.ImportReport) -> None:
            for path, message in report.failed:
                show_warning(f"Not imported: {path.name}: {message}")
            self._use_store(store, open_first=True)

        self._run(lambda: worklist.import_images(store, images, Path(folder)), "Import", imported, len(images) + 1)

    def _create_store(self, location: Path, ask: bool) -> AnnotationStore | None:
        """Let the user confirm where (when ``ask``) and leave the open case; create the store there."""
        chosen = self.dialogs.choose_new_store(location) if ask else location
        if chosen is None or not self._confirm_leave("create a store"):
            return None
        try:
            return AnnotationStore.open(chosen, create=True)
        except IvdError as exc:
            notify_error("New store", exc)
            return None

    def new_store_from_layer(self, location: Path | None = None) -> None:
        """Create (or extend) a store with the selected image layer as a case, and open it."""
        layer = self.viewer.layers.selection.active
        if not isinstance(layer, napari.layers.Image) or METADATA_KEY not in layer.metadata:
            show_error("New from layer: select an image layer opened with napari-ivd first")
            return
        try:
            volume = worklist.volume_from_display(layer.data, layer.metadata, layer.name)
        except IvdError as exc:
            notify_error("New from layer", exc)
            return
        store = self._create_store(location or volume.path.parent / "annotations.zarr", ask=location is None)
        if store is None:
            return

        def added(info: Any) -> None:
            layer.visible = False  # the case's own image layer replaces it
            self._use_store(store)
            self._after_job.append(lambda: self.open_case(info.case_id))

        self._run(lambda: worklist.call_steps("adding the image", store.add_case, volume), "New store", added, 1)
