"""Step 3: pick a method from the library, the objective it trains for, their hyperparameters and the
training budget.

The forms are generated from the declarations (engine.methods, engine.objectives, engine.spec.TrainingSpec)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from adapter_studio.engine.defaults import choose, explain, for_objective, rate_for_size
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods import METHOD_CLASSES
from adapter_studio.engine.objectives import OBJECTIVE_CLASSES, OBJECTIVES
from adapter_studio.engine.spec import MachinesSpec, TrainingSpec
from adapter_studio.gui.dialogs import show_error
from adapter_studio.gui.form_builder import SpecForm, field_label
from adapter_studio.gui.pages.base import Page, wrapped_label
from pydantic import ValidationError
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

DEMO_RECIPE = ("<i>Every setting above is given by the demo's recipe, for its dates; your own data gets the app's "
               "defaults.</i>")  # fmt: skip
OWN_SETTINGS = "<i>Every setting above is your own.</i>"


def esc(text: str) -> str:
    """Text for a rich-text label: <, > and & escaped, quotes as written (it is no attribute)."""
    return html.escape(text, quote=False)


def target_presets(info: Any) -> dict[str, list[str]]:
    if info is None:
        return {}
    presets = {
        "attention": list(info.attention_targets),
        "attention + MLP": list(dict.fromkeys([*info.attention_targets, *info.mlp_targets])),
        "all linear": list(info.all_linear_targets),
    }
    return {k: v for k, v in presets.items() if v}


class MethodPage(Page):
    title = "Method"
    hint = "Every method trains for real. The form shows the method's own settings; advanced ones are folded."

    def __init__(self, state) -> None:  # type: ignore[no-untyped-def]
        super().__init__(state)
        body = QHBoxLayout()
        self.list = QListWidget()
        self.list.setObjectName("methodList")
        self.list.setMaximumWidth(260)
        family = None
        for cls in METHOD_CLASSES:
            if cls.family != family:
                family = cls.family
                header = QListWidgetItem(family.upper())
                header.setFlags(Qt.ItemFlag.NoItemFlags)
                self.list.addItem(header)
            item = QListWidgetItem(f"  {cls.title}")
            item.setData(Qt.ItemDataRole.UserRole, cls.model_fields["name"].default)
            item.setToolTip(cls.description)
            self.list.addItem(item)
        self.list.currentItemChanged.connect(self._picked)
        body.addWidget(self.list)

        right = QVBoxLayout()
        self.details = wrapped_label("methodDetails")
        self.details.setTextFormat(Qt.TextFormat.RichText)
        right.addWidget(self.details)
        self.method_box = QGroupBox("Method settings")
        self.method_box_layout = QVBoxLayout(self.method_box)
        self.no_settings = wrapped_label("noMethodSettings")
        self.method_box_layout.addWidget(self.no_settings)
        right.addWidget(self.method_box)
        self.validation = wrapped_label("methodValidation")  # made first: the objective's box reports to it
        self.validation.setStyleSheet("color: #c00")
        right.addWidget(self._objective_box())
        right.addWidget(self.validation)
        training_box = QGroupBox("Training")
        training_layout = QVBoxLayout(training_box)
        self.training_form = SpecForm(TrainingSpec, state.training)
        self.training_form.setObjectName("trainingForm")
        self.training_form.changed.connect(self._training_edited)
        training_layout.addWidget(self.training_form)
        training_layout.addWidget(self._machines_section())
        # the values left empty above, as the engine will fill them, and why
        self.chosen = wrapped_label("chosenDefaults")
        self.chosen.setTextFormat(Qt.TextFormat.RichText)
        self.chosen.linkActivated.connect(self._rate_to_auto)
        training_layout.addWidget(self.chosen)
        right.addWidget(training_box)
        right.addStretch()
        holder = QWidget()
        holder.setLayout(right)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(holder)
        body.addWidget(scroll, 1)
        self.layout_.addLayout(body, 1)
        self.form: SpecForm | None = None
        state.method_changed.connect(self._from_state)
        state.objective_changed.connect(self._objective_from_state)
        state.data_changed.connect(self._objective_from_state)  # data the objective cannot train on
        state.objective_changed.connect(self._describe)  # the rate it lowers
        state.training_changed.connect(lambda: self.training_form.set_values(self.state.training))
        state.training_changed.connect(lambda: self.machines_form.set_values(self.state.training.machines))
        state.model_described.connect(self._rebuild_form)
        for signal in (
            state.model_described,
            state.method_changed,
            state.objective_changed,
            state.training_changed,
            state.spec_edited,
        ):
            signal.connect(self._explain_defaults)
        self._from_state()
        self._explain_defaults()

    def select(self, name: str) -> None:
        for i in range(self.list.count()):
            if self.list.item(i).data(Qt.ItemDataRole.UserRole) == name:
                self.list.setCurrentRow(i)
                return

    def _from_state(self) -> None:
        name = self.state.method.name
        current = self.list.currentItem()
        if current is None or current.data(Qt.ItemDataRole.UserRole) != name:
            self.list.blockSignals(True)
            self.select(name)
            self.list.blockSignals(False)
        if self.form is None or self.form.model_cls is not type(self.state.method):
            self._rebuild_form()
        else:
            self.form.set_values(self.state.method)
        self._describe()

    def _picked(self, item: QListWidgetItem | None, _previous: Any = None) -> None:
        name = item.data(Qt.ItemDataRole.UserRole) if item else None
        if not name or name == self.state.method.name:
            return
        self.state.set_method(self.state.method_named(name))

    # --- the objective: supervised, or a preference objective, beside the method -----------------
    def _objective_box(self) -> QGroupBox:
        box = QGroupBox("Objective")
        layout = QVBoxLayout(box)
        self.objective_picker = QComboBox()
        self.objective_picker.setObjectName("objectivePicker")
        for cls in OBJECTIVE_CLASSES:
            self.objective_picker.addItem(cls.title, cls.model_fields["name"].default)
            self.objective_picker.setItemData(self.objective_picker.count() - 1, cls.description,
                                              Qt.ItemDataRole.ToolTipRole)  # fmt: skip
        self.objective_picker.currentIndexChanged.connect(self._objective_picked)
        layout.addWidget(self.objective_picker)
        self.objective_details = wrapped_label("objectiveDetails")
        layout.addWidget(self.objective_details)
        self.objective_form_layout = QVBoxLayout()
        layout.addLayout(self.objective_form_layout)
        self.objective_form: SpecForm | None = None
        self._objective_from_state()
        return box

    def select_objective(self, name: str) -> None:
        self.objective_picker.setCurrentIndex(self.objective_picker.findData(name))

    def _objective_picked(self, index: int) -> None:
        name = self.objective_picker.itemData(index)
        if name and name != self.state.objective.name:
            self.state.set_objective(OBJECTIVES[name]())

    def _objective_from_state(self) -> None:
        objective = self.state.objective
        self.objective_picker.blockSignals(True)
        self.objective_picker.setCurrentIndex(self.objective_picker.findData(objective.name))
        self.objective_picker.blockSignals(False)
        data = {"preference": "pairs of chosen and rejected answers (data format preference)",
                "kto": "answers marked desirable or not (data format kto)"}  # fmt: skip
        cls = type(objective)
        needs = f" Trains on {data[cls.data_formats[0]]}." if cls.data_formats else ""
        problem = self.state.objective_problem()  # said here, not after Start as a failed run
        note = f"<p style='color:#c00'><b>Cannot train:</b> {esc(problem)} above</p>" if problem else ""
        self.objective_details.setText(f"{esc(cls.description)}{esc(needs)}{note}")
        if self.objective_form is not None and self.objective_form.model_cls is cls:
            self.objective_form.set_values(objective)
            return
        self._mistake("objective", None)
        if self.objective_form is not None:
            self.objective_form.setParent(None)
            self.objective_form.deleteLater()
        self.objective_form = SpecForm(cls, objective)
        self.objective_form.setObjectName("objectiveForm")
        self.objective_form.changed.connect(self._objective_edited)
        self.objective_form_layout.addWidget(self.objective_form)

    def _objective_edited(self, values: dict[str, Any]) -> None:
        try:
            objective = type(self.state.objective).model_validate({"name": self.state.objective.name, **values})
        except ValidationError as e:
            self._mistake("objective", e)
            return
        self._mistake("objective", None)
        self.state.objective = objective  # the form already shows these values: no rebuild
        self.state.spec_edited.emit()

    def _describe(self) -> None:
        cls = type(self.state.method)
        merge = "yes — can be folded into the base weights" if cls.mergeable else "no — exported as an adapter"
        note = ""
        info = self.state.model_info
        if info is not None:
            try:
                self.state.method.check(info, self.state.training)
            except Exception as e:  # UserError: this model (or these settings) cannot use the method
                said = esc(getattr(e, "message", str(e)))  # the message ends with its fix already
                note = f"<p style='color:#c00'><b>Cannot train:</b> {said}</p>"
        runs = getattr(self.state.method, "runs", None)  # AdapterFusion: the finished runs it fuses
        fused = f"<tr><td>Fuses</td><td>{esc(', '.join(Path(r).name for r in runs))}</td></tr>" if runs else ""
        if cls.routes_by_task:  # Poly: the tasks come from the data, not from a form field
            recorded = getattr(self.state.method, "tasks", [])
            if recorded:
                tasks = ", ".join(recorded)
            elif self.state.data_tasks:
                tasks = f"{', '.join(self.state.data_tasks)} (from the data's task column)"
            else:
                tasks = "each row's, from the data's task column when training starts (map it on the Data page)"
            fused += f"<tr><td>Tasks</td><td>{esc(tasks)}</td></tr>"
        rate = f"{cls.default_lr:g} (the method's usual rate)"
        if info is not None:
            size_rate = rate_for_size(cls(), info.total_params, info.task)
            rate = f"{size_rate.value:g} on this model, by its size"
            lowered = for_objective(size_rate, self.state.objective)
            if lowered is not size_rate:  # a preference objective's rate
                rate += f"; {lowered.value:g} for {self.state.objective.title}"
        text = esc  # the declarations' own text: "< 0.05%" is no tag
        self.details.setText(
            f"<h3>{text(cls.title)}</h3><p>{text(cls.description)}</p>"
            f"<table><tr><td>Family</td><td>{text(cls.family)}</td></tr>"
            f"<tr><td>Mergeable</td><td>{merge}</td></tr>"
            f"<tr><td>Typical trainable share</td><td>{text(cls.typical_share)}</td></tr>"
            f"<tr><td>Learning rate</td><td>{rate}</td></tr>"
            f"<tr><td>Models</td><td>{text(cls.supported_models)}</td></tr>{fused}</table>{note}"
        )

    def _rebuild_form(self) -> None:
        self._mistake("method", None)  # the form now shows the method's settings as they stand
        if self.form is not None:
            self.form.setParent(None)
            self.form.deleteLater()
        info = self.state.model_info
        norms = type(self.state.method).target_kind == "norms"
        names = [] if info is None else info.norm_names if norms else info.all_linear_targets
        self.form = SpecForm(
            type(self.state.method), self.state.method, module_names=names,
            presets={} if norms else target_presets(info),
        )  # fmt: skip
        self.form.setObjectName("methodForm")
        self.form.changed.connect(self._method_edited)
        self.method_box_layout.addWidget(self.form)
        # An empty box read as settings that failed to show.
        self.no_settings.setVisible(not self.form.widgets)
        self.no_settings.setText(f"{type(self.state.method).title} has no settings of its own; the Training box "
                                 "below sets its learning rate, batch and length.")  # fmt: skip
        self._describe()

    def _method_edited(self, values: dict[str, Any]) -> None:
        try:
            # Over the current values: fields without a widget (AdapterFusion's runs) keep theirs.
            method = type(self.state.method).model_validate({**self.state.method.model_dump(), **values})
        except ValidationError as e:
            self._mistake("method", e)
            return
        self._mistake("method", None)
        # Not set_method: the form already shows these values and must not be rebuilt under the cursor.
        self.state.method = method
        self.state.spec_edited.emit()

    def _machines_section(self) -> QCollapsible:
        """Training on several machines: the same spec started on each with its rank, here or through the
        Slurm / SkyPilot files written from it."""
        section = QCollapsible("Several machines", collapsedIcon="▶")
        section.setObjectName("machinesSection")
        self.machines_form = SpecForm(MachinesSpec, self.state.training.machines)
        self.machines_form.setObjectName("machinesForm")
        self.machines_form.changed.connect(self._machines_edited)
        section.addWidget(self.machines_form)
        write = QPushButton("Write Slurm and SkyPilot files…")
        write.setObjectName("writeClusterFiles")
        write.setToolTip("A batch script for Slurm and a task for SkyPilot that start this spec on every machine")
        write.clicked.connect(self._write_cluster_files)
        section.addWidget(write)
        self.cluster_note = wrapped_label("clusterFilesNote")
        self.cluster_note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        section.addWidget(self.cluster_note)
        return section

    def _machines_edited(self, values: dict[str, Any]) -> None:
        try:
            machines = MachinesSpec.model_validate({**values, "hosts": self.state.training.machines.hosts})
        except ValidationError as e:
            self._mistake("machines", e)
            return
        self._mistake("machines", None)
        self.state.training = self.state.training.model_copy(update={"machines": machines})
        self.state.spec_edited.emit()

    def _write_cluster_files(self) -> None:
        from adapter_studio.engine.training.cluster_files import write_cluster_files

        folder = QFileDialog.getExistingDirectory(self, "Where to write the cluster files")
        if not folder:
            return
        try:
            files = write_cluster_files(self.state.build_spec(), Path(folder))
        except UserError as e:
            show_error(self, e)
            return
        self.cluster_note.setText(f"Written to {folder}. Start with: " + "  or  ".join(files.commands()))

    def _training_edited(self, values: dict[str, Any]) -> None:
        try:
            # The machines are edited in their own section; this form has no field for them.
            self.state.training = TrainingSpec.model_validate({**values, "machines": self.state.training.machines})
            self._mistake("training", None)
            self.state.spec_edited.emit()
        except ValidationError as e:
            self._mistake("training", e)

    def _mistake(self, form: str, error: ValidationError | None) -> None:
        """Say (or clear) what does not read in a form, by its box's label ("feedforward modules: down_proj is not
        among …", not pydantic's "feedforward_modules: Value error, …"), and keep Start from training without it."""
        if error is None:
            self.state.form_mistakes.pop(form, None)
        else:
            first = error.errors()[0]
            box = " ".join(field_label(str(part)) for part in first["loc"]) or form
            self.state.form_mistakes[form] = f"{box}: {first['msg'].removeprefix('Value error, ')}"
        self.validation.setText(next(iter(self.state.form_mistakes.values()), ""))

    def _explain_defaults(self) -> None:
        """Why each empty field will have the value it gets (engine.defaults: the same for CLI runs)."""
        info = self.state.model_info
        if info is None:
            self.chosen.setText("<i>Empty fields are chosen to fit the model once one is picked.</i>")
            return
        chosen = choose(self.state.method, self.state.training, info, info.task, self.state.objective)
        rows = [f"<li><b>{html.escape(line.split(' = ', 1)[0].split('.')[-1].replace('_', ' '))}</b> = "
                f"{html.escape(line.split(' = ', 1)[1])}</li>" for line in explain(chosen, chosen.reasons)]  # fmt: skip
        if self.state.training.epochs is None and self.state.training.max_steps is None:
            rows.append("<li><b>epochs</b>: from the number of training rows when the run starts (one to three "
                        "passes: small data needs several)</li>")  # fmt: skip
        self.chosen.setText(self._rate_warning(info) + (
            f"<p><b>Chosen for you</b> (why this value):</p><ul>{''.join(rows)}</ul>" if rows
            else DEMO_RECIPE if self.state.demo is not None else OWN_SETTINGS))  # fmt: skip

    def _rate_warning(self, info: Any) -> str:
        """A learning rate set by hand, or by the demo's recipe, far from the method's usual one on this model
        (another method picked since: full fine-tuning at LoRA's 1e-3 unlearns what the model knew)."""
        rate = self.state.training.learning_rate
        if not isinstance(rate, float):
            return ""
        usual = for_objective(rate_for_size(self.state.method, info.total_params, info.task), self.state.objective)
        times = rate / usual.value
        if 0.1 <= times <= 10:
            return ""
        how = f"{times:.0f}×" if times > 1 else f"1/{1 / times:.0f} of"
        return (f"<p style='color:#b35900'>Learning rate {rate:g} is {how} the usual {usual.value:g} for "
                f"{esc(type(self.state.method).title)} on this model. <a href='auto'>Let the app choose "
                "it</a> (an empty field), or set one nearer.</p>")

    def _rate_to_auto(self, _link: str) -> None:
        self.state.set_training(self.state.training.model_copy(update={"learning_rate": None}))
        self.state.spec_edited.emit()
