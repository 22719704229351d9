"""The annotator's store actions: open a store, or create one from a folder of scans or an image layer.

Composed into :class:`~napari_ivd._widgets.annotator.AnnotatorWidget`, whose few members
it uses are named by :class:`StoreHost`; kept apart so each file stays small.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import napari
from napari.utils.notifications import show_error, show_warning

from napari_ivd import worklist
from napari_ivd._widgets._jobs import notify_error
from napari_ivd.errors import IvdError
from napari_ivd.layer_data import METADATA_KEY, volume_from_display
from napari_ivd.progress import Job, call_job
from napari_ivd.store import AnnotationStore, CaseInfo

log = logging.getLogger(__name__)


class StoreHost(Protocol):
    """What the store actions need from the widget they serve."""

    viewer: napari.Viewer
    dialogs: Any  # Dialogs, or a scripted stand-in with the same methods

    def run_job(self, job: Job[Any], what: str, on_return: Callable[[Any], None]) -> None:
        """Run a core job in a worker, then ``on_return`` with its result."""

    def after_job(self, follow_up: Callable[[], None]) -> None:
        """Call ``follow_up`` once the running job has ended."""

    def confirm_leave(self, action: str, then: Callable[[], None] | None = None) -> bool:
        """Ask before unsaved edits would be dropped; True when the caller may go on."""

    def use_store(self, store: AnnotationStore, open_first: bool = False) -> None:
        """Work on ``store`` from now on."""

    def open_case(self, case_id: str) -> None:
        """Show a case."""


class StoreActions:
    """Open and create stores for ``host``, asking through its dialogs and running imports in its workers."""

    def __init__(self, host: StoreHost) -> None:
        self.host = host

    def open_store(self, location: str | Path | None = None) -> None:
        """Open an existing store (asks for the folder when ``location`` is None)."""
        location = location or self.host.dialogs.choose_store()
        if location is None or not self.host.confirm_leave("open another store"):
            return
        try:
            store = AnnotationStore.open(location)
        except IvdError as exc:
            notify_error("Open store", exc)
            return
        self.host.use_store(store)

    def new_store_from_folder(self, folder: Path | None = None, location: Path | None = None) -> None:
        """Create (or extend) a store with every scan under a folder, then open its first case."""
        folder = folder or self.host.dialogs.choose_image_folder()
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
            self.host.use_store(store, open_first=True)

        root = Path(folder)
        self.host.run_job(worklist.import_images(store, images, root), "Import", imported)

    def _create_store(self, location: Path, ask: bool) -> AnnotationStore | None:
        """Let the user confirm where (when ``ask``) and leave the open case; create the store there."""
        chosen = self.host.dialogs.choose_new_store(location) if ask else location
        if chosen is None or not self.host.confirm_leave("create a store"):
            return None
        try:
            return AnnotationStore.open(chosen, create=True)
        except IvdError as exc:
            notify_error("New store", exc)
            return None

    def new_store_from_layer(self, location: Path | None = None) -> None:
        """Create (or extend) a store with the selected image layer as a case, and open it."""
        layer = self.host.viewer.layers.selection.active
        if not isinstance(layer, napari.layers.Image) or METADATA_KEY not in layer.metadata:
            show_error("New from layer: select an image layer opened with napari-ivd first")
            return
        try:
            volume = volume_from_display(layer.data, layer.metadata, layer.name)
        except IvdError as exc:
            notify_error("New from layer", exc)
            return
        store = self._create_store(location or volume.path.parent / "annotations.zarr", ask=location is None)
        if store is None:
            return

        def added(info: CaseInfo) -> None:
            layer.visible = False  # the case's own image layer replaces it
            self.host.use_store(store)
            self.host.after_job(lambda: self.host.open_case(info.case_id))

        self.host.run_job(call_job("adding the image", store.add_case, volume), "New store", added)
