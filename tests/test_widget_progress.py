"""The viewer's jobs announce the steps they report, and napari's bar follows the reports."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from napari_ivd._widgets._jobs import _place
from napari_ivd._widgets.annotator import opening_job
from napari_ivd.annotator import Annotator
from napari_ivd.io import Volume, VolumeGeometry
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.progress import Progress, run_steps
from napari_ivd.store import AnnotationStore


@pytest.fixture
def annotator() -> Annotator:
    store = AnnotationStore.open(f"memory://widget-progress-{uuid.uuid4().hex}", create=True)
    array = np.random.default_rng(0).integers(0, 500, (6, 48, 48)).astype(np.int16)
    volume = Volume(array, VolumeGeometry(np.diag([8.0, 1.0, 1.0, 1.0]), array.shape, "noise"), Path("n.nii.gz"))
    store.add_case(volume, "annotated", points=[LabelledPoint("L3", (3.0, 24.0, 24.0))])
    return Annotator(store)


def test_opening_a_case_in_the_viewer_announces_exactly_the_steps_it_reports(annotator):
    job = opening_job(annotator, "annotated")
    reports: list[Progress] = []
    opened, _image, _labels = run_steps(job, reports.append)
    assert job.total == annotator.open_steps("annotated").total + 1  # the core's steps, then the layers
    assert [r.done for r in reports] == list(range(job.total)) and {r.total for r in reports} == {job.total}
    assert reports[-1].message == "preparing layers" and opened.case_id == "annotated"


class _Bar:
    """napari's progress bar as far as the jobs use it."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.description = total, 0, ""

    def set_description(self, text: str) -> None:
        self.description = text

    def update(self, n: int) -> None:
        self.n += n


def test_the_bar_shows_the_step_under_way_of_the_total_the_reports_state():
    bar = _Bar(total=0)  # a job made in the worker: its total comes with its first report
    _place(bar, "Rank cases", Progress(0, 6, "scan-1: reading"))
    assert (bar.total, bar.n, bar.description) == (6, 1, "Rank cases: scan-1: reading")
    _place(bar, "Rank cases", Progress(2.5, 6, "scan-1: predicting"))  # inside the third step
    assert bar.n == 3
    _place(bar, "Rank cases", Progress(5, 6, "scan-2: embedding"))
    assert (bar.total, bar.n) == (6, 6)
