"""``napari-ivd demo``: the bundled sample in napari with the starter model's proposals on it.

With a display it leaves the viewer open; headless it renders on a private X server and
writes the proposals, a screenshot and a summary of what it showed into an output folder.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from napari_ivd._virtual_display import has_display, virtual_display
from napari_ivd.data import sample_t2w_path
from napari_ivd.inference import Prediction, predict, prediction_points, save_prediction
from napari_ivd.io import Volume, read_nifti
from napari_ivd.layer_data import POINTS_SLAB_MM, labels_layer_data, points_layer_data, view_from_metadata
from napari_ivd.models import find_model_dir, load_checkpoint

log = logging.getLogger(__name__)

SAMPLE_KEY = "lumbar_t2w"


def _summary(viewer: Any, image: Any, prediction: Prediction) -> dict[str, Any]:
    view = view_from_metadata(image.metadata, image.name)
    return {
        "layer": image.name,
        "source": image.metadata["napari_ivd"]["source"],
        "file_shape": list(view.file.shape),
        "file_orientation": "".join(view.file.axcodes),
        "display_shape": list(image.data.shape),
        "display_orientation": "".join(view.display.axcodes),
        "scale_mm": [float(s) for s in image.scale],
        "shown_slice": round(viewer.dims.point[0] / image.scale[0]),
        "model": prediction.model,
        "levels": [s.name for s in prediction.structures],
        "predict_seconds": prediction.seconds,
        "layers": [layer.name for layer in viewer.layers],
    }


def _show_sample_with_prediction(show: bool) -> tuple[Any, Any, Prediction, Volume]:
    """A viewer with the sample, the starter model's proposals on it, at the mid-sagittal slice."""
    import napari

    viewer = napari.Viewer(title="napari-ivd demo", show=show)
    viewer.open_sample("napari-ivd", SAMPLE_KEY)
    image = viewer.layers[-1]
    volume = read_nifti(sample_t2w_path())
    model, card = load_checkpoint(find_model_dir())
    prediction = predict(volume, model, card)
    points = prediction_points(prediction)
    for layer_data in (
        labels_layer_data(prediction.mask_tss, volume),
        points_layer_data(points, volume, "vertebra"),
        points_layer_data(points, volume, "disc"),
    ):
        viewer.add_layer(napari.layers.Layer.create(*layer_data))
    viewer.dims.axis_labels = image.axis_labels
    viewer.dims.margin_left = viewer.dims.margin_right = (POINTS_SLAB_MM, 0.0, 0.0)
    viewer.dims.set_point(0, prediction.mid_sagittal_mm)
    viewer.layers.selection.active = image
    viewer.reset_view()
    return viewer, image, prediction, volume


def run_demo(out_dir: Path, headless: bool | None = None) -> Path | None:
    """Open the sample and predict on it; headless, write the outputs and a screenshot to ``out_dir``.

    Headless, ``out_dir`` receives ``screenshot.png``, ``summary.json`` and the prediction
    files (``points.csv``, ``discs.nii.gz``, ``levels.nii.gz``, ``mask.nii.gz``). Returns the
    output folder when headless, ``None`` after an interactive session ends.
    """
    headless = not has_display() if headless is None else headless
    if not headless:
        import napari

        _show_sample_with_prediction(show=True)
        napari.run()
        return None
    with virtual_display() if not has_display() else nullcontext():
        viewer, image, prediction, volume = _show_sample_with_prediction(show=True)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            viewer.window.resize(1400, 1000)
            viewer.screenshot(str(out_dir / "screenshot.png"), canvas_only=False, flash=False)
            save_prediction(prediction, volume, out_dir)
            (out_dir / "summary.json").write_text(json.dumps(_summary(viewer, image, prediction), indent=2))
        finally:
            viewer.close()
    log.info("wrote %s", out_dir)
    return out_dir
