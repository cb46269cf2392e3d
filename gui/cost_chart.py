"""The Compare page's chart: three bar plots sharing the method axis — trainable parameters (log scale),
adapter size, and the memory of a step in its parts — with the chosen method marked and the device's memory
drawn where it is within reach of the bars."""

from __future__ import annotations

import math
from typing import Any

import pyqtgraph as pg
from adapter_studio.gui.pages.model_page import human_bytes
from adapter_studio.gui.plots import LegendBelow, ReadableAxis
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QWidget

MEMORY_PARTS = ("weights", "gradients", "optimizer", "activations", "temporary", "overhead")
PART_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")
HIGHLIGHT = "#f2b134"
SHORT_COUNTS = {0: "1", 2: "100", 4: "10K", 6: "1M", 8: "100M", 10: "10B", 12: "1T"}
ROW_PX = 13  # height of one method's row in the chart: the names stay apart (at 10 px a row they overlapped)
CHART_FRAME_PX = 125  # titles, the x axes and the legend around the rows
LABEL_GAP_PX = 6  # between a parameter bar and its label
TICK_PX = 42  # room for one tick label of the parameter axis ("100M")
DEVICE_SCALE = 3  # the device's memory is drawn when within this many times the largest step's


def three_digits(x: float) -> str:
    """A number to three significant digits, written out: 100, not 1e+02 (Full fine-tuning read "1e+02%")."""
    return f"{x:.3g}" if abs(x) < 999.5 else f"{x:.0f}"


