"""The Runs page's "Combine…" dialog: how to combine the selected runs — a merge of LoRA runs
(engine.combine_runs), with a weight per run, the density of the TIES / DARE merges and the new run's
name, or AdapterFusion of bottleneck-adapter runs (engine.methods.fusion), which trains."""

from __future__ import annotations

from dataclasses import dataclass

from adapter_studio.engine.combine_runs import HOW
from adapter_studio.gui.spin_boxes import DoubleSpinBox
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

FUSION = "fusion"  # not a merge: it loads an AdapterFusion spec to train
EXPLAIN = {
    "cat": "ranks side by side: exactly the weighted sum of the runs' updates",
    "linear": "weighted sum of the A and of the B matrices (runs of one rank): their parts mix, so it is not "
              "the sum of the updates",
    "svd": "the weighted sum of the updates, re-factored at the largest rank",
    "ties": "TIES merging: the largest updates kept (density), sign conflicts resolved (one rank)",
    "dare_linear": "DARE: updates randomly dropped to the density and rescaled, then summed (one rank)",
    "dare_ties": "DARE's dropping, then TIES's sign resolution (one rank)",
    "lorahub": "LoraHub: linear, with the weights found on the first run's held-out rows (one rank)",
    FUSION: "AdapterFusion: bottleneck-adapter runs, fused by a layer trained on the first run's data",
}


@dataclass
class CombineChoice:
    how: str
    weights: list[float] | None  # None: found by the combination (lorahub)
    density: float
    name: str | None


class CombineDialog(QDialog):
    def __init__(self, run_names: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Combine runs")
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"Combine {len(run_names)} runs into a new run, exported like any other: merge LoRA "
                                "runs, or fuse bottleneck-adapter runs (AdapterFusion trains)."))
        form = QFormLayout()
        self.how = QComboBox()
        self.how.setObjectName("combineHow")
        for how in (*HOW, FUSION):
            self.how.addItem(f"{how} — {EXPLAIN[how]}", how)
        self.how.currentIndexChanged.connect(self._how_changed)
        form.addRow("Combination", self.how)
        self.weights: list[DoubleSpinBox] = []
        for name in run_names:
            spin = DoubleSpinBox()
            spin.setRange(-10.0, 10.0)
            spin.setDecimals(3)
            spin.setSingleStep(0.1)
            spin.setValue(round(1.0 / len(run_names), 3))
            spin.setObjectName(f"combineWeight{len(self.weights)}")
            form.addRow(f"Weight of {name}", spin)
            self.weights.append(spin)
        self.density = DoubleSpinBox()
        self.density.setObjectName("combineDensity")
        self.density.setRange(0.01, 1.0)
        self.density.setSingleStep(0.05)
        self.density.setValue(0.5)
        form.addRow("Density (TIES / DARE)", self.density)
        self.name = QLineEdit()
        self.name.setObjectName("combineName")
        self.name.setPlaceholderText("combined-<how>-<date>")
        form.addRow("New run's name", self.name)
        layout.addLayout(form)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self._how_changed()

    def _how_changed(self) -> None:
        how = str(self.how.currentData())
        self.density.setEnabled(how.startswith(("ties", "dare")))
        for spin in self.weights:
            spin.setEnabled(how not in ("lorahub", FUSION))
        self.name.setEnabled(how != FUSION)  # a training run is named when it starts

    def choice(self) -> CombineChoice:
        how = str(self.how.currentData())
        weights = None if how in ("lorahub", FUSION) else [s.value() for s in self.weights]
        return CombineChoice(how, weights, self.density.value(), self.name.text().strip() or None)
