"""A scroll area for a tall dock widget: scrolls up and down, never sideways.

napari docks plugin widgets without scrolling, so a widget taller than the screen (the
annotator with its Train section on a laptop) would be squeezed. Qt's own QScrollArea
reports a small minimum width instead of its content's, so napari would dock it too
narrow and clip its buttons; this one asks for the content's width.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QWidget


class VerticalScroll(QScrollArea):
    """Shows ``body`` at full width and scrolls it vertically when the dock is shorter."""

    def __init__(self, body: QWidget) -> None:
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(body)

    def _width(self, body: QSize) -> int:
        return body.width() + self.verticalScrollBar().sizeHint().width()

    def minimumSizeHint(self) -> QSize:
        """As wide as the body needs at least, any height."""
        return QSize(self._width(self.widget().minimumSizeHint()), super().minimumSizeHint().height())

    def sizeHint(self) -> QSize:
        """As wide as the body would like (napari docks the widget at this width)."""
        return QSize(self._width(self.widget().sizeHint()), super().sizeHint().height())

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Pass the body's new size needs on: napari's style and new content change them after docking."""
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)
