"""napari dock widgets of napari-ivd (the GUI side: thin views over the core)."""

from __future__ import annotations

from napari_ivd._widgets.annotator import AnnotatorWidget

__all__ = ["AnnotatorWidget"]
