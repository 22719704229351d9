"""Render docs/widget.png: the annotator docked next to a predicted real case.

    python scripts/widget_screenshot.py [--image ../shared/data/lumbar/VB2/case-07/image.nii.gz] [--out docs/widget.png]

Makes a throw-away store with the scan, clicks Next case (which predicts it), selects one
disc so the correction tools show its level, and saves a screenshot of the whole window.
Runs on a private Xvfb when there is no display.
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import nullcontext
from pathlib import Path

from napari_ivd._virtual_display import has_display, virtual_display
from napari_ivd.io import read_volume
from napari_ivd.store import AnnotationStore

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=REPO.parent / "shared/data/lumbar/VB2/case-07/image.nii.gz")
    parser.add_argument("--case", default="VB2_case-07")
    parser.add_argument("--out", type=Path, default=REPO / "docs/widget.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, virtual_display((1700, 1100)) if not has_display() else nullcontext():
        import napari
        from qtpy.QtCore import QEventLoop, QTimer

        store = AnnotationStore.open(Path(tmp) / "annotations.zarr", create=True, fsync=False)
        store.add_case(read_volume(args.image), args.case)
        viewer = napari.Viewer(show=True, title="napari-ivd annotator")
        viewer.window.resize(1600, 1000)
        _, widget = viewer.window.add_plugin_dock_widget("napari-ivd", "Spine annotator")
        widget.open_store(store.location)
        loop = QEventLoop()
        widget.predicted.connect(loop.quit)
        QTimer.singleShot(600_000, loop.quit)
        widget.next_button.click()
        loop.exec()
        discs = widget.case.points_layers["disc"]
        levels = list(discs.features["level"])
        viewer.layers.selection.active = discs
        discs.selected_data = {levels.index("L4-L5") if "L4-L5" in levels else 0}
        viewer.layers.selection.active = discs
        QTimer.singleShot(500, loop.quit)
        loop.exec()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.out), canvas_only=False, flash=False)
        widget.dialogs.ask_unsaved = lambda *a: "discard"
        viewer.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