def short_count(n: int) -> str:
    """A count in three digits: 461K, 135M (the chart's labels; the table has every digit)."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= 0.9995 * size:  # 999,700 is 1M, not 1e+03K
            return f"{three_digits(n / size)}{unit}"
    return str(n)


def has_numbers(row: dict[str, Any]) -> bool:
    """A row with an estimate (not refused, not still being computed)."""
    return "error" not in row and "memory_bytes" in row


def _grown(plot: pg.PlotItem, labels: list[pg.TextItem], count: int) -> list[pg.TextItem]:
    """`labels` with at least `count` text items (made once, left-anchored, in `plot`), reused on each redraw."""
    while len(labels) < count:
        label = pg.TextItem("", anchor=(0, 0.5))
        plot.addItem(label)
        labels.append(label)
    return labels


class MethodAxis(pg.AxisItem):
    """A y axis labelled with method titles."""

    def __init__(self) -> None:
        super().__init__("left")
        self.names: list[str] = []

    def set_names(self, names: list[str]) -> None:
        self.names = names
        self.setTicks([[(i, n) for i, n in enumerate(names)]])


class CostChart(QWidget):
    """Three bar charts sharing the method axis: trainable parameters (log), adapter size, memory.

    The plot items are made once and updated in place: clearing and re-adding them cost ~100 ms a
    redraw, a good part of the 200 ms an edit may take to show."""

    def __init__(self) -> None:
        super().__init__()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.view = pg.GraphicsLayoutWidget()
        layout.addWidget(self.view)
        self.axis = MethodAxis()
        # Short titles: at 1280 px the three side by side ran out of room and cut the memory plot off.
        self.params = self.view.addPlot(title="Trainable parameters", axisItems={"left": self.axis})
        # Plain numbers: pyqtgraph's SI prefix drew 0.5 GiB as "500" with "(x0.001)" under the axis.
        self.size = self.view.addPlot(title="Adapter size (MiB)", axisItems={"bottom": ReadableAxis("bottom")})
        self.memory = self.view.addPlot(title="Step memory (GiB)", axisItems={"bottom": ReadableAxis("bottom")})
        for column, stretch in enumerate((3, 1, 2)):  # the first holds the method names too
            self.view.ci.layout.setColumnStretchFactor(column, stretch)
        self.params.invertY(True)  # the library's order, top to bottom
        for plot in (self.size, self.memory):
            plot.setYLink(self.params)
            plot.invertY(True)  # a linked range does not carry the inversion: without this, rows run reversed
            plot.getAxis("left").setStyle(showValues=False)
        self.params.getAxis("bottom").setLabel("parameters (log scale)")
        self._bar_ends: list[float] = []
        self.params.getViewBox().sigResized.connect(self.fit_labels)
        self.plotted_rows: list[dict[str, Any]] = []

        def bar(plot: pg.PlotItem, **opts: Any) -> pg.BarGraphItem:
            item = pg.BarGraphItem(x0=[], y=[], height=0.7, width=[], **opts)
            plot.addItem(item)
            return item

        self.param_bars = bar(self.params)
        self.size_bars = bar(self.size)
        self.labels: list[pg.TextItem] = []
        # The parts' legend goes under the whole chart: inside the memory plot it covered the bars and the
        # device line's label.
        self.legend = LegendBelow()
        self.view.addItem(self.legend, row=1, col=0, colspan=3)
        self.memory.legend = self.legend
        self.part_bars = [
            bar(self.memory, brush=color, name=part) for part, color in zip(MEMORY_PARTS, PART_COLORS, strict=True)
        ]
        self.marker = bar(self.memory, brush=None, pen=pg.mkPen(HIGHLIGHT, width=3))
        self.marker.setOpts(height=0.85)
        self.device_line = pg.InfiniteLine(
            0, angle=90, pen=pg.mkPen("#c00", width=2, style=Qt.PenStyle.DashLine), label="",
            labelOpts={"position": 0.95, "color": "#c00"},  # pyqtgraph's default label colour hardly showed
        )
        self.device_line.setVisible(False)
        self.memory.addItem(self.device_line)
        self.memory_labels: list[pg.TextItem] = []  # each step's total, at its bar's end

    def _label(self, i: int) -> pg.TextItem:
        return _grown(self.params, self.labels, i + 1)[i]

    def show_rows(self, rows: list[dict[str, Any]], current: str, device_memory: int | None) -> None:
        self.plotted_rows = rows
        names = [r.get("title", r["method"]) + (" ◀" if r["method"] == current else "") for r in rows]
        self.axis.set_names(names)
        ys = list(range(len(rows)))
        brushes = [pg.mkBrush(HIGHLIGHT if r["method"] == current else "#6a8caf") for r in rows]
        zeros = [0.0] * len(rows)

        logs = [math.log10(max(r.get("trainable_params", 0), 1)) if has_numbers(r) else 0 for r in rows]
        self.param_bars.setOpts(x0=zeros, y=ys, width=logs, brushes=brushes)
        foreground = pg.getConfigOption("foreground")
        for i, (r, v) in enumerate(zip(rows, logs, strict=True)):
            if "error" in r:  # the reason is listed under the chart: across the bars it hid them
                text, color = "not available", "#888"
            elif not has_numbers(r):
                text, color = "estimating…", "#888"
            elif r.get("baseline"):  # what it learns lives outside the model, if anything
                learned = r["trainable_params"]
                text = f"{short_count(learned)} outside the model" if learned else "nothing trains"
                color = foreground
            else:
                text = f"{short_count(r['trainable_params'])} ({three_digits(100 * r['trainable_share'])}%)"
                color = "#888" if r.get("stale") else foreground
            label = self._label(i)
            label.setText(text, color=color)
            label.setPos(v, i)
            label.setVisible(True)
        for label in self.labels[len(rows):]:
            label.setVisible(False)
        self._bar_ends = logs
        self.fit_labels()
        self.size_bars.setOpts(
            x0=zeros, y=ys, width=[r.get("adapter_bytes", 0) / 2**20 if has_numbers(r) else 0 for r in rows],
            brushes=brushes,
        )

        left = list(zeros)
        for part, item in zip(MEMORY_PARTS, self.part_bars, strict=True):
            values = [r["memory_bytes"].get(part, 0) / 2**30 if has_numbers(r) else 0 for r in rows]
            item.setOpts(x0=list(left), y=ys, width=values)
            left = [a + b for a, b in zip(left, values, strict=True)]
        chosen = [i for i, r in enumerate(rows) if r["method"] == current and has_numbers(r)]
        if chosen:
            self.marker.setOpts(x0=[0], y=[chosen[0]], width=[left[chosen[0]]])
        else:
            self.marker.setOpts(x0=[], y=[], width=[])
        self._label_totals(rows, left)
        largest = max(left, default=0.0) or 1.0
        device = device_memory / 2**30 if device_memory else None
        drawn = device is not None and device <= DEVICE_SCALE * largest
        self.device_line.setVisible(drawn)
        end = max(largest, device if drawn and device else 0.0) * 1.45  # room for the totals' text
        self.memory.setXRange(0, end, padding=0)
        if device_memory and drawn:
            self.device_line.setValue(device)
            self.device_line.label.setFormat(f"device {human_bytes(device_memory)}")
        # A device far larger than every step would squeeze the bars to slivers: said under the axis instead.
        self.memory.getAxis("bottom").setLabel(
            "" if drawn or not device_memory else f"device: {human_bytes(device_memory)} →", color="#777")  # a fact
        self.setMinimumHeight(len(rows) * ROW_PX + CHART_FRAME_PX)

    def _label_totals(self, rows: list[dict[str, Any]], totals: list[float]) -> None:
        """Each step's memory in GiB beside its bar: the coloured parts have no scale of their own."""
        _grown(self.memory, self.memory_labels, len(rows))
        foreground = pg.getConfigOption("foreground")
        for i, (label, r, total) in enumerate(zip(self.memory_labels, rows, totals, strict=False)):
            label.setText(f"{total:.2g}" if total < 1 else f"{total:.1f}", color=foreground)
            label.setPos(total, i)
            label.setVisible(has_numbers(r))
        for label in self.memory_labels[len(rows):]:
            label.setVisible(False)

    def row_top(self, row: int) -> int:
        """Where row `row` is drawn, in this widget's pixels (to scroll it into view)."""
        from PySide6.QtCore import QPointF

        scene = self.params.getViewBox().mapViewToScene(QPointF(0, row))
        return int(self.view.mapFromScene(scene).y())

    def fit_labels(self) -> None:
        """Widen the parameter axis until every label fits right of its bar. Labels keep their size in
        pixels while the plot's width changes, so a fixed margin cut them off in a narrow window."""
        ends = self._bar_ends
        view_px = self.params.getViewBox().width()
        needed = max(ends, default=1) + 0.5
        if view_px > 0:
            for end, label in zip(ends, self.labels, strict=False):
                # The text's own size in pixels (the item's rect follows the view's scale only once drawn).
                share = (label.textItem.boundingRect().width() + LABEL_GAP_PX) / view_px
                needed = max(needed, end / max(1 - share, 0.4))  # bars keep at least 40% of the width
        self.params.setXRange(0, needed, padding=0)
        # A tick every 2 decades, or every 4 or 6 where they would run into each other.
        decade_px = view_px / needed if view_px > 0 else 40
        step = next((s for s in (2, 4, 6) if s * decade_px >= TICK_PX), 6)
        self.params.getAxis("bottom").setTicks(
            [[(k, SHORT_COUNTS.get(k, f"1e{k}")) for k in range(0, int(max(ends, default=1)) + 2, step)]]
        )

    def visible_texts(self) -> list[str]:
        """The texts drawn inside the plots (the labels beside the parameter bars)."""
        return [label.toPlainText() for label in self.labels if label.isVisible()]
