"""Training data for napari-ivd's keypoint and segmentation models (no Qt, no napari).

``cases`` loads labelled scans into :class:`~napari_ivd.training.cases.LabelledCase` objects
and splits them into train/dev sets; ``data`` turns them into augmented sagittal training
samples following the conventions of ``docs/pipeline.md``.
"""
