"""What the person has chosen so far, shared by the pages: the pieces of a RunSpec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods import METHODS, MethodSpec
from adapter_studio.engine.objectives import OBJECTIVES, ObjectiveSpec, objective_for
from adapter_studio.engine.spec import DataSpec, ModelSpec, RunSpec, TrainingSpec
from PySide6.QtCore import QObject, Signal


class StudioState(QObject):
    """The current model, data, method and training settings; pages listen to its signals."""

    model_changed = Signal()
    model_described = Signal()  # the model's summary and layer names are known
    data_changed = Signal()
    method_changed = Signal()
    objective_changed = Signal()
    training_changed = Signal()
    spec_edited = Signal()  # a hyperparameter was edited in a form
    run_changed = Signal()  # the run folder that Train/Try/Export act on
    data_measured = Signal()  # the Data page counted the tokens of its rows (`measured_lengths`)

    def __init__(self, runs_dir: str = "runs") -> None:
        super().__init__()
        self.model: ModelSpec | None = None
        self.data: DataSpec | None = None
        self.method: MethodSpec = METHODS["lora"]()
        self.objective: ObjectiveSpec = OBJECTIVES["sft"]()  # what training optimises (issue 24)
        self.training = TrainingSpec()
        self.runs_dir = runs_dir
        self.model_summary: Any = None  # adapter_studio.engine.models.loading.ModelSummary once read
        self.model_info: Any = None  # adapter_studio.engine.models.info.ModelInfo once read
        self.current_run: Path | None = None
        self.last_estimate: dict[str, Any] | None = None  # the chosen method's cost row (Compare page)
        # The data's task names (its task column, as training will order them): Poly's router size on the
        # Compare page and its Tasks on the Method page, before training records them in the run.
        self.data_tasks: list[str] = []
        self.data_labels: int | None = None  # a classification file's labels: the Compare page's head size
        self.data_mistake: str | None = None  # a setting typed on the Data page that does not read (label names)
        # A box on the Method page that does not read, by form (method, objective, training, machines): Start
        # trained with the last settings that did, under the red line that said so.
        self.form_mistakes: dict[str, str] = {}
        self._lengths: tuple[DataSpec, dict[str, Any]] | None = None  # token counts, and the data they are of
        # The demo's spec while its data is the data: its recipe (LoRA on q,v, 150 steps of 8 at lr 1e-3) is
        # for its dates, and another data file gets the app's defaults instead, unless it was edited.
        self.demo: RunSpec | None = None
        self.run_name: str | None = None  # a spec's `name`, for the runs it starts (walkthrough --set name=… too)
        # Each method's settings as last left, by name: picking LoRA again after a look at full fine-tuning
        # brings back its rank and layers, not LoRA's defaults.
        self._methods: dict[str, MethodSpec] = {}

    def set_model(self, source: str) -> None:
        # A new model keeps the loading choices (device, dtype, quantisation) made for the last one.
        kept = self.model.model_dump(exclude={"source"}) if self.model is not None else {}
        if self.model is not None and source != self.model.source:
            self._methods = {}  # settings left on another model's layers (q_proj on a GPT-2)
        self.model = ModelSpec(source=source, **kept)
        self._lengths = None  # counted with the last model's tokenizer
        self.model_summary = None
        self.model_info = None
        self.model_changed.emit()

    def set_model_summary(self, summary: Any) -> None:
        self.model_summary = summary
        self.model_info = summary.info
        self.model_described.emit()

    def set_data_lengths(self, data: DataSpec, stats: dict[str, Any] | None) -> None:
        """The Data page's token counts (`engine.data.preview.length_stats`) of `data`, or None."""
        self._lengths = (data, stats) if stats is not None else None
        self.data_measured.emit()

    def measured_lengths(self) -> dict[str, Any] | None:
        """The token counts of the current data and model, once the Data page has them."""
        if self._lengths is None or self.data is None:
            return None
        # The page counts with the format it shows ("detect"), the state holds the one detected; a new
        # mapping or format reads the rows again and counts again.
        same = {"format", "columns"}
        counted, current = self._lengths[0].model_dump(exclude=same), self.data.model_dump(exclude=same)
        return self._lengths[1] if counted == current else None

    def set_data(self, data: DataSpec, tasks: list[str] | None = None) -> None:
        """`tasks`: the rows' task names as read (None: the same rows, so the same tasks)."""
        self.data = data
        if tasks is not None:
            self.data_tasks = list(tasks)
        self._leave_demo(data)
        self.data_changed.emit()
        self._fit_objective(data.format)

    def clear_data(self) -> None:
        """No data to train on: what the Data page was last given could not be read, and the data before it is
        no longer what the page shows (Start then asks for a dataset rather than train on the earlier one)."""
        if self.data is not None:
            self.data, self._lengths, self.data_labels = None, None, None
            self.data_changed.emit()

    def _leave_demo(self, data: DataSpec) -> None:
        """Other data than the demo's: the demo's method settings and training recipe make way for the app's
        defaults (the same method), unless the person changed them."""
        demo = self.demo
        if demo is None or data.path == demo.data.path:
            return
        self.demo = None
        if self.method == demo.method and self.training == demo.training:
            self.set_method(type(self.method)())
            self.set_training(TrainingSpec())
        if self._methods.get(demo.method.name) == demo.method:  # the demo's recipe, not the person's
            del self._methods[demo.method.name]

    def _fit_objective(self, fmt: str | None) -> None:
        """Preference pairs train with DPO, KTO's marked answers with KTO, other data with the supervised
        objective: data of a format the chosen objective cannot train on picks one that can (a person who
        loads pairs means to tune on them), and a fitting choice is left as it is."""
        if fmt is not None and not self.objective.trains_on(fmt):  # the first in picker order that can
            self.set_objective(objective_for(fmt)())

    def set_method(self, method: MethodSpec) -> None:
        self._methods[self.method.name] = self.method
        self.method = method
        self.method_changed.emit()

    def method_named(self, name: str) -> MethodSpec:
        """The method `name` as it was last left here, else with its defaults."""
        return self.method if name == self.method.name else self._methods.get(name) or METHODS[name]()

    def set_objective(self, objective: ObjectiveSpec) -> None:
        self.objective = objective
        self.objective_changed.emit()

    def objective_problem(self) -> str | None:
        """Why the chosen objective cannot train on the loaded data, with the fix in the window's words
        (the engine's names the spec's field); None when it can, or no data is loaded."""
        if self.data is None or not self.data.format:
            return None
        try:
            self.objective.check_data(self.data.format)
        except UserError as e:
            return f"{e.what} — load data it trains on (Data page), or pick {objective_for(self.data.format).title}"
        return None

    def set_training(self, training: TrainingSpec) -> None:
        self.training = training
        self.training_changed.emit()

    def apply_changes(self, changes: dict[str, Any]) -> None:
        """Make `section.field` → value changes (the memory advice's, engine.estimate.fit) as each page
        would, so every page shows them."""
        from adapter_studio.engine.estimate.fit import by_section as group

        by_section = group(changes)
        if "model" in by_section and self.model is not None:
            self.model = self.model.model_copy(update=by_section["model"])
            self.model_changed.emit()
        if "data" in by_section and self.data is not None:
            self.set_data(self.data.model_copy(update=by_section["data"]))
        if "training" in by_section:
            self.set_training(self.training.model_copy(update=by_section["training"]))
        self.spec_edited.emit()

    def set_runs_dir(self, folder: str) -> None:
        """The runs folder the person chose: used from now on, and at the next start."""
        from adapter_studio.gui.dialogs import remember_runs_dir

        self.runs_dir = str(Path(folder).expanduser().resolve())  # a folder typed as `runs` stays where it was
        remember_runs_dir(self.runs_dir)

    def set_current_run(self, run_dir: Path | None) -> None:
        self.current_run = run_dir
        self.run_changed.emit()

    def forget_gone_run(self) -> str | None:
        """Drop the current run where its folder was deleted or moved since it was chosen (Try, Evaluate and
        Export went on showing it, and an export said "not a run folder … (`adapter-studio runs` lists them)");
        what to say of it, or None where it is there."""
        from adapter_studio.engine.runs import is_run_folder

        run = self.current_run
        if run is None or is_run_folder(run):
            return None
        self.set_current_run(None)
        return f"The run {Path(run).name} is no longer there ({run}): pick one on the Runs page"

    def load_spec(self, spec: RunSpec, demo: bool = False) -> None:
        """Everything a spec says; `demo`: it is the demo's (`_leave_demo`)."""
        self.demo = spec if demo else None
        self.run_name = spec.name
        self._methods, self.data_labels = {}, None  # labels: counted again as the Data page reads the file
        self.data_mistake, self.form_mistakes = None, {}
        self.model = spec.model
        self.data = spec.data
        self.method = spec.method
        self.objective = spec.objective
        self.training = spec.training
        self._lengths = None
        self.model_summary = None
        self.model_info = None
        for signal in (self.model_changed, self.data_changed, self.method_changed, self.objective_changed,
                       self.training_changed):  # fmt: skip
            signal.emit()

    def missing(self) -> list[str]:
        """What still has to be chosen before a run can start."""
        return [name for name, value in (("a model", self.model), ("a dataset", self.data)) if value is None]

    def build_spec(self, settled: bool = True) -> RunSpec:
        """The spec the pages hold; `settled`: refused while a Method page box does not read (the session kept at
        closing takes the last settings that did)."""
        if self.model is None or self.data is None:
            raise UserError(f"choose {' and '.join(self.missing())} first", where="Start")
        if self.data_mistake:
            raise UserError(f"{self.data_mistake} (Data page)")
        if self.form_mistakes and settled:
            raise UserError(next(iter(self.form_mistakes.values())), where="Method page",
                            fix="put that box right (until it reads, Start would train with the settings before it)")
        return RunSpec(
            model=self.model, data=self.data, method=self.method, objective=self.objective, training=self.training,
            output_dir=self.runs_dir, name=self.run_name,
        )
