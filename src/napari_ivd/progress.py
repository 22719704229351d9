"""One progress type for every long job of the core, jobs nesting jobs, and the driver (no Qt, no napari).

A long job (import images, open a case, predict, rank, train) is a :class:`Job`: a
generator that yields :class:`Progress` reports and returns its result, together with how
many steps it takes (``total``), known before it starts. A job counts its own steps and
runs sub-jobs through a :class:`Tally`, which numbers every report and shifts those of a
sub-job into place, so a job's total is its own steps plus its sub-jobs' totals: a job
states only the steps it reports itself, never another job's count (tests check each job
reports as many steps as it announces). A GUI worker drives a job in a thread (its progress
bar placed by the reports), the CLI and plain calls drive it with :func:`run_steps`.

Example
-------
>>> def body(tally):
...     yield tally.step("reading")
...     return (yield from tally.run(inner, prefix="case 1"))
>>> job = Job(1 + inner.total, body)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Job", "Progress", "Tally", "call_job", "run_steps"]

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class Progress:
    """Where a job is: ``done`` of ``total`` steps finished, what it is doing now, and its figures if any.

    ``done`` counts the steps finished before this report (the first report says 0); it is
    fractional inside a step measured by its own budget (training: the share of its time or
    epochs spent). ``detail`` carries what a report has beyond a line of text (the training
    figures of an epoch).
    """

    done: float
    total: int
    message: str
    detail: Any = None

    @property
    def fraction(self) -> float:
        """Share of the job done, in [0, 1]."""
        return min(1.0, max(0.0, self.done / self.total)) if self.total else 1.0


class Tally:
    """Numbers a running job's reports: its own steps, and those of the sub-jobs it runs, shifted into place."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0

    def step(self, message: str, detail: Any = None) -> Progress:
        """The report that one of the job's own steps starts (yield it); counts that step."""
        report = Progress(self.done, self.total, message, detail)
        self.done += 1
        return report

    def partial(self, fraction: float, message: str, detail: Any = None) -> Progress:
        """A report ``fraction`` of the way through the current step (a step with its own budget); counts nothing."""
        return Progress(self.done + min(1.0, max(0.0, fraction)), self.total, message, detail)

    def skip(self, steps: int) -> None:
        """Count ``steps`` that a branch of the job does not take (a case that failed), so the rest stay in place."""
        self.done += steps

    def run(
        self,
        job: Job[U],
        prefix: str = "",
        steps: int | None = None,
        describe: Callable[[Progress], tuple[str, Any]] | None = None,
    ) -> Generator[Progress, None, U]:
        """Run a sub-job inside this one (``yield from``): its reports shifted by the steps done; returns its result.

        The sub-job counts as its ``total`` steps, or as ``steps`` of this job (its reports
        scaled to them: a short sub-job squeezed, a long one given room), whatever it
        reported. ``describe(report)`` gives the message and detail a sub-job's report is
        shown with, instead of its own (``prefix: message``).
        """
        start, span = self.done, job.total if steps is None else steps
        scale = span / job.total if job.total else 0.0
        reports = iter(job)
        while True:
            try:
                report = next(reports)
            except StopIteration as finished:
                self.done = start + span
                return finished.value
            if describe is not None:
                message, detail = describe(report)
            else:
                message, detail = (f"{prefix}: {report.message}" if prefix else report.message), report.detail
            yield Progress(start + report.done * scale, self.total, message, detail)


class Job(Generic[T]):
    """A long task: ``total`` steps, known before it starts, and the generator reporting them.

    ``body(tally)`` is a generator function: it yields :meth:`Tally.step` (and
    :meth:`Tally.partial`) reports, runs sub-jobs with ``yield from tally.run(sub)`` and
    returns the job's result. ``total`` is the body's own steps plus the totals of the
    sub-jobs it runs. Iterating a job (``for report in job``, ``yield from job``) runs it
    once; stopping early cancels it between two steps.
    """

    def __init__(self, total: int, body: Callable[[Tally], Generator[Progress, None, T]]) -> None:
        self.total = int(total)
        self._body = body

    def __iter__(self) -> Generator[Progress, None, T]:
        return self._body(Tally(self.total))


def call_job(message: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> Job[T]:
    """One call as a one-step job, so a short store write runs like any other job."""

    def body(tally: Tally) -> Generator[Progress, None, T]:
        yield tally.step(message)
        return func(*args, **kwargs)

    return Job(1, body)


def run_steps(steps: Job[T] | Generator[Any, None, T], on_report: Callable[[Progress], None] | None = None) -> T:
    """Drive a job (or any progress generator) to its end on the calling thread, passing each report to ``on_report``.

    Returns the job's result (its generator's ``return`` value).
    """
    reports = iter(steps)
    while True:
        try:
            report = next(reports)
        except StopIteration as done:
            return done.value
        if on_report is not None:
            on_report(report)
