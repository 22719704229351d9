"""A small live plot of a fine-tuning run: training loss, validation error and Dice per epoch.

Drawn with QPainter (matplotlib is not a dependency) as three stacked strips sharing the
epoch axis, each with its own scale, so no figure hides behind another's units: the
training loss, the validation distance to target (mm) with the parent model's figure as a
dashed line (the new version becomes active only when it beats it), and the validation
Dice. The last value of each line is written at its end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPaintEvent, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

Series = list[tuple[int, float]]

#: (title, attribute holding the series, colour), top to bottom.
STRIPS = (
    ("training loss", "loss", QColor("#f4a259")),
    ("validation distance to target (mm); dashed: parent model", "error_mm", QColor("#3fc1c9")),
    ("validation Dice", "dice", QColor("#c77dff")),
)


def _span(values: Sequence[float]) -> tuple[float, float]:
    """A y range around ``values`` with a little room, never empty."""
    low, high = min(values), max(values)
    pad = 0.08 * (high - low) or 0.05 * abs(high) or 1.0
    return low - pad, high + pad


def _short(value: float) -> str:
    return f"{value:.3g}"


class LossPlot(QWidget):
    """Loss and validation curves of one run; ``loss``, ``error_mm`` and ``dice`` hold (epoch, value) pairs."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loss: Series = []
        self.error_mm: Series = []
        self.dice: Series = []
        self.parent_error_mm: float | None = None
        self.setMinimumHeight(230)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def add_loss(self, epoch: int, loss: float) -> None:
        """Add the mean training loss of epoch ``epoch`` (1-based); non-finite values are skipped."""
        if math.isfinite(loss):
            self.loss.append((epoch, loss))
            self.update()

    def add_validation(self, epoch: int, error_mm: float | None, dice: float | None) -> None:
        """Add a validation after epoch ``epoch``: mean distance to target (mm) and mean Dice, either may be None."""
        if error_mm is not None and math.isfinite(error_mm):
            self.error_mm.append((epoch, error_mm))
        if dice is not None and math.isfinite(dice):
            self.dice.append((epoch, dice))
        self.update()

    def set_parent_error(self, error_mm: float | None) -> None:
        """The parent model's validation error (mm), the figure the new version has to beat."""
        self.parent_error_mm = error_mm
        self.update()

    def clear(self) -> None:
        """Forget every series (a new run starts)."""
        self.loss, self.error_mm, self.dice, self.parent_error_mm = [], [], [], None
        self.update()

    # ------------------------------------------------------------------ drawing
    def paintEvent(self, event: QPaintEvent) -> None:
        """Draw the three strips, then the epoch axis under the last one."""
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        painter.setFont(font)
        text = self.palette().color(self.foregroundRole())
        line_h = painter.fontMetrics().height()
        left = painter.fontMetrics().horizontalAdvance("0.000") + 8
        width = self.width() - left - 6
        strip_h = (self.height() - 2 * line_h) / len(STRIPS)
        epochs = [e for _, attr, _ in STRIPS for e, _ in getattr(self, attr)]
        first, last = (min(epochs), max(max(epochs), min(epochs) + 1)) if epochs else (1, 2)
        for i, (title, attr, colour) in enumerate(STRIPS):
            top = i * strip_h
            painter.setPen(text)
            painter.drawText(QRectF(left, top, width, line_h), Qt.AlignmentFlag.AlignVCenter, title)
            plot = QRectF(left, top + line_h, width, strip_h - line_h - 4)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(plot)
            reference = self.parent_error_mm if attr == "error_mm" else None
            self._draw_strip(painter, plot, getattr(self, attr), reference, first, last, colour, text)
        self._draw_epochs(painter, QRectF(left, len(STRIPS) * strip_h - 4, width, 2 * line_h), first, last, text)
        painter.end()

    def _draw_strip(
        self,
        painter: QPainter,
        plot: QRectF,
        series: Series,
        reference: float | None,
        first: int,
        last: int,
        colour: QColor,
        text: QColor,
    ) -> None:
        """One series in ``plot``: min/max labels on the left, a dot per value, the last value at its end."""
        values = [v for _, v in series] + ([reference] if reference is not None else [])
        if not values:
            return
        low, high = _span(values)

        def at(epoch: float, value: float) -> QPointF:
            x = plot.left() + (epoch - first) / (last - first) * plot.width()
            return QPointF(x, plot.bottom() - (value - low) / (high - low) * plot.height())

        painter.setPen(text)
        right, label_w = Qt.AlignmentFlag.AlignRight, plot.left() - 4
        painter.drawText(QRectF(0, plot.top(), label_w, 14), right | Qt.AlignmentFlag.AlignTop, _short(high))
        painter.drawText(QRectF(0, plot.bottom() - 14, label_w, 14), right | Qt.AlignmentFlag.AlignBottom, _short(low))
        if reference is not None:
            painter.setPen(QPen(colour, 1, Qt.PenStyle.DashLine))
            painter.drawLine(at(first, reference), at(last, reference))
        points = [at(epoch, value) for epoch, value in series]
        painter.setPen(QPen(colour, 2))
        for a, b in pairwise(points):
            painter.drawLine(a, b)
        painter.setBrush(colour)
        for point in points:
            painter.drawEllipse(point, 2.5, 2.5)
        if points:
            label = _short(series[-1][1])
            end_w = painter.fontMetrics().horizontalAdvance(label) + 4
            end = points[-1]
            x = end.x() - end_w - 4 if end.x() + end_w + 4 > plot.right() else end.x() + 4
            y = end.y() + 2 if end.y() - 16 < plot.top() else end.y() - 16
            painter.drawText(QRectF(x, y, end_w, 14), Qt.AlignmentFlag.AlignCenter, label)

    def _draw_epochs(self, painter: QPainter, axis: QRectF, first: int, last: int, text: QColor) -> None:
        """Epoch ticks along the top of ``axis`` and the axis name under them."""
        painter.setPen(text)
        line_h = axis.height() / 2
        step = max(1, math.ceil((last - first) / 8))
        for epoch in range(first, last + 1, step):
            x = axis.left() + (epoch - first) / (last - first) * axis.width()
            painter.drawText(QRectF(x - 20, axis.top(), 40, line_h), Qt.AlignmentFlag.AlignHCenter, str(epoch))
        name = QRectF(axis.left(), axis.top() + line_h, axis.width(), line_h)
        painter.drawText(name, Qt.AlignmentFlag.AlignHCenter, "epoch")
