"""Live training plots: loss, preference accuracy, implicit rewards, reward margin, and the
policy-vs-reference log-ratio. pyqtgraph style: each curve is created once and then only
`setData`; a timer redraws (not every data point); long series are peak-downsampled."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import PySide6  # noqa: F401  (pyqtgraph picks the binding already imported)
import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

# (plot title, y label, [(metric name, legend, colour, is_eval)])
PLOTS = [
    ("Loss", "loss", [("loss", "train", "#1f77b4", False), ("eval/loss", "eval", "#ff7f0e", True)]),
    ("Preference accuracy", "accuracy", [("rewards/accuracies", "train", "#1f77b4", False),
                                         ("eval/rewards/accuracies", "eval", "#ff7f0e", True)]),
    ("Implicit rewards", "β·log π/π_ref", [("rewards/chosen", "chosen", "#2ca02c", False),
                                            ("rewards/rejected", "rejected", "#d62728", False)]),
    ("Reward margin", "chosen − rejected", [("rewards/margins", "train", "#1f77b4", False),
                                             ("eval/rewards/margins", "eval", "#ff7f0e", True)]),
    ("Log-ratio to reference", "log π/π_ref", [("logratio/chosen", "chosen", "#2ca02c", False),
                                                ("logratio/rejected", "rejected", "#d62728", False)]),
]
SMOOTH_ALPHA = 0.3  # EMA weight of the newest point: steadies the noisy per-step DPO metrics
LN2 = math.log(2)
# The first step scores the policy while it equals its reference: its loss is ln 2 in exact
# arithmetic, and off by rounding where the reference pass batched the pairs differently.
# bench/first_loss.py (the trainer's own batching, default model, 32 pairs, 6 seeds, batch 4):
# 1.9e-9 in fp32; in bf16 autocast up to 3.4e-3 (median 2.2e-4) on a 2-core AVX-512 EPYC with
# avx512_bf16, and 0.013 (0.706 for 0.693) was seen on an AMX Xeon: the hint allows for both.
FIRST_LOSS_BF16 = 0.015
START_HINT = (f"ln 2 ≈ 0.693: the loss where the policy still equals its reference. The first point sits "
              f"on it within rounding: exactly in fp32, within ±{FIRST_LOSS_BF16:g} in bf16, where the "
              "reference pass and the first step batch the pairs differently.")


def ema(values: list[float], alpha: float = SMOOTH_ALPHA) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


@dataclass
class RunSeries:
    """One run's metrics: name -> (steps, values)."""

    label: str
    data: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)

    def add(self, step: float, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            xs, ys = self.data.setdefault(name, ([], []))
            xs.append(step)
            ys.append(value)


class MetricPlots(QWidget):
    """Five plots; one live series plus any number of overlaid past runs (dashed)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("metricPlots")
        self.layout_widget = pg.GraphicsLayoutWidget()
        self.layout_widget.setObjectName("plotCanvas")
        self.layout_widget.setAccessibleName("Training plots")
        self.layout_widget.setBackground("w")
        self.hover = QLabel(" ")
        self.hover.setObjectName("plotHover")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.layout_widget, 1)
        layout.addWidget(self.hover)
        self.plots: dict[str, pg.PlotItem] = {}
        for i, (title, ylabel, _) in enumerate(PLOTS):
            plot = self.layout_widget.addPlot(row=i // 3, col=i % 3, title=title)
            plot.setLabel("left", ylabel)
            plot.getAxis("left").enableAutoSIPrefix(False)  # a loss of 0.69 reads as 0.69, not 690 m
            plot.setLabel("bottom", "step")
            plot.showGrid(x=True, y=True, alpha=0.3)
            plot.addLegend(offset=(5, 5))
            plot.setDownsampling(mode="peak")
            plot.setClipToView(True)
            self.plots[title] = plot
        start = pg.InfiniteLine(LN2, angle=0, pen=pg.mkPen("#888888", width=1, style=pg.QtCore.Qt.PenStyle.DotLine),
                                label="ln 2", labelOpts={"position": 0.95, "color": "#666666"})
        start.setToolTip(START_HINT)
        self.plots["Loss"].addItem(start)
        self.plots["Loss"].setToolTip(START_HINT)
        self.series: dict[str, RunSeries] = {}
        self.curves: dict[tuple[str, str], pg.PlotDataItem] = {}
        self.smooth = False
        self._dirty = False
        self.timer = QTimer(self)
        self.timer.setInterval(250)  # 4 redraws a second is live enough and costs nothing
        self.timer.timeout.connect(self._on_timer_timeout)
        self.timer.start()
        self._proxy = pg.SignalProxy(self.layout_widget.scene().sigMouseMoved, rateLimit=30,
                                     slot=self._on_scene_mouseMoved)

    # ------------------------------------------------------------------ data
    def clear(self) -> None:
        for (key, _name), curve in self.curves.items():
            curve.getViewBox() and curve.getViewBox().removeItem(curve)
            for plot in self.plots.values():
                if plot.legend is not None:
                    plot.legend.removeItem(curve)
        self.curves.clear()
        self.series.clear()
        self._dirty = True

    def set_series(self, key: str, series: RunSeries) -> None:
        self.series[key] = series
        self._ensure_curves(key)
        self._dirty = True

    def add_point(self, key: str, step: float, metrics: dict[str, float], beta: float | None = None) -> None:
        """Append one step's metrics to series `key` (created on first use)."""
        series = self.series.setdefault(key, RunSeries(key))
        series.add(step, with_logratios(metrics, beta))
        self._ensure_curves(key)
        self._dirty = True

    def _ensure_curves(self, key: str) -> None:
        live = key == "live"
        for title, _ylabel, metrics in PLOTS:
            for name, legend, colour, is_eval in metrics:
                if (key, name) in self.curves:
                    continue
                style = pg.mkPen(colour, width=2, style=pg.QtCore.Qt.PenStyle.SolidLine if live
                                 else pg.QtCore.Qt.PenStyle.DashLine)
                label = legend if live else f"{legend} ({self.series[key].label})"
                symbol = "o" if is_eval else None  # evals are few: show the points
                self.curves[(key, name)] = self.plots[title].plot(
                    [], [], pen=style, name=label, symbol=symbol, symbolSize=5, symbolBrush=colour)

    def _on_timer_timeout(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        for (key, name), curve in self.curves.items():
            xs, ys = self.series[key].data.get(name, ([], []))
            curve.setData(xs, ema(ys) if self.smooth and not name.startswith("eval/") else ys)

    def set_smoothing(self, on: bool) -> None:
        self.smooth = on
        self._dirty = True

    def point_count(self, title: str) -> int:
        """Points drawn on a plot (all curves): for tests and the empty-state hint."""
        return sum(len(c.xData) if c.xData is not None else 0
                   for (k, n), c in self.curves.items() if any(n == m[0] for m in _metrics_of(title)))

    # ------------------------------------------------------------------ hover
    def _on_scene_mouseMoved(self, event) -> None:
        pos = event[0]
        for title, plot in self.plots.items():
            if not plot.sceneBoundingRect().contains(pos):
                continue
            x = plot.vb.mapSceneToView(pos).x()
            parts = []
            for (key, name), curve in self.curves.items():
                if not any(name == m[0] for m in _metrics_of(title)):
                    continue
                xs, ys = curve.getData()
                if xs is None or len(xs) == 0:
                    continue
                i = min(range(len(xs)), key=lambda j: abs(xs[j] - x))
                parts.append(f"{name} = {ys[i]:.4g} (step {xs[i]:g})")
            self.hover.setText(f"{title}: " + "; ".join(parts) if parts else " ")
            return

    # ------------------------------------------------------------------ export
    def export_png(self, path: str | Path) -> None:
        self._on_timer_timeout()
        self.layout_widget.grab().save(str(path))

    def export_csv(self, path: str | Path) -> None:
        """Long format: run, metric, step, value — every point of every series."""
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["run", "metric", "step", "value"])
            for key, series in self.series.items():
                for name, (xs, ys) in sorted(series.data.items()):
                    w.writerows([series.label, name, x, y] for x, y in zip(xs, ys))


def _metrics_of(title: str) -> list:
    return next(m for t, _, m in PLOTS if t == title)


def with_logratios(metrics: dict[str, float], beta: float | None) -> dict[str, float]:
    """Add log π/π_ref of chosen and rejected (= implicit reward / β): how far the policy moved."""
    out = dict(metrics)
    if beta:
        for side in ("chosen", "rejected"):
            if f"rewards/{side}" in metrics:
                out[f"logratio/{side}"] = metrics[f"rewards/{side}"] / beta
    return out
