"""Where a model is: a model folder given by path, or a model bundled with napari-ivd, by name."""

from __future__ import annotations

from pathlib import Path

from napari_ivd.errors import CheckpointError
from napari_ivd.models.registry import CARD_NAME

__all__ = ["BUNDLED_MODELS_DIR", "DEFAULT_MODEL", "bundled_model_names", "find_model_dir"]

BUNDLED_MODELS_DIR = Path(__file__).parent.parent / "weights"
DEFAULT_MODEL = "ivdnet-lumbar"


def find_model_dir(name_or_path: str | Path | None = None) -> Path:
    """A model folder (``card.json`` + ``weights.safetensors``): a path, or a bundled model's name.

    ``None`` means the bundled starter model, whatever the working directory holds.

    Raises
    ------
    CheckpointError
        Neither a model folder nor the name of a bundled model; the message lists those.
    """
    if name_or_path is None:  # the default is always the bundled model, never a folder of that name here
        name_or_path = BUNDLED_MODELS_DIR / DEFAULT_MODEL
    candidate = Path(name_or_path)
    if (candidate / CARD_NAME).is_file():
        return candidate
    bundled = BUNDLED_MODELS_DIR / candidate.name
    if not candidate.exists() and (bundled / CARD_NAME).is_file():
        return bundled
    raise CheckpointError(
        f"model {str(name_or_path)!r}: not a model folder (no {CARD_NAME}) and not a bundled model; "
        f"bundled: {', '.join(bundled_model_names()) or 'none'}"
    )


def bundled_model_names() -> list[str]:
    """Names of the models shipped with napari-ivd (folders with a ``card.json``), the default first."""
    return sorted(
        (p.parent.name for p in BUNDLED_MODELS_DIR.glob(f"*/{CARD_NAME}")), key=lambda n: (n != DEFAULT_MODEL, n)
    )
