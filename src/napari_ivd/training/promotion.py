"""Before a version that validates better becomes active: does it rename levels on cases it never saw?

A fine-tuning run is judged on its held-out cases, and with four corrected cases that is
one case. On T1w scans a fine-tuned starter validated better than its parent on its one
held-out case (1.6 mm against the parent's 20 mm cap) and named another scan, which neither
had trained on, one level low from top to bottom (docs/fine-tuning-evidence.md). One
held-out case cannot see that. The store's other cases can: neither trained on nor held out,
mostly without a reference, but where the new version and its parent name the same
structure (same kind, same place) differently, one of the two is wrong, and only a person
can say which. So such a version is stored but not made active, and the cases are named.

Which cases: :attr:`~napari_ivd.training.store_cases.TrainingPlan.compared` (at most six,
those still to be corrected first; two predictions each).
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_ivd import anatomy
from napari_ivd.errors import IvdError
from napari_ivd.inference import Prediction, predict
from napari_ivd.metrics import renamed_levels
from napari_ivd.models import load_checkpoint
from napari_ivd.progress import Job, Progress, Tally
from napari_ivd.store import AnnotationStore

__all__ = ["Renamed", "compare_versions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Renamed:
    """One case on which the new version names structures differently from its parent."""

    case_id: str
    #: The new version's name -> the parent's name of the structure at the same place.
    names: dict[str, str]

    def describe(self) -> str:
        """``"case-15: L5 was L4, ..."``, cranio-caudal."""
        pairs = sorted(self.names.items(), key=lambda item: anatomy.structure(item[0]).order)
        return f"{self.case_id}: " + ", ".join(f"{new} was {old}" for new, old in pairs)


def _positions(prediction: Prediction) -> dict[str, np.ndarray]:
    return {s.name: np.asarray(s.xyz_mm, dtype=np.float64) for s in prediction.structures}


def compare_versions(
    store: AnnotationStore, case_ids: Sequence[str], parent_dir: Path, child_dir: Path, device: torch.device
) -> Job[list[Renamed]]:
    """Predict each case with parent and new version; the cases where the new one renames a structure.

    A job of one step per case. A case whose image cannot be read is left out (logged): the
    comparison is a guard, and a damaged case must not fail the run that trained.
    """

    def body(tally: Tally) -> Generator[Progress, None, list[Renamed]]:
        parent, parent_card = load_checkpoint(parent_dir, device=device)
        child, child_card = load_checkpoint(child_dir, device=device)
        found = []
        for case_id in case_ids:
            yield tally.step(f"comparing the new version's names with its parent's on {case_id}")
            try:
                volume = store.read_image(case_id)
            except IvdError as exc:
                log.warning("left %s out of the naming comparison: %s", case_id, exc)
                continue
            before = _positions(predict(volume, parent, parent_card, device))
            names = renamed_levels(_positions(predict(volume, child, child_card, device)), before)
            if names:
                found.append(Renamed(case_id, names))
        return found

    return Job(len(case_ids), body)
