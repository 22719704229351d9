"""How responsive the annotator stays: Qt event-loop stalls while a prediction runs, and Next case → proposals.

    python benchmarks/bench_gui.py [--data ../shared/data/lumbar] [--cases VB2/case-07 VB2/case-12 ...]
                                   [--device auto|cpu|cuda] [--nothreads-too] [--no-activity] [--json out.json]

A store is made from the given lumbar scans (images only) in a temporary folder; the
annotator is docked in a shown viewer (on a private Xvfb when there is no display) and
"Next case" is clicked once per case: the case opens and, having no proposal, is
predicted. A QTimer firing every 10 ms records every gap between its ticks; a gap longer
than 10 ms is the time the GUI thread could not handle events (a stall). Per case it prints
the longest stall while the prediction worker runs, the longest stall over the whole
Next → proposals window (opening and adding layers included) and the time from the click
to the proposals drawn. The three windows cover the whole wait: *open* (click → the
prediction worker starts: reading the case, adding or refilling its layers and drawing
them), *predicting* (worker start → its last progress report) and *showing* (→ the
proposals drawn). The first case of a session includes loading the model and napari's
first draw of the case layers. ``--nothreads-too``
repeats the last case with ``NAPARI_IVD_NOTHREADS=1`` (prediction on the GUI thread) to
show what the worker buys; ``--no-activity`` runs without napari's activity progress bar
(``NAPARI_IVD_NO_ACTIVITY=1``), whose animation costs CPU on software-rendered displays.
The last line is the reference: the longest stall when napari itself moves to the next
slice of the open case (it re-slices and redraws every layer), which on a software-OpenGL
display is what any visible change costs. Figures only: targets live in the issue.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_ivd._virtual_display import has_display, virtual_display
from napari_ivd._widgets._jobs import NO_ACTIVITY_ENV, NOTHREADS_ENV
from napari_ivd.io import read_volume
from napari_ivd.store import AnnotationStore

TICK_MS = 10


class StallMonitor:
    """Records the gaps between ticks of a 10 ms QTimer on the GUI thread."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def start(self) -> None:
        self.ticks = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self.ticks.append(time.perf_counter())

    def gaps_ms(self, start: float = -np.inf, end: float = np.inf) -> np.ndarray:
        """Gaps (ms) of the ticks that ended within [start, end]."""
        t = np.array(self.ticks)
        gaps = np.diff(t) * 1000.0
        keep = (t[1:] >= start) & (t[1:] <= end)
        return gaps[keep] if keep.any() else np.zeros(1)


def _wait(signal: Any, timeout_s: float) -> None:
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    signal.connect(loop.quit)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    signal.disconnect(loop.quit)


