"""``napari-ivd demo``: the bundled sample in a napari viewer, exactly as a user opens it.

With a display it leaves the viewer open; headless it renders on a private X server and
writes a screenshot plus a summary of what it showed into an output folder.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from napari_ivd._virtual_display import has_display, virtual_display
from napari_ivd.layer_data import view_from_metadata

log = logging.getLogger(__name__)

SAMPLE_KEY = "lumbar_t2w"


def _summary(viewer: Any) -> dict[str, Any]:
    layer = viewer.layers[-1]
    view = view_from_metadata(layer.metadata, layer.name)
    return {
        "layer": layer.name,
        "source": layer.metadata["napari_ivd"]["source"],
        "file_shape": list(view.file.shape),
        "file_orientation": "".join(view.file.axcodes),
        "display_shape": list(layer.data.shape),
        "display_orientation": "".join(view.display.axcodes),
        "scale_mm": [float(s) for s in layer.scale],
        "shown_slice": round(viewer.dims.point[0] / layer.scale[0]),
    }


def _show_sample(show: bool) -> Any:
    import napari

    viewer = napari.Viewer(title="napari-ivd demo", show=show)
    viewer.open_sample("napari-ivd", SAMPLE_KEY)
    layer = viewer.layers[-1]
    viewer.dims.axis_labels = layer.axis_labels
    viewer.dims.set_point(0, layer.data.shape[0] // 2 * layer.scale[0])  # mid-sagittal slice
    viewer.reset_view()
    return viewer


def run_demo(out_dir: Path, headless: bool | None = None) -> Path | None:
    """Open the sample; headless, write ``screenshot.png`` and ``summary.json`` to ``out_dir``.

    Returns the output folder when headless, ``None`` after an interactive session ends.
    """
    headless = not has_display() if headless is None else headless
    if not headless:
        import napari

        _show_sample(show=True)
        napari.run()
        return None
    with virtual_display() if not has_display() else nullcontext():
        viewer = _show_sample(show=True)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            viewer.window.resize(1400, 1000)
            viewer.screenshot(str(out_dir / "screenshot.png"), canvas_only=False, flash=False)
            summary = _summary(viewer)
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        finally:
            viewer.close()
    log.info("wrote %s", out_dir)
    return out_dir
