"""Live plots (pyqtgraph): curves that grow while training and stay fast at 100,000 points."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSizeF, Qt
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import QWidget

LEGEND_SPACING_PX = 10  # between a legend's sample line and its name, and between entries
LEGEND_MARGIN_PX = 16  # the plot's own margins beside the curves
ROUNDNESS = {1: 0, 10: 0, 5: 1, 2: 2, 3: 3}  # which of 1..9 × 10^k a log axis labels first
LOG_TICK_GAP_PX = 48  # between labelled ticks of a log axis: 2..9 × 10^k ran together ("6·10⁴7·10⁴8·10⁴")
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


def tick_labels(values: list[float], spacing: float) -> list[str]:
    """Tick labels as the numbers themselves: fixed point (0.15, 2300, 0.0005) where that is short,
    else one shared exponent (1.5e-5), never a multiplier moved into the axis title."""
    biggest = max((abs(v) for v in values), default=0.0)
    if not (spacing > 0 and math.isfinite(spacing)):
        return [f"{v:g}" for v in values]
    if biggest == 0 or 1e-4 <= biggest < 1e6:
        places = _places(spacing)
        return ["0" if v == 0 else f"{v:.{places}f}" for v in values]
    exponent = math.floor(math.log10(biggest))
    places = _places(spacing / 10**exponent)
    return ["0" if v == 0 else f"{v / 10**exponent:.{places}f}e{exponent}" for v in values]


def _places(spacing: float) -> int:
    """Decimals that write every multiple of `spacing` exactly (0.25 needs two, 0.2 one)."""
    places = 0
    while places < 12 and abs(spacing * 10**places - round(spacing * 10**places)) > 1e-6 * spacing * 10**places:
        places += 1
    return places


def log_tick_label(value: float) -> str:
    """One tick of a log axis: 0.01, 0.3, 20, 100000 as they are; 1e-05 and 1e6 and beyond as 1e-5, 1e6."""
    if 1 <= abs(value) < 1e6:
        return f"{value:.0f}"  # .3g wrote 60000 as 6e+04
    if 1e-3 <= abs(value) < 1:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


class ReadableAxis(pg.AxisItem):
    """An axis whose ticks read as plain numbers. pyqtgraph's automatic SI prefix turned a loss of 0.6
    into "600" under "loss (x0.001)" (issue 26)."""

    def __init__(self, orientation: str) -> None:
        super().__init__(orientation)
        self.enableAutoSIPrefix(False)
        self.whole_numbers = False  # steps: no tick at step 3.5

    def tickValues(self, minVal: float, maxVal: float, size: float) -> list[tuple[float, list[float]]]:
        levels = super().tickValues(minVal, maxVal, size)
        if not self.whole_numbers or self.logMode:
            return levels
        kept = [(spacing, [v for v in values if float(v).is_integer()]) for spacing, values in levels if spacing >= 1]
        if any(values for _, values in kept):
            return kept
        return [(1.0, [float(v) for v in range(math.ceil(minVal), math.floor(maxVal) + 1)])]

    def logTickValues(
        self, minVal: float, maxVal: float, size: float, stdTicks: list[tuple[float, list[float]]]
    ) -> list[tuple[float | None, list[float]]]:
        """pyqtgraph's decades, and its 2..9 × 10^k ticks only where their labels have room."""
        levels = super().logTickValues(minVal, maxVal, size, stdTicks)
        px = size / (maxVal - minVal) if maxVal > minVal else 0.0
        kept = [v for spacing, values in levels if spacing is not None for v in values]
        spaced = []
        for spacing, values in levels:
            if spacing is None:  # the minor level: each kept only clear of every tick kept so far, the
                clear = []  # roundest first (1, 5, 2, 3 × 10^k, then the rest)
                for v in sorted(values, key=lambda v: (ROUNDNESS.get(round(10 ** (v - math.floor(v))), 4), v)):
                    if all(abs(v - k) * px >= LOG_TICK_GAP_PX for k in kept):
                        clear.append(v)
                        kept.append(v)
                values = sorted(clear)
            spaced.append((spacing, values))
        return spaced

    def tickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:
        if self.logMode:
            return self.logTickStrings(values, scale, spacing)
        return tick_labels([v * scale for v in values], spacing * scale)

    def logTickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:
        return [log_tick_label(10**v * scale) for v in values]


