"""One progress type: jobs report steps done of a total derived from their own steps and their sub-jobs'."""

from __future__ import annotations

import uuid
from collections.abc import Generator
from pathlib import Path

import numpy as np
import pytest

from napari_ivd.annotator import Annotator
from napari_ivd.io import Volume, VolumeGeometry
from napari_ivd.io.annotations import LabelledPoint
from napari_ivd.progress import Job, Progress, Tally, call_job, run_steps
from napari_ivd.store import AnnotationStore
from napari_ivd.worklist import import_images, open_case_steps, predict_case_steps


def _counting(n: int, result: str) -> Job[str]:
    """A job of ``n`` steps returning ``result``."""

    def body(tally: Tally) -> Generator[Progress, None, str]:
        for k in range(n):
            yield tally.step(f"step {k}")
        return result

    return Job(n, body)


def _reports(job: Job) -> tuple[list[Progress], object]:
    reports: list[Progress] = []
    result = run_steps(job, reports.append)
    return reports, result


def _announces_what_it_reports(job: Job) -> list[Progress]:
    """The reports of ``job``, after checking there is one per step it announced, numbered in order."""
    reports, _ = _reports(job)
    assert len(reports) == job.total
    assert [r.done for r in reports] == list(range(job.total))
    assert {r.total for r in reports} == {job.total}
    return reports


def test_a_nested_job_counts_its_own_steps_and_its_sub_jobs_in_place():
    inner = _counting(3, "inner result")

    def body(tally: Tally) -> Generator[Progress, None, str]:
        yield tally.step("before")
        got = yield from tally.run(inner, prefix="case 1")
        yield tally.step("after")
        return got.upper()

    outer = Job(1 + inner.total + 1, body)
    reports, result = _reports(outer)
    assert outer.total == 5 and result == "INNER RESULT"
    assert [r.done for r in reports] == [0, 1, 2, 3, 4] and all(r.total == 5 for r in reports)
    assert [r.message for r in reports] == ["before", "case 1: step 0", "case 1: step 1", "case 1: step 2", "after"]


def test_jobs_nest_two_deep_and_a_sub_job_can_count_as_fewer_steps():
    leaf = _counting(4, "leaf")

    def middle_body(tally: Tally) -> Generator[Progress, None, str]:
        yield tally.step("middle")
        return (yield from tally.run(leaf))

    middle = Job(1 + leaf.total, middle_body)

    def outer_body(tally: Tally) -> Generator[Progress, None, str]:
        got = yield from tally.run(middle, steps=1)  # squeezed into one step
        yield tally.step("last")
        return got

    outer = Job(1 + 1, outer_body)
    reports, result = _reports(outer)
    assert result == "leaf"
    assert [r.done for r in reports] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert [round(r.fraction, 2) for r in reports] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]


def test_a_skipped_branch_keeps_the_later_steps_in_place_and_partial_reports_count_nothing():
    def body(tally: Tally) -> Generator[Progress, None, None]:
        yield tally.step("one")
        tally.skip(2)  # a branch not taken
        yield tally.partial(0.5, "halfway through the fourth")
        yield tally.step("four")

    reports, _ = _reports(Job(4, body))
    assert [r.done for r in reports] == [0, 3.5, 3] and [r.fraction for r in reports] == [0, 0.875, 0.75]


def test_a_call_is_a_one_step_job_and_a_job_runs_anew_each_time():
    job = call_job("adding", lambda a, b: a + b, 2, b=3)
    assert job.total == 1 and _reports(job) == ([Progress(0, 1, "adding")], 5)
    counting = _counting(2, "again")
    assert _reports(counting)[1] == _reports(counting)[1] == "again"


def _volume(seed: int = 0) -> Volume:
    array = np.random.default_rng(seed).integers(0, 500, (6, 48, 48)).astype(np.int16)
    return Volume(array, VolumeGeometry(np.diag([8.0, 1.0, 1.0, 1.0]), array.shape, "noise"), Path(f"n{seed}.nii.gz"))


@pytest.fixture
def store() -> AnnotationStore:
    store = AnnotationStore.open(f"memory://progress-{uuid.uuid4().hex}", create=True)
    store.add_case(_volume(0), "image-only")
    store.add_case(_volume(1), "annotated", points=[LabelledPoint("L3", (3.0, 24.0, 24.0))])
    return store


@pytest.mark.parametrize("case_id", ["image-only", "annotated"])
def test_opening_a_case_announces_exactly_the_steps_it_reports(store, case_id):
    opening = open_case_steps(store, case_id)
    reports = _announces_what_it_reports(opening)
    assert opening.total == 2 and case_id in reports[0].message
    assert _announces_what_it_reports(Annotator(store).open_steps(case_id))


def test_predicting_a_case_announces_exactly_the_steps_it_reports(store):
    reports = _announces_what_it_reports(predict_case_steps(store, "image-only", _volume(0), device="cpu"))
    assert reports[0].message.startswith("loading the model") and reports[-1].message.startswith("keeping")
    assert store.case("image-only").n_proposals == 1
    annotator = Annotator(store)
    annotator.open("annotated")
    _announces_what_it_reports(annotator.predict_steps(device="cpu"))


def test_importing_announces_a_step_per_image(tmp_path, store):
    images = [tmp_path / "missing-1.nii.gz", tmp_path / "missing-2.nii.gz"]
    job = import_images(store, images, tmp_path)
    _announces_what_it_reports(job)
    assert len(run_steps(import_images(store, images, tmp_path)).failed) == 2
