"""napari-ivd: intervertebral disc and vertebra annotation of spine MRI in napari."""

__version__ = "0.1.0"