class LegendBelow(pg.LegendItem):
    """A legend that sits in the plot's layout under the x axis, entries side by side: inside the view
    box it covered the curves (issue 26). `fit` wraps the entries into as many rows as a width needs."""

    def __init__(self) -> None:
        super().__init__(frame=False, colCount=8, horSpacing=LEGEND_SPACING_PX)
        self.layout.setContentsMargins(0, 2, 0, 2)

    def hoverEvent(self, ev: object) -> None:
        pass  # no dragging: pyqtgraph's drag anchors a legend to a spot inside its parent, over the curves

    def mouseDragEvent(self, ev: object) -> None:
        pass

    def _entry_widths(self) -> list[float]:
        # Each entry at its own size (a label's minimum is its text): the layout would stretch the names.
        return [sample.boundingRect().width() + label.minimumWidth() + 2 * LEGEND_SPACING_PX
                for sample, label in self.items]  # fmt: skip

    @staticmethod
    def _column_widths(widths: list[float], columns: int) -> list[float]:
        return [max(widths[c::columns]) for c in range(min(columns, len(widths)))]

    def updateSize(self) -> None:
        # pyqtgraph sizes a floating legend with setGeometry; in a layout it needs a fixed size hint.
        columns = max(1, self.columnCount)
        rows = [self.items[i : i + columns] for i in range(0, len(self.items), columns)]
        height = sum(max(max(s.boundingRect().height(), label.minimumHeight()) for s, label in row) for row in rows)
        size = QSizeF(sum(self._column_widths(self._entry_widths(), columns)), height + 4 if rows else 0)
        self.setMinimumSize(size)
        self.setMaximumSize(size)
        self.updateGeometry()

    def fit(self, width: float) -> bool:
        """As many entries a row as fit in `width` pixels; whether the rows changed."""
        if not self.items:
            return False
        widths = self._entry_widths()  # measured once: per column count, 151 runs' legend took 7 s to fit
        columns = next((n for n in range(len(widths), 1, -1) if sum(self._column_widths(widths, n)) <= width), 1)
        if columns == self.columnCount:
            return False
        self.setColumnCount(columns)
        return True


def legend_below(plot: pg.PlotItem) -> LegendBelow:
    """A LegendBelow placed under `plot`'s x axis, where items added with a name get their entries."""
    legend = LegendBelow()
    plot.layout.addItem(legend, 4, 1, alignment=Qt.AlignmentFlag.AlignHCenter)
    plot.legend = legend
    return legend


