"""Run a core job off the GUI thread with napari's ``thread_worker``, or on it for debugging.

Every long job of the annotator (import, open, predict, save) is a core
:class:`~napari_ivd.progress.Job` that reports :class:`~napari_ivd.progress.Progress` and
returns its result. Here it becomes a napari worker whose progress shows in napari's
activity panel (with napari's own cancel), the bar placed by each report's steps done of
the job's total, and whose errors become notifications, never tracebacks. Set
``NAPARI_IVD_NOTHREADS=1`` to run the same jobs on the main thread instead (debugging, and
measuring what the thread buys: micro-sam and stardist-napari keep the same switch).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, QThreadPool

from napari_ivd.errors import IvdError
from napari_ivd.progress import Job, Progress, run_steps

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
    job: Job[Any] | Callable[[], Job[Any]],
    *,
    what: str,
    on_yield: Callable[[Any], None] | None = None,
    on_return: Callable[[Any], None] | None = None,
    on_abort: Callable[[], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finish: Callable[[], None] | None = None,
    owner: QObject | None = None,
) -> GeneratorWorker | None:
    """Run ``job`` in a napari worker (progress bar ``what``); None when run inline.

    ``job`` is a job, or a function making it in the worker (when making it reads files):
    the bar then takes the job's total from its first report. Callbacks run on the main
    thread: ``on_yield`` with each report, ``on_return`` with the result, ``on_abort``
    after a cancel, ``on_error`` with the exception (after the notification),
    ``on_finish`` always, last. Once Qt deletes ``owner`` (the widget the callbacks
    update: napari was closed while the job ran), they are skipped, so the job's late end
    is no traceback (napari itself quits its running workers as its window closes).
    """
    on_yield, on_return, on_abort, on_error, on_finish = _while_alive(
        owner, on_yield, on_return, on_abort, on_error, on_finish
    )

    def failed(exc: BaseException) -> None:
        notify_error(what, exc)
        if on_error is not None:
            on_error(exc)

    def make() -> Job[Any]:
        return job if isinstance(job, Job) else job()

    if threads_disabled():
        _run_inline(make, on_yield, on_return, failed, on_finish)
        return None

    def steps() -> Generator[Any, None, Any]:  # a generator function, so napari makes a GeneratorWorker
        return (yield from make())

    total = job.total if isinstance(job, Job) else 0
    progress = None if _flag(NO_ACTIVITY_ENV) else {"total": total, "desc": what}
    worker = create_worker(steps, _progress=progress, _ignore_errors=True, _start_thread=False)
    pbar = getattr(worker, "pbar", None)
    if pbar is not None and total:
        worker.yielded.disconnect(pbar.increment_with_overflow)  # placed in `yielded` by the report instead
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
        if pbar is not None and not ended:
            _place(pbar, what, report)

    worker.yielded.connect(yielded)
    worker.errored.connect(failed)
    if on_return is not None:
        worker.returned.connect(on_return)
    if on_abort is not None:
        worker.aborted.connect(on_abort)
    if on_finish is not None:
        worker.finished.connect(on_finish)
    _make_room()
    worker.start()
    return worker


def _make_room() -> None:
    """Let the next worker start at once rather than queue behind the running ones.

    Qt's pool runs as many workers as it counts cores: on one core (a small VM, a pinned
    process) opening a case would wait for a five-minute Train to end.
    """
    pool = QThreadPool.globalInstance()
    if pool.activeThreadCount() >= pool.maxThreadCount():
        pool.setMaxThreadCount(pool.activeThreadCount() + 1)


def _while_alive(owner: QObject | None, *callbacks: Callable[..., None] | None) -> list[Callable[..., None] | None]:
    """``callbacks`` that do nothing once Qt has deleted ``owner`` (all of them as they are without one)."""
    if owner is None:
        return list(callbacks)
    deleted = False

    def gone(*_: Any) -> None:
        nonlocal deleted
        deleted = True

    owner.destroyed.connect(gone)

    def guarded(callback: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            if not deleted:
                callback(*args)

        return call

    return [None if callback is None else guarded(callback) for callback in callbacks]


def _place(pbar: Any, what: str, report: Progress) -> None:
    """Show ``report`` on napari's bar: its message, and the step under way (counted) of the job's total."""
    pbar.set_description(f"{what}: {report.message}")
    if pbar.total != report.total:
        pbar.total = report.total
    under_way = min(report.total, int(report.done) + 1)
    if under_way > pbar.n:
        pbar.update(under_way - pbar.n)


def _run_inline(
    make_steps: Callable[[], Job[Any]],
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
