"""Driving the progress generators every long job of the core is written as (no Qt, no napari).

A job yields small progress records and returns its result; a GUI worker drives it in a
thread, the CLI and plain calls drive it here.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

__all__ = ["run_steps"]

T = TypeVar("T")


def run_steps(steps: Generator[Any, None, T], on_report: Callable[[Any], None] | None = None) -> T:
    """Drive a progress generator to its end on the calling thread, passing each report to ``on_report``.

    Returns the generator's result (its ``return`` value).
    """
    while True:
        try:
            report = next(steps)
        except StopIteration as done:
            return done.value
        if on_report is not None:
            on_report(report)
