"""Live plots (pyqtgraph): curves that grow while training and stay fast at 100,000 points."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QWidget

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


class Series:
    """A growing (x, y) buffer behind one curve; amortised O(1) appends."""

    def __init__(self) -> None:
        self.x = np.empty(1024)
        self.y = np.empty(1024)
        self.n = 0

    def append(self, x: float, y: float) -> None:
        if self.n == len(self.x):
            self.x = np.resize(self.x, 2 * self.n)
            self.y = np.resize(self.y, 2 * self.n)
        self.x[self.n], self.y[self.n] = x, y
        self.n += 1

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x[: self.n], self.y[: self.n]


class LivePlot(pg.PlotWidget):
    """A plot of named series; call `add` for new points and `refresh` to redraw (throttled by the caller)."""

    def __init__(self, title: str, y_label: str, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent)
        self.setTitle(title)
        self.setLabel("left", y_label)
        self.setLabel("bottom", "step")
        self.showGrid(x=True, y=True, alpha=0.25)
        self.addLegend(offset=(-10, 10))
        # Draw only what is visible, downsampled to the pixel width: redraws stay fast at 100k points.
        self.setClipToView(True)
        self.setDownsampling(auto=True, mode="peak")
        self.series: dict[str, Series] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}

    def ensure(self, name: str, *, symbol: str | None = None, width: float = 1.5, style: object = None) -> None:
        if name in self.series:
            return
        color = PALETTE[len(self.series) % len(PALETTE)]
        pen = pg.mkPen(color, width=width) if symbol is None else None
        kwargs = {"symbol": symbol, "symbolBrush": color, "symbolSize": 7} if symbol else {}
        self.series[name] = Series()
        self.curves[name] = self.plot([], [], name=name, pen=pen, **kwargs)

    def add(self, name: str, x: float, y: float) -> None:
        self.ensure(name)
        self.series[name].append(x, y)

    def refresh(self) -> None:
        for name, series in self.series.items():
            self.curves[name].setData(*series.view())

    def clear_data(self) -> None:
        for series in self.series.values():
            series.n = 0
        self.refresh()

    def point_counts(self) -> dict[str, int]:
        return {name: s.n for name, s in self.series.items()}

    def total_points(self) -> int:
        return sum(s.n for s in self.series.values())


def ema(previous: float | None, value: float, weight: float) -> float:
    """Exponential moving average used for the smoothed loss (weight 0 = raw)."""
    return value if previous is None else weight * previous + (1 - weight) * value


class RangeTestPlot(LivePlot):
    """The learning-rate finder's range test: loss against rate on a log axis (each step as a point, the
    smoothed curve as a line), the rate it picked as a vertical line."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Learning-rate finder", "loss", parent)
        self.setLabel("bottom", "learning rate")
        self.setLogMode(x=True, y=False)
        self.getAxis("bottom").enableAutoSIPrefix(False)  # rates read as 1e-4, not "0.1 (x0.001)"
        # Items other than curves are placed in view coordinates: log10 of the rate on this axis.
        self.chosen_line = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen("#d62728", width=2))
        self.chosen_line.setVisible(False)
        self.addItem(self.chosen_line)
        self.chosen: float | None = None

    def show_test(self, rates: list[float], raw: list[float], smoothed: list[float], chosen: float) -> None:
        self.clear_data()
        self.ensure("loss at each step", symbol="o")
        self.ensure("smoothed")
        for rate, loss, line in zip(rates, raw or smoothed, smoothed, strict=False):
            self.add("loss at each step", rate, loss)
            self.add("smoothed", rate, line)
        self.refresh()
        self.chosen = chosen
        self.chosen_line.setPos(float(np.log10(chosen)))
        self.chosen_line.setVisible(True)

    def clear_data(self) -> None:
        super().clear_data()
        self.chosen = None
        self.chosen_line.setVisible(False)