def _run_case(viewer: Any, widget: Any, monitor: StallMonitor, timeout_s: float) -> dict[str, Any]:
    """Click Next case once; time it and the stalls until the prediction is on screen."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    marks: dict[str, float] = {}

    def now(name: str) -> None:
        marks[name] = time.perf_counter()

    def watch_predict(tries: int = 2000) -> None:  # polls until the predict job (started after a draw) runs
        if widget.worker is None and tries > 0:
            QTimer.singleShot(1, lambda: watch_predict(tries - 1))
            return
        now("predict_start")
        if widget.worker is not None:
            widget.worker.yielded.connect(lambda _: now("last_yield"))

    def opened(_: str) -> None:
        now("opened")
        QTimer.singleShot(0, watch_predict)

    widget.case_opened.connect(opened)
    monitor.start()
    t0 = time.perf_counter()
    widget.next_button.click()
    if NOTHREADS_ENV not in os.environ:
        _wait(widget.predicted, timeout_s)
    QApplication.processEvents()  # draw
    done = time.perf_counter()
    monitor.stop()
    widget.case_opened.disconnect(opened)
    opened_at = marks.get("opened", t0)
    start, end = marks.get("predict_start", opened_at), marks.get("last_yield", done)
    return {
        "case": widget.annotator.case_id,
        "mode": "main thread" if NOTHREADS_ENV in os.environ else "worker",
        "points": len(widget.case.points()) if widget.case is not None else 0,
        "next_to_proposals_s": done - t0,
        "open_s": opened_at - t0,
        "predict_s": end - start,
        "max_stall_open_ms": float(monitor.gaps_ms(t0, start).max()),
        "max_stall_predict_ms": float(monitor.gaps_ms(start, end).max()),
        "p99_stall_predict_ms": float(np.percentile(monitor.gaps_ms(start, end), 99)),
        "max_stall_show_ms": float(monitor.gaps_ms(end).max()),  # up to the tick that stopped the monitor
    }


def _slice_step_stalls(viewer: Any, widget: Any, monitor: StallMonitor, steps: int = 10) -> np.ndarray:
    """Longest stall (ms) of each of ``steps`` moves to a neighbouring slice: napari's own cost per redraw.

    The reference for the other figures: what scrolling through the open case costs on the
    same display, with nothing of napari-ivd running.
    """
    from qtpy.QtCore import QEventLoop, QTimer

    loop, stalls = QEventLoop(), []
    z0, dz = viewer.dims.point[0], float(widget.case.image.scale[0])

    def step(k: int) -> None:
        if k:
            monitor.stop()
            stalls.append(float(monitor.gaps_ms().max()))
        if k == steps:
            loop.quit()
            return
        monitor.start()
        viewer.dims.set_point(0, z0 + (k % 2) * dz)
        QTimer.singleShot(200, lambda: step(k + 1))

    QTimer.singleShot(0, lambda: step(0))
    loop.exec()
    return np.array(stalls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/lumbar")
    parser.add_argument("--cases", nargs="+", default=["VB2/case-07", "VB2/case-12", "VB2/case-14"])
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--no-activity", action="store_true", help="no progress bar in napari's activity panel (NAPARI_IVD_NO_ACTIVITY)"
    )
    parser.add_argument("--nothreads-too", action="store_true", help="repeat the last case on the GUI thread")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.no_activity:
        os.environ[NO_ACTIVITY_ENV] = "1"

    with tempfile.TemporaryDirectory() as tmp, virtual_display() if not has_display() else nullcontext():
        import napari

        store = AnnotationStore.open(Path(tmp) / "bench.zarr", create=True, fsync=False)
        ids = []
        for case in args.cases:
            ids.append(case.replace("/", "_"))
            store.add_case(read_volume(args.data / case / "image.nii.gz"), ids[-1])
        viewer = napari.Viewer(show=True)
        viewer.window.resize(1500, 950)
        _, widget = viewer.window.add_plugin_dock_widget("napari-ivd", "Spine annotator")
        widget.device_box.setCurrentText(args.device)
        widget.open_store(store.location)
        monitor = StallMonitor()
        rows = [_run_case(viewer, widget, monitor, args.timeout) for _ in ids]
        slice_steps = _slice_step_stalls(viewer, widget, monitor)
        if args.nothreads_too:
            widget.annotator.store.add_case(  # the last scan again, timed without threads
                read_volume(args.data / args.cases[-1] / "image.nii.gz"), "again", allow_copy=True
            )
            widget.refresh_cases()
            os.environ[NOTHREADS_ENV] = "1"
            rows.append(_run_case(viewer, widget, monitor, args.timeout))
            os.environ.pop(NOTHREADS_ENV)
        widget.dialogs.ask_unsaved = lambda *a: "discard"
        viewer.close()

    device = str(torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"))
    print(
        f"napari-ivd annotator responsiveness; device {device}; torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}); {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; "
        f"{platform.platform()}; QTimer every {TICK_MS} ms; "
        f"napari activity progress bar {'off' if args.no_activity else 'on'}"
    )
    header = (
        f"{'case':<14} {'mode':<11} {'pts':>3} {'next→shown s':>12} {'open s':>6} {'predict s':>9} "
        f"{'max stall ms: open':>18} {'predicting':>10} {'(p99)':>5} {'showing':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['case']:<14} {r['mode']:<11} {r['points']:>3} {r['next_to_proposals_s']:>12.2f} {r['open_s']:>6.2f} "
            f"{r['predict_s']:>9.2f} {r['max_stall_open_ms']:>18.0f} {r['max_stall_predict_ms']:>10.0f} "
            f"{r['p99_stall_predict_ms']:>5.0f} {r['max_stall_show_ms']:>7.0f}"
        )
    print(
        f"reference, napari alone: moving to the next slice of the open case stalls "
        f"{np.median(slice_steps):.0f} ms (median of {len(slice_steps)} moves; max {slice_steps.max():.0f} ms)"
    )
    if args.json:
        summary = {
            "device": device,
            "torch": torch.__version__,
            "activity": not args.no_activity,
            "rows": rows,
            "slice_step_stall_ms": slice_steps.tolist(),
        }
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
