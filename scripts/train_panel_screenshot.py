"""Render docs/train-panel.png: the annotator after a short fine-tuning run, next to a real case.

    python scripts/train_panel_screenshot.py [--cases ../shared/data/lumbar/VB3] [--out docs/train-panel.png]

Makes a throw-away store of three annotated water cases, opens the first, clicks Train with a
run shrunk to a few epochs (so it takes a minute on a CPU), waits for it to end and saves a
screenshot of the whole window. Runs on a private Xvfb when there is no display.
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import nullcontext
from pathlib import Path

from napari_ivd._virtual_display import has_display, virtual_display
from napari_ivd.io import read_volume
from napari_ivd.io.annotations import find_annotations
from napari_ivd.store import AnnotationStore

REPO = Path(__file__).resolve().parents[1]
#: A run of about a minute on a CPU that still draws a few points per curve.
SHORT_RUN = {"epochs": 4, "samples_per_epoch": 8, "batch_size": 2, "validate_every_epochs": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, default=REPO.parent / "shared/data/lumbar/VB3")
    parser.add_argument("--out", type=Path, default=REPO / "docs/train-panel.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, virtual_display((1700, 1250)) if not has_display() else nullcontext():
        import napari
        from qtpy.QtCore import QEventLoop, QTimer
        from qtpy.QtWidgets import QScrollArea

        store = AnnotationStore.open(Path(tmp) / "annotations.zarr", create=True, fsync=False)
        for name in ("case-01", "case-02", "case-03"):
            volume = read_volume(args.cases / name / "image.nii.gz")
            points, mask = find_annotations(args.cases / name, volume.geometry)
            store.add_case(volume, f"{args.cases.name}-{name}", points=points, mask=mask, author="reference")
        viewer = napari.Viewer(show=True, title="napari-ivd annotator")
        viewer.window.resize(1600, 1200)
        _, widget = viewer.window.add_plugin_dock_widget("napari-ivd", "Spine annotator")
        widget.open_store(store.location)
        loop = QEventLoop()
        widget.case_opened.connect(loop.quit)
        widget.table.selectRow(0)
        loop.exec()
        panel = widget.train_panel
        panel.config_overrides = SHORT_RUN
        panel.run_done.connect(loop.quit)
        QTimer.singleShot(600_000, loop.quit)
        panel.train_button.click()
        loop.exec()
        QTimer.singleShot(500, loop.quit)  # the result text re-lays the widget out
        loop.exec()
        bar = widget.findChild(QScrollArea).verticalScrollBar()
        bar.setValue(bar.maximum())  # the Train section, at the bottom of the annotator
        QTimer.singleShot(300, loop.quit)
        loop.exec()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.out), canvas_only=False, flash=False)
        viewer.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
