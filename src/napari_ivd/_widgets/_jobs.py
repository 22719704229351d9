"""Run a core generator off the GUI thread with napari's ``thread_worker``, or on it for debugging.

Every long job of the annotator (import, open, predict, save) is a core generator that
yields progress and returns its result. Here it becomes a napari worker whose progress
shows in napari's activity panel (with napari's own cancel) and whose errors become
notifications, never tracebacks. Set ``NAPARI_IVD_NOTHREADS=1`` to run the same
generators on the main thread instead (debugging, and measuring what the thread buys:
micro-sam and stardist-napari keep the same switch).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error

from napari_ivd.errors import IvdError
from napari_ivd.progress import run_steps

log = logging.getLogger(__name__)

#: Environment switch: run jobs on the main thread (no worker).
NOTHREADS_ENV = "NAPARI_IVD_NOTHREADS"
#: Environment switch: no progress bar in napari's activity panel (progress stays in the widget).
#: Its animated indicator repaints the whole window; with software OpenGL on a small CPU that
#: slows a CPU prediction by about half (see benchmarks/bench_gui.py).
NO_ACTIVITY_ENV = "NAPARI_IVD_NO_ACTIVITY"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def threads_disabled() -> bool:
    """True when ``NAPARI_IVD_NOTHREADS`` asks for jobs on the main thread."""
    return _flag(NOTHREADS_ENV)


def notify_error(what: str, exc: BaseException) -> None:
    """Show a job's failure as a napari notification: our errors as they are, others with their type."""
    if isinstance(exc, IvdError):
        show_error(f"{what}: {exc}")
        return
    log.error("%s failed", what, exc_info=(type(exc), exc, exc.__traceback__))
    show_error(f"{what} failed ({type(exc).__name__}: {exc}); see the log for details")


def start_job(
    make_steps: Callable[[], Generator[Any, None, Any]],
    *,
    what: str,
    total: int = 0,
    on_yield: Callable[[Any], None] | None = None,
    on_return: Callable[[Any], None] | None = None,
    on_abort: Callable[[], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finish: Callable[[], None] | None = None,
) -> GeneratorWorker | None:
    """Run ``make_steps()`` in a napari worker (progress bar ``what``, ``total`` yields); None when run inline.

    Callbacks run on the main thread: ``on_yield`` with each report, ``on_return`` with the
    result, ``on_abort`` after a cancel, ``on_error`` with the exception (after the
    notification), ``on_finish`` always, last.
    """

    def failed(exc: BaseException) -> None:
        notify_error(what, exc)
        if on_error is not None:
            on_error(exc)

    if threads_disabled():
        _run_inline(make_steps, on_yield, on_return, failed, on_finish)
        return None

    def steps() -> Generator[Any, None, Any]:  # a generator function, so napari makes a GeneratorWorker
        return (yield from make_steps())

    progress = None if _flag(NO_ACTIVITY_ENV) else {"total": total, "desc": what}
    worker = create_worker(steps, _progress=progress, _ignore_errors=True, _start_thread=False)
    pbar = getattr(worker, "pbar", None)
    if pbar is not None and total:
        worker.yielded.disconnect(pbar.increment_with_overflow)  # done in `yielded`, after on_yield
    ended = False

    def end(*_: Any) -> None:
        nonlocal ended
        ended = True

    for signal in (worker.returned, worker.aborted, worker.errored, worker.finished):
        signal.connect(end)

    def yielded(report: Any) -> None:
        # napari's activity bar runs the event loop while it redraws, which hands out the next
        # reports and the end of the job right there: show this report before touching the bar,
        # and leave the bar alone once the job has ended meanwhile (it is closed)
        if on_yield is not None:
            on_yield(report)
        message = getattr(report, "message", None)
        if pbar is not None and not ended:
            if message:
                pbar.set_description(f"{what}: {message}")
            if total:
                pbar.increment_with_overflow()

    worker.yielded.connect(yielded)
    worker.errored.connect(failed)
    if on_return is not None:
        worker.returned.connect(on_return)
    if on_abort is not None:
        worker.aborted.connect(on_abort)
    if on_finish is not None:
        worker.finished.connect(on_finish)
    worker.start()
    return worker


def _run_inline(
    make_steps: Callable[[], Generator[Any, None, Any]],
    on_yield: Callable[[Any], None] | None,
    on_return: Callable[[Any], None] | None,
    failed: Callable[[BaseException], None],
    on_finish: Callable[[], None] | None,
) -> None:
    try:
        result = run_steps(make_steps(), on_yield)
    except Exception as exc:
        failed(exc)
    else:
        if on_return is not None:
            on_return(result)
    finally:
        if on_finish is not None:
            on_finish()