class LivePlot(pg.PlotWidget):
    """A plot of named series; call `add` for new points and `refresh` to redraw (throttled by the caller)."""

    def __init__(self, title: str, y_label: str, parent: QWidget | None = None, min_span: float = 0.0) -> None:
        """`min_span`: the least height of the y axis, as a share of its values (a memory use that holds at
        710 MiB was drawn over 710.262–710.273, its noise as a cliff)."""
        super().__init__(parent=parent, axisItems={"left": ReadableAxis("left"), "bottom": ReadableAxis("bottom")})
        self.min_span = min_span
        self._spanned: list[float] | None = None  # the y range _keep_min_span set last, while it holds
        self.setTitle(title)
        self.setLabel("left", y_label)
        self.set_x_label("step")
        self.showGrid(x=True, y=True, alpha=0.25)
        self.legend = legend_below(self.plotItem)
        # Draw only what is visible, downsampled to the pixel width: redraws stay fast at 100k points.
        self.setClipToView(True)
        self.setDownsampling(auto=True, mode="peak")
        self.series: dict[str, Series] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        self._steps_of: LivePlot | None = None  # follow_steps
        self._stepped: list[float] | None = None  # the x range _keep_steps set last, while it holds

    def ensure(self, name: str, *, symbol: str | None = None, width: float = 1.5, style: object = None) -> None:
        if name in self.series:
            return
        color = PALETTE[len(self.series) % len(PALETTE)]
        pen = pg.mkPen(color, width=width) if symbol is None else None
        kwargs = {"symbol": symbol, "symbolBrush": color, "symbolSize": 7} if symbol else {}
        self.series[name] = Series()
        self.curves[name] = self.plot([], [], name=name, pen=pen, **kwargs)
        self.fit_legend()

    def fit_legend(self) -> None:
        """Lay the legend's entries out in as many rows as the width under the curves needs. Measured from
        the widget, not the view box: a legend fitted while its tab was hidden widened the plot item past
        the widget, and the view box then measured that clipped width (the Rewards plot lost its right edge)."""
        axis = self.plotItem.getAxis("left")
        if self.legend.fit(self.width() - (axis.width() if axis.isVisible() else 0) - LEGEND_MARGIN_PX):
            self.plotItem.setGeometry(self.range)  # laid out again within the widget, at the legend's new size

    def set_x_label(self, label: str) -> None:
        """The x axis's name; steps are whole numbers (a range of a few steps ticked 3.5, 4.5)."""
        self.setLabel("bottom", label)
        self.getAxis("bottom").whole_numbers = label == "step"

    def follow_steps(self, other: LivePlot) -> None:
        """Span the x values of `other`'s curves as well as its own: evaluations every N steps drawn on the
        training's steps (the first one alone was drawn on 19.5–20.5, and a step-0 evaluation of the base
        left of the loss curve's axis). Not a linked axis: that would hide a step-0 point, and a zoom here
        would stop `other` following its data."""
        self._steps_of = other

    def set_log_y(self, on: bool) -> None:
        """A log y axis (a loss that falls 60× reads on it); non-positive points are left out there."""
        self.plotItem.setLogMode(y=on)  # x as it is

    def resizeEvent(self, event: QResizeEvent | None) -> None:
        super().resizeEvent(event)
        if "legend" in self.__dict__:  # pyqtgraph's constructor resizes before there is one
            self.fit_legend()

    def add(self, name: str, x: float, y: float) -> None:
        self.ensure(name)
        self.series[name].append(x, y)

    def refresh(self) -> None:
        for name, series in self.series.items():
            self.curves[name].setData(*series.view())
        if self.min_span:
            self._keep_min_span()
        if self._steps_of is not None:
            self._keep_steps()

    def _keep_steps(self) -> None:
        """The x range of follow_steps; left to the person once they zoom."""
        view, ours = self.getViewBox(), self._stepped
        if (ours is None and not view.autoRangeEnabled()[0]) or (ours is not None and view.viewRange()[0] != ours):
            self._stepped = None
            return  # the person's zoom
        xs = [s.view()[0] for plot in (self, self._steps_of) for s in plot.series.values() if s.n]
        if not xs:
            return
        self.setXRange(min(float(x.min()) for x in xs), max(float(x.max()) for x in xs))
        self._stepped = view.viewRange()[0]

    def _keep_min_span(self) -> None:
        """Widen a flat curve's y range; leave it to auto range otherwise, and to the person once they zoom."""
        view = self.getViewBox()
        ours = self._spanned
        if ours is None and not view.autoRangeEnabled()[1]:
            return  # the person's zoom
        if ours is not None and view.viewRange()[1] != ours:
            self._spanned = None  # zoomed since: theirs
            return
        ys = [s.view()[1] for s in self.series.values() if s.n]
        if not ys:
            return
        low, high = min(float(y.min()) for y in ys), max(float(y.max()) for y in ys)
        span = self.min_span * max(abs(low), abs(high))
        if high - low >= span or span == 0:
            self._release_range()
            return
        middle = (low + high) / 2
        self.setYRange(middle - span / 2, middle + span / 2, padding=0)
        self._spanned = view.viewRange()[1]

    def clear_data(self) -> None:
        for series in self.series.values():
            series.n = 0
        self._release_range()
        self._release_steps()
        self.refresh()

    def _release_range(self) -> None:
        """New data: a range set for the old one no longer holds."""
        if self._spanned is not None:
            self._spanned = None
            self.enableAutoRange(axis="y")

    def _release_steps(self) -> None:
        """New curves: an x range set, or zoomed, for the old ones would hide them."""
        if self._steps_of is not None:
            self._stepped = None
            self.enableAutoRange(axis="x")

    def clear_series(self) -> None:
        """Remove every curve and its legend entry: a new run's plot names only the series it reports (a
        search's last trial showed an empty Quality plot under an earlier trial's "exact match")."""
        for curve in self.curves.values():
            self.removeItem(curve)  # and its legend entry
        self.series.clear()
        self.curves.clear()
        self._release_range()
        self._release_steps()
        self.fit_legend()

    def point_counts(self) -> dict[str, int]:
        return {name: s.n for name, s in self.series.items()}

    def total_points(self) -> int:
        return sum(s.n for s in self.series.values())

    def has_data(self) -> bool:
        return self.total_points() > 0


def ema(previous: tuple[float, int] | None, value: float, weight: float) -> tuple[float, float, int]:
    """The smoothed loss: an exponential moving average (weight 0 = raw) corrected for its start, as
    TensorBoard's is. Started at the first loss instead, that loss kept weight**steps of the average: after 20
    steps at 0.9 the curve read 2.1 over losses of 1.4. `previous`: the last call's (biased, steps); returns
    (smoothed, biased, steps)."""
    biased, steps = previous or (0.0, 0)
    biased, steps = weight * biased + (1 - weight) * value, steps + 1
    return biased / (1 - weight**steps), biased, steps


class RangeTestPlot(LivePlot):
    """The learning-rate finder's range test: loss against rate on a log axis (each step as a point, the
    smoothed curve as a line), the rate it picked as a vertical line."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Learning-rate finder", "loss", parent)
        self.set_x_label("learning rate")
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
