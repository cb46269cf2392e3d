"""Step 4: train and watch — live loss, memory and more, progress with ETA, stop and resume."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import Checkpoint, Eval, Finished, Log, LrFinder, Metrics, Stage, Started
from adapter_studio.engine.runs import RESUMABLE
from adapter_studio.engine.training.checkpoints import has_checkpoint
from adapter_studio.gui.data_texts import PAGE_NAMES
from adapter_studio.gui.form_builder import field_label
from adapter_studio.gui.pages.base import Page, wrapped_label
from adapter_studio.gui.plots import LivePlot, RangeTestPlot, ema
from adapter_studio.gui.spin_boxes import DoubleSpinBox
from adapter_studio.gui.worker import TrainingController
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

FINDER_HINT = "With the learning rate set to auto, a short range test finds it before training; its curve shows here."
STATE_COLORS = {"finished": "#2a7", "completed": "#2a7", "cancelled": "#c80", "stopped": "#c80", "failed": "#c00"}
# What a finished run's state says: where to go next, and that a stop keeps what it trained.
FINISHED_SAYS = {"completed": "completed — ask it on Try, score it on Evaluate",
                 "cancelled": "stopped — its checkpoint is kept; Resume goes on"}  # fmt: skip


def eval_line(e: Eval) -> str:
    """The log's line for an evaluation during training."""
    shares = (("accuracy", e.accuracy), ("exact match", e.exact_match), ("preference accuracy", e.preference_accuracy))
    extra = "".join(f", {k} {v:.1%}" for k, v in shares if v is not None)
    if e.reward_margin is not None:
        extra += f", reward margin {e.reward_margin:.3f}"
    return f"eval at step {e.step}: loss {e.eval_loss:.4f}{extra}"


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class TrainPage(Page):
    title = "Train"
    hint = "Training runs in the background; the window stays usable. Stop keeps a checkpoint; Resume continues."

    def __init__(self, state) -> None:  # type: ignore[no-untyped-def]
        super().__init__(state)
        self.controller = TrainingController(self)
        self.controller.events.connect(self.on_events)
        self.controller.done.connect(self.on_done)
        self.controller.failed.connect(self.on_failed)

        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start training")
        self.start_button.setObjectName("startButton")
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("stopButton")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setObjectName("resumeButton")
        self.resume_button.setEnabled(False)
        self.resume_button.clicked.connect(lambda: self.resume())
        for b in (self.start_button, self.stop_button, self.resume_button):
            buttons.addWidget(b)
        buttons.addStretch()
        # A stage's detail can be a long model path: it wraps, right-aligned, instead of widening the window.
        self.state_label = wrapped_label("runState", "ready")
        self.state_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        buttons.addWidget(self.state_label, 1)
        self.layout_.addLayout(buttons)

        self.progress = QProgressBar()
        self.progress.setObjectName("progress")
        self.progress.setFormat("")  # no run yet: no "0 / 100 steps" (Qt's default range)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.layout_.addWidget(self.progress)
        grid = QGridLayout()
        self.stats: dict[str, QLabel] = {}
        for i, key in enumerate(
            ("epoch", "elapsed", "ETA", "tokens seen", "tokens/s", "memory", "device", "trainable")
        ):
            label = QLabel("—")
            label.setObjectName(f"stat_{key.replace(' ', '_').replace('/', '_per_')}")
            caption = QLabel(f"<span style='color:gray'>{key}</span>")
            if key == "elapsed":  # the Runs page's Duration is the whole run: say why the two differ
                for widget in (caption, label):
                    widget.setToolTip("Time in training steps; loading, evaluations and saving are not counted")
            grid.addWidget(caption, 0 + 2 * (i // 4), i % 4)
            grid.addWidget(label, 1 + 2 * (i // 4), i % 4)
            self.stats[key] = label
        self.layout_.addLayout(grid)

        controls = QHBoxLayout()
        controls.addWidget(QLabel("smoothing"))
        self.smoothing = DoubleSpinBox()
        self.smoothing.setObjectName("smoothing")
        self.smoothing.setRange(0.0, 0.999)
        self.smoothing.setSingleStep(0.05)
        self.smoothing.setValue(0.9)
        self.smoothing.setToolTip("Weight of the exponential moving average of the loss (0: raw)")
        self.smoothing.valueChanged.connect(self.replot)
        controls.addWidget(self.smoothing)
        controls.addWidget(QLabel("x axis"))
        self.x_axis = QComboBox()
        self.x_axis.setObjectName("xAxis")
        self.x_axis.addItems(["step", "elapsed seconds"])
        self.x_axis.currentTextChanged.connect(self.replot)
        controls.addWidget(self.x_axis)
        self.log_loss = QCheckBox("log scale")
        self.log_loss.setObjectName("logLoss")
        self.log_loss.setToolTip("Loss on a log axis: a loss that falls from 0.6 to 0.01 stays readable at the end")
        controls.addWidget(self.log_loss)
        controls.addStretch()
        self.layout_.addLayout(controls)

        split = QSplitter(Qt.Orientation.Vertical)
        plots = QSplitter(Qt.Orientation.Horizontal)
        self.loss_plot = LivePlot("Loss", "loss")
        self.loss_plot.setObjectName("lossPlot")
        self.log_loss.toggled.connect(self.loss_plot.set_log_y)
        self.memory_plot = LivePlot("Memory", "MiB", min_span=0.1)
        self.memory_plot.setObjectName("memoryPlot")
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.memory_plot)
        self.more = QTabWidget()
        self.lr_plot = LivePlot("Learning rate", "lr")
        self.grad_plot = LivePlot("Gradient norm", "norm")
        self.speed_plot = LivePlot("Throughput", "tokens/s")
        self.quality_plot = LivePlot("Held-out quality", "share")
        self.quality_plot.setYRange(0, 1.02, padding=0)  # shares: a flat 0 was drawn on a -0.4 to 0.4 axis
        self.quality_plot.enableAutoRange(axis="y", enable=False)
        self.quality_plot.follow_steps(self.loss_plot)
        self.rewards_plot = LivePlot("Preference rewards", "reward")  # preference objectives (issue 24)
        self.rewards_plot.setObjectName("rewardsPlot")
        # The held-out quality first: at 1,280 px the fourth tab was cut to "Acc" behind the scroll arrows.
        for plot, name, tip in (
            (self.quality_plot, "Quality", "Held-out accuracy, exact match or preference accuracy at each evaluation"),
            (self.rewards_plot, "Rewards", "Preference objectives: the chosen and rejected answers' rewards"),
            (self.lr_plot, "Learning rate", "The learning rate at each step (warm-up, then decay)"),
            (self.grad_plot, "Grad norm", "The gradients' norm before clipping: spikes show an unstable step"),
            (self.speed_plot, "Tokens/s", "Training speed"),
        ):
            self.more.setTabToolTip(self.more.addTab(plot, name), tip)
        # The range test of `learning_rate: auto`: its curve, and the rate picked with the reason.
        self.finder_tab = QWidget()
        finder_layout = QVBoxLayout(self.finder_tab)
        finder_layout.setContentsMargins(0, 0, 0, 0)
        self.finder_plot = RangeTestPlot()
        self.finder_plot.setObjectName("lrFinderPlot")
        self.finder_label = wrapped_label("lrFinderReason", FINDER_HINT)
        finder_layout.addWidget(self.finder_plot, 1)
        finder_layout.addWidget(self.finder_label)
        self.more.addTab(self.finder_tab, "LR finder")
        self._show_tabs()
        state.objective_changed.connect(self._show_tabs)
        state.training_changed.connect(self._show_tabs)
        state.spec_edited.connect(self._show_tabs)
        plots.addWidget(self.more)
        split.addWidget(plots)
        self.log = QPlainTextEdit()
        self.log.setObjectName("logPane")
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        split.addWidget(self.log)
        split.setSizes([420, 140])
        self.layout_.addWidget(split, 1)

        self.metrics: list[Metrics] = []
        self.evals: list[Eval] = []
        self.total_steps = 0
        self.started_at = 0.0
        self.session_start_step = 0
        self.run_dir: Path | None = None
        self.last_status: str | None = None
        self.last_error: str | None = None

    @property
    def plots(self) -> dict[str, LivePlot]:
        return {
            "loss": self.loss_plot,
            "memory": self.memory_plot,
            "learning_rate": self.lr_plot,
            "grad_norm": self.grad_plot,
            "tokens_per_s": self.speed_plot,
            "quality": self.quality_plot,
            "rewards": self.rewards_plot,
        }

    # --- actions --------------------------------------------------------------------------------
    def start(self) -> None:
        if self.controller.running:
            return
        try:
            spec = self.state.build_spec()
            if self.state.model_info is not None:  # what the Method page says "Cannot train" of (BitFit on Llama):
                spec.method.check(self.state.model_info, spec.training)  # refused before a run folder is made
        except Exception as e:
            self.error(e)
            return
        spec = self.confirm_memory(spec)
        if spec is None:
            return
        self.run_spec(spec)

    def run_spec(self, spec: Any) -> None:
        """Start a run of exactly this spec, shown live here (a sweep's runs come through this too)."""
        if self.controller.running:
            return
        self._reset()
        self.set_state("loading model")
        self.controller.start(spec)
        self._running(True)

    def run_job(self, job: Any, state: str) -> bool:
        """Start a job whose runs are shown live here one after another (the automatic search:
        `job(emit, stop_event)`); False when a run is going already."""
        if self.controller.running:
            return False
        self._reset()
        self.set_state(state)
        self.controller.start_job(job)
        self._running(True)
        return True

    def confirm_memory(self, spec: Any) -> Any:
        """Before a start the estimate says will not fit: propose the change that makes it fit (the same
        estimate asked again, engine.estimate.fit); the person decides. The spec to run, or None."""
        row = self.state.last_estimate
        if not row or row.get("method") != self.state.method.name or row.get("fits") is not False:
            return spec
        from adapter_studio.engine.estimate.fit import describe, fit_advice, with_changes
        from adapter_studio.gui.pages.compare_page import labelled_share, step_length
        from adapter_studio.gui.pages.model_page import human_bytes

        need, have = row["memory_bytes"]["total"], row.get("device_memory_bytes", 0)
        told = f"This run is estimated to need {human_bytes(need)}, more than the {human_bytes(have)} of this device."
        measured = step_length(self.state)  # what the Compare page's estimate assumed
        try:
            advice = fit_advice(spec, measured[0] if measured else None, labelled_share(self.state))
        except Exception:  # the advice is a help, never a reason not to start
            advice = None
        if advice is not None and advice.changes:
            choice = self.ask_fit(
                f"{told} It fits with {describe(advice.changes)}: about {human_bytes(advice.needed)}."
            )
            if choice != "apply":
                return spec if choice == "anyway" else None
            fitted = with_changes(spec, advice.changes)
            self.state.apply_changes(advice.changes)
            return fitted
        nothing = " Nothing the app tried makes it fit." if advice is not None and advice.changes is None else ""
        return spec if self.ask_start_anyway(
            f"{told}{nothing} To fit: a smaller batch size, gradient checkpointing, shorter sequences (data max "
            "length), a lighter method (LoRA, IA3, prompt tuning) or a 4-bit base on a GPU.\n\nStart anyway?"
        ) else None

    def ask_fit(self, text: str) -> str:
        """"apply" (make the change and start), "anyway" (start as it is) or "cancel"."""
        from PySide6.QtWidgets import QMessageBox

        box = QMessageBox(QMessageBox.Icon.Question, "This may not fit in memory", text, parent=self)
        apply = box.addButton("Apply and start", QMessageBox.ButtonRole.AcceptRole)
        anyway = box.addButton("Start as it is", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return {apply: "apply", anyway: "anyway"}.get(box.clickedButton(), "cancel")

    def ask_start_anyway(self, text: str) -> bool:
        from PySide6.QtWidgets import QMessageBox

        answer = QMessageBox.question(self, "This may not fit in memory", text)
        return answer == QMessageBox.StandardButton.Yes

    def resume(self, run_dir: Path | None = None) -> None:
        """Continue a stopped, failed or interrupted run: `run_dir` (the Runs page's pick), or the one this page
        shows stopped — not the current run, which "Use for Try/Export" may have made a finished one."""
        if self.controller.running:
            if run_dir is not None:
                self.error(f"A run is training: stop it before resuming {run_dir.name}.")
            return
        if run_dir is None:
            if self.run_dir is None or self.last_status not in RESUMABLE:
                return
            run_dir = self.run_dir
        self._reset()
        if has_checkpoint(run_dir):
            self._replay_history(run_dir)  # the curve so far; the run goes on from its last checkpoint
        self.set_state("resuming")
        self.controller.start(None, resume_dir=run_dir)
        self._running(True)

    def _replay_history(self, run_dir: Path) -> None:
        """Show the curve so far, so a resumed run continues where it left off."""
        from adapter_studio.engine.events import read_events

        seen = [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, (Metrics, Eval, LrFinder))]
        self.on_events(seen)

    def stop(self) -> None:
        if not self.controller.running:  # the menu's Stop with nothing running: no "stopping" left standing
            return
        self.set_state("stopping — saving a checkpoint")
        self.controller.stop()
        self.stop_button.setEnabled(False)

    def _running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        # a run that failed before it started (no folder) has nothing to resume
        self.resume_button.setEnabled(not running and self.last_status in RESUMABLE and self.run_dir is not None)

    def _show_tabs(self, rewards: bool = False, finder: bool = False) -> None:
        """Only the tabs that can show something: rewards for a preference objective (or a run that reported
        them), the range test where the learning rate is found by it."""
        shown = rewards or self.state.objective.pairwise or self.rewards_plot.has_data()
        self.more.setTabVisible(self.more.indexOf(self.rewards_plot), shown)
        shown = finder or self.state.training.learning_rate == "auto" or self.finder_plot.has_data()
        self.more.setTabVisible(self.more.indexOf(self.finder_tab), shown)

    def _show_steps(self, steps: bool) -> None:
        """The bar counts steps while training; between them (loading a model, evaluating 60 answers) it is busy
        with no count: it read '0 / 100 steps' while the model loaded, and sat full at ETA 0:00 for a 47-s
        evaluation."""
        if steps:
            self.progress.setFormat("%v / %m steps")
            self.progress.setRange(0, max(self.total_steps, 1))
            self.progress.setValue(self.metrics[-1].step if self.metrics else self.session_start_step)
        else:
            self.progress.setRange(0, 0)

    def _reset(self) -> None:
        self.metrics, self.evals, self._smoothed = [], [], None  # the smoothed curve starts at the first loss
        self.started_at = 0.0  # until the run starts: a replayed history has no time left
        self.last_status = self.last_error = None
        self.run_dir = None
        for plot in self.plots.values():
            plot.clear_series()
        self.finder_plot.clear_data()
        self.finder_label.setText(FINDER_HINT)
        self._show_tabs()
        self.log.clear()
        self.progress.setRange(0, 0)  # busy until the run says how many steps it takes

    def set_state(self, text: str) -> None:
        color = STATE_COLORS.get(text.split()[0], "#357")
        self.state_label.setText(f"<b style='color:{color}'>{text}</b>")

    # --- events ---------------------------------------------------------------------------------
    def on_events(self, events: list[Any]) -> None:
        for event in events:
            self.apply(event)
        self.replot_incremental()

    def apply(self, event: Any) -> None:
        if isinstance(event, Started):
            if self.run_dir is not None and Path(event.run_dir) != self.run_dir:  # a job's next run: fresh curves
                self.metrics, self.evals, self._smoothed = [], [], None
                for plot in self.plots.values():
                    plot.clear_series()
            self.run_dir = Path(event.run_dir)
            self.state.set_current_run(self.run_dir)
            self.total_steps = event.total_steps
            self.session_start_step = event.resumed_from_step
            self.started_at = time.monotonic()
            self._show_steps(True)
            self.stats["device"].setText(f"{event.device}, {event.precision}")
            share = 100 * event.trainable_params / max(event.total_params, 1)
            self.stats["trainable"].setText(f"{event.trainable_params:,} ({share:.3f}%)")
        elif isinstance(event, Metrics):
            self.metrics.append(event)
            self._add_metrics(event)
            if self.progress.maximum() == 0:  # a step after a busy stage that named none to follow
                self._show_steps(True)
            self.progress.setValue(event.step)
            self._update_stats(event)
        elif isinstance(event, Eval):
            self.evals.append(event)
            self._add_eval(event)
            self.log.appendPlainText(eval_line(event))
        elif isinstance(event, Stage):
            text = event.stage if not event.detail else f"{event.stage}: {event.detail}"
            if event.stage in ("evaluating", "saving") and self.metrics:  # the busy bar shows no count: said here
                text += f" at step {self.metrics[-1].step:,} of {self.total_steps:,}"
            self.set_state(text)
            self._show_steps(event.stage == "training")  # loading, evaluating, saving: a busy bar, not a full one
        elif isinstance(event, Log) and event.level != "debug":
            prefix = "" if event.level == "info" else f"{event.level.upper()}: "
            self.log.appendPlainText(prefix + in_form_words(event.message))
        elif isinstance(event, LrFinder):
            self.finder_plot.show_test(event.rates, event.raw_losses, event.losses, event.chosen)
            self.finder_label.setText(f"<b>learning rate {event.chosen:.2g}</b>: {event.reason}")
            self._show_tabs(finder=True)
            self.more.setCurrentWidget(self.finder_tab)
        elif isinstance(event, Checkpoint):
            self.log.appendPlainText(f"checkpoint at step {event.step}: {event.path}")
        elif isinstance(event, Finished):
            self._show_steps(True)
            self.started_at = 0.0  # no time left to count
            self.stats["ETA"].setText("—")
            self.last_status, self.last_error = event.status, event.error
            self.set_state(event.status)
            if event.error:
                self.log.appendPlainText(f"ERROR: {event.error}")

    def _x(self, m: Metrics | Eval) -> float:
        if self.x_axis.currentText() == "step" or not self.metrics:
            return float(m.step)
        if isinstance(m, Metrics):
            return m.elapsed_s
        prior = [x for x in self.metrics if x.step <= m.step]
        return prior[-1].elapsed_s if prior else 0.0

    _smoothed: tuple[float, int] | None = None  # ema's running state

    def _add_metrics(self, m: Metrics) -> None:
        x = self._x(m)
        self.loss_plot.add("train loss", x, m.loss)
        smoothed, *state = ema(self._smoothed, m.loss, self.smoothing.value())
        self._smoothed = (state[0], state[1])
        self.loss_plot.add("smoothed", x, smoothed)
        mib = 2**20
        label = "CUDA allocated" if m.memory_reserved_bytes is not None else "process RAM"
        self.memory_plot.add(label, x, m.memory_bytes / mib)
        if m.memory_reserved_bytes is not None:
            self.memory_plot.add("CUDA reserved", x, m.memory_reserved_bytes / mib)
        if m.memory_peak_bytes is not None:
            self.memory_plot.add("CUDA peak", x, m.memory_peak_bytes / mib)
        self.lr_plot.add("lr", x, m.lr)
        self.grad_plot.add("grad norm", x, m.grad_norm)
        self.speed_plot.add("tokens/s", x, m.tokens_per_s)
        for name, value in (("chosen", m.rewards_chosen), ("rejected", m.rewards_rejected),
                            ("margin", m.reward_margin)):  # fmt: skip
            if value is not None:
                if not self.rewards_plot.has_data():
                    self._show_tabs(rewards=True)
                self.rewards_plot.add(name, x, value)
        if m.preference_accuracy is not None:
            self.quality_plot.add("preference accuracy (batch)", x, m.preference_accuracy)

    def _add_eval(self, e: Eval) -> None:
        x = self._x(e)
        self.loss_plot.ensure("eval loss", symbol="o")
        self.loss_plot.add("eval loss", x, e.eval_loss)
        shares = (("accuracy", e.accuracy), ("exact match", e.exact_match),
                  ("preference accuracy", e.preference_accuracy))  # fmt: skip
        for name, value in shares:
            if value is not None:
                self.quality_plot.ensure(name, symbol="o")
                self.quality_plot.add(name, x, value)
        if e.reward_margin is not None:
            self.rewards_plot.ensure("held-out margin", symbol="o")
            self.rewards_plot.add("held-out margin", x, e.reward_margin)

    def _update_stats(self, m: Metrics) -> None:
        # The time left from this session's own steps: a resumed run's replayed history came before its
        # start (it said "ETA 8:47" from the old session's clock), and a finished run has none.
        done = m.step - self.session_start_step
        live = self.started_at > 0 and done > 0
        eta = (time.monotonic() - self.started_at) / done * (self.total_steps - m.step) if live else None
        self.stats["epoch"].setText(f"{m.epoch:.2f}")
        self.stats["elapsed"].setText(format_seconds(m.elapsed_s))
        self.stats["ETA"].setText("—" if eta is None else format_seconds(eta))
        self.stats["tokens seen"].setText(f"{m.tokens_seen:,}")
        self.stats["tokens/s"].setText(f"{m.tokens_per_s:,.0f}")
        self.stats["memory"].setText(f"{m.memory_bytes / 2**20:,.0f} MiB")

    def replot_incremental(self) -> None:
        for plot in self.plots.values():
            plot.refresh()

    def replot(self) -> None:
        """Rebuild every curve (smoothing or x axis changed)."""
        for plot in self.plots.values():
            plot.clear_data()
            plot.set_x_label(self.x_axis.currentText())  # it said "step" under seconds
        self._smoothed = None
        for m in self.metrics:
            self._add_metrics(m)
        for e in self.evals:
            self._add_eval(e)
        self.replot_incremental()

    def on_done(self, result: Any) -> None:
        self.last_status, self.last_error = result.status, result.error
        self.set_state(FINISHED_SAYS.get(result.status, result.status))
        self._running(False)
        self.state.set_current_run(result.run_dir)
        if result.status == "failed" and result.error:
            self.error(f"The run failed: {result.error}")

    def on_failed(self, error: BaseException) -> None:
        if isinstance(error, UserError) and error.where == "output_dir":  # the window's way to it, not the spec's
            error = UserError(error.what, where="Runs folder",
                              fix="pick one you can write to: Settings › Runs folder…, or Choose… on the Runs page")
        self.last_status, self.last_error = "failed", getattr(error, "message", str(error))
        self.started_at = 0.0
        self.stats["ETA"].setText("—")
        self.set_state("failed")
        self._running(False)
        self.error(error)


CHOSEN = re.compile(r"^(model|data|method|training|objective)\.(\w+) = ")  # a default's line (engine.defaults.explain)


def in_form_words(message: str) -> str:
    """A chosen default's log line with the field as the window's boxes name it ("gradient checkpointing = off:
    …", not "training.gradient_checkpointing = off: …"); other lines as they are."""
    found = CHOSEN.match(message)
    if found is None:
        return message
    name = PAGE_NAMES.get(f"{found[1]}.{found[2]}", field_label(found[2]))
    return f"{name} = {message[found.end():]}"
