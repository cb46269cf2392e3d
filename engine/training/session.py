"""The training session: one run's state while it trains, and the recipe `execute` reads top to bottom.

1. load model and data, 2. fill defaults and check the method, 3. apply the method, 4. loop: forward,
backward, step, report, evaluate, checkpoint, 5. finish. Every outcome ends with a `finished` event;
nothing a person can cause escapes as a traceback. (The run folder, its lock and its event log are
training.run's.) Longer than 400 lines because it is that one recipe: its parts (optimizers,
compiled step, checkpoints, evaluation, speed options) live in their own modules.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.data.batches import collate, epoch_batches, sample_batches
from adapter_studio.engine.data.cache import CACHE_VERSION, data_stamps
from adapter_studio.engine.data.examples import run_labels
from adapter_studio.engine.data.kto import KtoSet, mix_kinds
from adapter_studio.engine.data.preference import model_rows
from adapter_studio.engine.data.prepare import keep_tasks, prepare_data
from adapter_studio.engine.errors import ResumeRefused, UserError
from adapter_studio.engine.events import Checkpoint, Emit, Eval, Finished, Log, Metrics, Stage, Started, stage_progress
from adapter_studio.engine.methods.poly import route_batch
from adapter_studio.engine.models.info import parameter_count
from adapter_studio.engine.objectives.logps import frozen_reference, keeps_reference_copy
from adapter_studio.engine.objectives.training import (
    PairPass,
    disable_dropout,
    evaluate_pairs,
    pair_step,
    reference_table,
    summarise,
    with_reference,
)
from adapter_studio.engine.spec import RunSpec, load_spec_file
from adapter_studio.engine.training import checkpoints as ckpt
from adapter_studio.engine.training import compile_cost, compiled_step
from adapter_studio.engine.training.compiled_step import StepCompiler
from adapter_studio.engine.training.devices import (
    avoid_per_shape_attention_plans,
    describe_device,
    memory_stats,
    pick_device,
    pick_precision,
    process_rank,
    sharded_run,
)
from adapter_studio.engine.training.divergence import DivergenceWatch, guessing_loss
from adapter_studio.engine.training.evaluation import EvaluationStopped, evaluate, held_out_warnings
from adapter_studio.engine.training.failures import NonFiniteLoss, explain_failure
from adapter_studio.engine.training.fast_loss import causal_lm_parts, labelled_loss
from adapter_studio.engine.training.lr_finder import AUTO, find_learning_rate, keep_found_rate
from adapter_studio.engine.training.optimizers import build_optimizer, build_scheduler
from adapter_studio.engine.training.resume_rules import data_changes
from adapter_studio.engine.training.speed import SpeedOptions

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.models.source import ModelSource

EVA_BATCHES = 16  # training batches a data-read start (LoRA's EVA) may read; it stops earlier once converged
PACKED = {"4bit": ", its weights in 4-bit NF4", "8bit": ", its weights in 8 bits"}  # said on the load line


def _source_used(spec: RunSpec, source: ModelSource) -> tuple[RunSpec, dict[str, str]]:
    """An embedded model's hub id that was not cached trained the shipped copy: the run's saved spec names that
    copy, so its evaluation, export and resume load the same weights even after the hub's are downloaded."""
    from adapter_studio.engine.models.embedded import embedded_name

    used = embedded_name(spec.model.source)
    if not source.note or used is None or used == spec.model.source:
        return spec, {}
    model = spec.model.model_copy(update={"source": used})
    return spec.model_copy(update={"model": model}), {"model.source": source.note}


class TrainingSession:
    """One run's state while it trains; `execute` is the recipe."""

    def __init__(
        self, spec: RunSpec, run_dir: Path, report: Emit, stop: threading.Event, resume: bool, speed: SpeedOptions,
        data_format: str | None = None,
    ) -> None:  # fmt: skip
        self.spec = spec
        self.data_format = data_format  # the preflight's, for a new run (engine.training.preflight)
        self.speed = speed
        self.run_dir = run_dir
        self.report = report
        self.stop = stop
        self.resume = resume
        self.failed_by_person = False  # whether the run failed on a UserError (bad data, a setting)
        latest = ckpt.latest_checkpoint(run_dir / "checkpoints") if resume else None
        self.step = int(latest.name.split("-")[1]) if latest else 0  # where a resume that fails early stands
        self.tokens_trained = 0
        self.train_seconds = 0.0
        self.last_checkpoint: Path | None = None
        self.compiler = StepCompiler(speed, self.log)
        self.pairwise, self.reference, self.pair_stats = False, None, []  # preference objectives (_setup)
        self.reference_tables: tuple[Any, Any] | None = None  # (training, held-out) precomputed reference

    def log(self, message: str, level: str = "info") -> None:
        self.report(Log(level=level, message=message))

    def stage(self, stage: str, detail: str = "") -> None:
        self.report(Stage(stage=stage, detail=detail))

    def execute(self) -> tuple[str, str | None]:
        """Train; (status, error message or None)."""
        status, error = "failed", None
        try:
            status = self._train()
        except UserError as e:
            if isinstance(e, ResumeRefused):
                raise  # not a failure of the run: it stays as it was
            error, self.failed_by_person = e.message, True
        except NonFiniteLoss as e:
            error = str(e)
        except Exception as e:  # the run must end with a message, whatever broke
            error = explain_failure(e)
            self.log(traceback.format_exc(), level="debug")
        finally:
            self.compiler.restore()
        if error:
            self.log(error, level="error")
            self._save_on_failure()
        self.report(Finished(status=status if error is None else "failed", step=self.step, error=error,
                             train_seconds=round(self.train_seconds, 3),
                             tokens_trained=self.tokens_trained))  # fmt: skip
        return (status if error is None else "failed"), error

    def _guessing_loss(self) -> float | None:
        """A classifier's loss when it only guesses the label frequencies (where a collapse ends)."""
        if self.task != "classification":
            return None
        labels = getattr(self.data.train, "labels", None)
        return guessing_loss(labels.tolist() if labels is not None else [x.labels[0] for x in self.data.train])

    # --- setting up ------------------------------------------------------------------------------
    def _resolve_checkpointing(self, spec: RunSpec, config: Any, task: str, device: str,
                               data: Any) -> tuple[RunSpec, dict[str, str]]:
        """`gradient_checkpointing: auto` decided by the memory estimate at this data's longest row."""
        from adapter_studio.engine.defaults import DEFAULT_MAX_LENGTH
        from adapter_studio.engine.estimate.fit import resolve_checkpointing

        if spec.training.gradient_checkpointing != "auto":
            return spec, {}
        limit = spec.data.max_length or DEFAULT_MAX_LENGTH
        rows = model_rows(data.train)  # a pair's sides apart: the estimate counts 2·B rows of them
        lengths = getattr(rows, "lengths", None)
        longest = int(max(lengths)) if lengths is not None and len(lengths) else limit
        share = getattr(rows, "labelled_share", None)  # pair log-probabilities project the answers only too
        try:
            return resolve_checkpointing(spec, config, task, device, min(longest, limit), share)
        except Exception as e:  # the estimate is advice: a run never fails for want of it
            self.log(f"no memory estimate for gradient checkpointing: {type(e).__name__}: {e}", level="debug")
            training = spec.training.model_copy(update={"gradient_checkpointing": "off"})
            return spec.model_copy(update={"training": training}), {}

    def _setup(self) -> None:
        from adapter_studio.engine.imports import import_heavy_modules
        from adapter_studio.engine.training.preflight import check_inputs

        fmt = self.data_format or check_inputs(self.spec)  # a resumed run's files may have moved since
        import_heavy_modules()  # before torch: the collector is paused while they import
        import torch
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import set_seed
        from adapter_studio.engine.defaults import (
            default_rate,
            explain,
            resolve,
            resolve_epochs,
            resolve_eval_split,
            resolve_objective,
            task_for,
        )
        from adapter_studio.engine.methods import MethodContext
        from adapter_studio.engine.models.construction import model_construction
        from adapter_studio.engine.models.info import describe_model
        from adapter_studio.engine.models.loading import head_note, load_model, trains_in_base_dtype, weights_dtype

        spec = self.spec
        set_seed(spec.training.seed)
        with_objective = resolve_objective(spec, fmt)  # preference pairs train with DPO unless the spec says
        spec, objective_reasons = with_objective.spec, with_objective.reasons
        task = task_for(spec, fmt)
        device = pick_device(spec.model.device)
        precision = pick_precision(spec.training.precision, device)
        loftq = getattr(spec.method, "init", None) == "loftq"
        if loftq:
            from adapter_studio.engine.methods.loftq import refuse_where_unfit

            refuse_where_unfit(spec.model.quantization, spec.objective)
        if device == "cuda":
            avoid_per_shape_attention_plans()
        self.stage("loading model", spec.model.source)
        t0 = time.perf_counter()
        # FSDP flattens each wrapped block's weights into one tensor of one dtype: with float32
        # adapters the frozen base must be float32 too (its mixed-precision policy computes in bf16).
        base_trains = trains_in_base_dtype(spec.method) or sharded_run()
        model, tokenizer, source = load_model(
            spec.model,
            task,
            dtype=weights_dtype(spec.model.dtype, device, base_trains, precision),
            id2label=run_labels(spec.data) if task == "classification" else None,
        )
        packed = PACKED.get(spec.model.quantization, "")
        self.log(f"loaded {source.display_name} in {time.perf_counter() - t0:.1f} s{packed}")
        labels, trust = model.config.num_labels, spec.model.trust_remote_code
        if task == "classification" and (note := head_note(source, labels, trust)):  # a saved head replaced
            self.log(note)
        spec, source_reasons = _source_used(spec, source)
        from adapter_studio.engine.models.unquantised import unquantised_folder

        weights_folder = unquantised_folder(source) if loftq else None  # LoftQ reads the original weights
        # A training forward has no use for a key/value cache; building one also makes every compiled
        # block depend on its own layer's cache state (a recompile per block). Generation asks for it.
        model.config.use_cache = False
        info = describe_model(model)
        resolved = resolve(spec, info, task, model.config)
        spec, reasons = resolved.spec, {**source_reasons, **objective_reasons, **resolved.reasons}
        if self.resume:  # an `auto` run trains on with the rate its range test picked
            spec = keep_found_rate(spec, self.run_dir)
        spec.method.check(info, spec.training)
        self.spec = spec
        from adapter_studio.engine.methods.selective import notes_for

        for note in notes_for(spec.method, info):
            self.log(note)

        self.stage("tokenising")
        self.data_stamps = data_stamps(spec.data)  # recorded in each checkpoint; a resume compares
        data = prepare_data(spec.data, tokenizer, task, spec.data.max_length or 512, spec.training.seed,
                            progress=stage_progress(self.report, "tokenising"))
        spec.objective.check_data(data.format)  # preference data needs a preference objective, and back
        where = spec.data.path if isinstance(spec.data.path, str) else spec.data.path[0]
        if spec.method.routes_by_task:  # the task names go into the saved spec: the run loads without its data
            method = spec.method.with_tasks(data.tasks, spec.data.packing, where)
            spec = spec.model_copy(update={"method": method})
        keep_tasks(data, spec.method.routes_by_task, (where, str(spec.data.eval_path or where)))
        dropped = f"; {len(data.dropped)} {'row' if len(data.dropped) == 1 else 'rows'} dropped" if data.dropped else ""
        self.log(
            f"{len(data.train):,} training and {len(data.eval):,} held-out examples ({data.format} format: "
            f"{', '.join(f'{r} ← {c}' for r, c in data.columns.items())}; {data.train_tokens:,} tokens){dropped}"
        )
        for note in data.dropped[:10]:
            self.log(f"dropped {note}", level="warning")
        for note in held_out_warnings(data):
            self.log(note, level="warning")
        if data.truncated:
            many = "examples were" if data.truncated > 1 else "example was"
            self.log(f"{data.truncated} {many} truncated to {spec.data.max_length} tokens", level="warning")
        with_epochs = resolve_epochs(spec, len(data.train))
        held_out = resolve_eval_split(with_epochs.spec, data.rows)
        spec, reasons = held_out.spec, {**reasons, **with_epochs.reasons, **held_out.reasons}
        spec, checkpointing = self._resolve_checkpointing(spec, model.config, task, device, data)
        reasons.update(checkpointing)
        for line in explain(spec, reasons):  # the values the person left to the app, and why
            self.log(line)
        self.spec = spec
        self.default_lr = default_rate(spec, info, task)  # where an `auto` run's range test centres

        t = spec.training
        # accelerate keeps its settings in a process-wide singleton; the window trains many runs in
        # one process, each with its own precision. The distributed state (PartialState) is kept.
        AcceleratorState._reset_state()
        self.accelerator = Accelerator(mixed_precision={"bf16": "bf16", "fp16": "fp16"}.get(precision, "no"),
                                       cpu=device == "cpu")  # fmt: skip
        world = self.accelerator.num_processes
        micro_per_epoch = math.ceil(len(data.train) / (t.batch_size or 1) / world)
        steps_per_epoch = max(1, micro_per_epoch // t.gradient_accumulation)
        self.total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
        if self.resume:  # before the spec is saved: a resume refused leaves it as it was (the saved one compared)
            saved = load_spec_file(self.run_dir / "spec.yaml").training
            ckpt.check_steps_ahead(t, saved, self.total_steps, self.step)  # the newest checkpoint's, as constructed
        if process_rank() == 0:
            spec.save(self.run_dir / "spec.yaml")
        self.micro_per_epoch = max(1, micro_per_epoch)

        self.pairwise, self.reference = spec.objective.pairwise, None
        if spec.method.reads_data and self.pairwise:
            raise UserError(f"{spec.method.title} with init {getattr(spec.method, 'init', '')} starts from the "
                            "training rows' activations, which preference pairs do not give", where="method.init",
                            fix="pick init default, pissa or olora for a preference objective")  # fmt: skip
        self.pad_id = pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ctx = MethodContext(info=info, training=t, total_steps=self.total_steps, tokenizer=tokenizer,
                            sample_batches=lambda rows: sample_batches(
                                data.train, pad, task == "classification", max(rows, t.batch_size or 4),
                                EVA_BATCHES, t.seed),
                            weights_folder=weights_folder, log=self.log)  # fmt: skip
        if keeps_reference_copy(spec.objective, spec.method):
            # The method changes the base's own weights: the reference is a frozen copy (a second model).
            copy = frozen_reference(model).to(self.accelerator.device)
            self.reference = (copy, causal_lm_parts(copy) if self.accelerator.num_processes == 1 else None)
            self.log(f"{spec.objective.title} compares with the model before training: {spec.method.title} changes "
                     "the base weights, so a frozen copy of the model is kept as the reference (twice the memory "
                     "of the weights; LoRA-family methods switch their adapter off instead)", level="warning")
        with model_construction():  # peft makes its modules in the process's default dtype
            model = apply_method(spec, model, ctx)
        if getattr(spec.objective, "disable_dropout", False) and (dropped := disable_dropout(model)):
            self.log(f"{spec.objective.title}: dropout turned off in {dropped} layers (objective.disable_dropout), so "
                     "the log-probabilities it compares carry no random noise")  # fmt: skip
        self.speed.speed_up_lora_layers(model, device, precision)
        if t.gradient_checkpointing == "on":
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise UserError(f"{spec.method.title} left nothing to train on this model", where="method")
        lr = self.default_lr if t.learning_rate in (None, AUTO) else t.learning_rate  # auto: remade later
        optimizer = spec.method.build_optimizer(model, lr, t.weight_decay) or build_optimizer(
            t.optimizer, trainable, lr, t
        )
        scheduler = build_scheduler(optimizer, t, self.total_steps)
        model, optimizer = self.accelerator.prepare(model, optimizer)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.tokenizer, self.data, self.task, self.precision = tokenizer, data, task, precision
        self.device_name = describe_device(device)
        self.device = device
        self.trainable_params = sum(p.numel() for p in trainable)
        self.total_params = sum(parameter_count(p) for p in self.accelerator.unwrap_model(model).parameters())
        self.lengths = [len(x.input_ids) for x in data.train]
        # Project only labelled positions (one process: DDP must see the whole model's forward).
        single = self.accelerator.num_processes == 1
        self.fast_parts = causal_lm_parts(model) if task == "causal_lm" and single else None
        config = getattr(self.accelerator.unwrap_model(model), "config", None)
        key = compile_cost.cost_key(device, config, spec.method, precision, self.speed)
        self.compiler.attach(self.fast_parts, model, device, key, self.accelerator.is_main_process)
        if t.compile == "on" and self.pairwise:
            self.log("training.compile: on is not used with preference objectives yet; training uncompiled",
                     level="warning")
        elif t.compile == "on":
            what = self.compiler.compile()
            self.log(f"compiling the training step (torch.compile of {what}); the first step takes a while")
        # auto: one process only, where a failed compile can fall back without the others waiting on it;
        # CPUs and CUDA GPUs, where it was measured (inductor on Apple's MPS is still a prototype), and
        # not over a bitsandbytes base, whose kernels dynamo does not see into (not measured).
        self.compiler.auto = (t.compile == "auto" and single and not self.pairwise and device in ("cpu", "cuda")
                             and not spec.method.routes_by_task  # its per-step hooks would recompile
                             and spec.model.quantization == "none"
                             and compiled_step.compile_unavailable(device) is None)
        switchable = (device == "cpu" and task == "causal_lm"  # measured on decoders (SmolLM2) only
                      and getattr(config, "_attn_implementation", None) == "sdpa")
        self.attention_config = config if switchable and self.speed.cpu_eager_attention_max_width else None
        if getattr(spec.objective, "precompute_reference", False):
            self._precompute_reference()
        if self.resume:
            self._restore()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def _precompute_reference(self) -> None:
        """objective.precompute_reference: every pair's reference log-probabilities once, before training."""
        started = time.perf_counter()
        self.stage("reference", f"{len(self.data.train) + len(self.data.eval):,} pairs")
        run = self._pair_pass(batch_size=2 * (self.spec.training.batch_size or 4))
        self.reference_tables = (reference_table(run, self.data.train), reference_table(run, self.data.eval))
        kept = "" if self.reference is None else "; the frozen copy of the model is let go"
        self.reference = None
        self.log(f"reference log-probabilities of {len(self.data.train) + len(self.data.eval):,} pairs computed in "
                 f"{time.perf_counter() - started:.0f} s (objective.precompute_reference){kept}")

    def _restore(self) -> None:
        latest, skipped = ckpt.newest_sound_checkpoint(self.run_dir / "checkpoints")
        for line in skipped:  # cut short by a crash or changed since: the one before it is whole
            self.log(f"skipped checkpoint {line}", level="warning")
        if latest is None:
            self.log("no checkpoint to resume from: starting from step 0", level="warning")
            self.step = 0
            return
        ckpt.load_trainable(self.accelerator.unwrap_model(self.model), latest)
        state = ckpt.load_state(latest, self.optimizer, self.scheduler)
        if not state["has_optimizer"]:
            self.log("the checkpoint of a sharded (FSDP) run holds no optimizer state: AdamW starts afresh",
                     level="warning")
        self.step = int(state["step"])
        self.tokens_trained = int(state.get("tokens_trained", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.best_eval = state.get("best_eval")
        self.log(f"resumed from {latest.name} (step {self.step})")
        if state.get("schedule_note"):  # a resume given another length: the schedule follows it
            self.log(state["schedule_note"])
        for warning in data_changes(state, self.data_stamps, latest.name):
            self.log(warning, level="warning")

    # --- the loop --------------------------------------------------------------------------------
    def _train(self) -> str:
        self.best_eval: float | None = None
        self._setup()  # imports torch with the heavy modules
        import torch

        t = self.spec.training
        self.report(
            Started(
                run_dir=str(self.run_dir.resolve()),  # absolute, as a new run's: a resume named it as typed
                model=self.spec.model.source,
                method=self.spec.method.name,
                trainable_params=self.trainable_params,
                total_params=self.total_params,
                total_steps=self.total_steps,
                device=self.device_name,
                precision=self.precision,
                resumed_from_step=self.step,
            )
        )
        self.log(
            f"training {self.trainable_params:,} of {self.total_params:,} parameters "
            f"({100 * self.trainable_params / self.total_params:.3f}%) on {self.device_name}, {self.precision}"
        )
        if t.learning_rate == AUTO:  # the range test; then training exactly as if given the rate it picked
            t = find_learning_rate(self)
        if t.eval_on_start and self.step == 0 and self.data.eval:
            self._evaluate(counts_as_best=False)  # before any training: no checkpoint to be the best of
        compiling = t.compile == "on"
        if compiling:  # its first minute goes to compiling: say so rather than seem stuck at step 0
            self.stage("compiling", compiled_step.COMPILING)
        else:
            self.stage("training")
        start_step, start_seconds = self.step, self.train_seconds
        model, optimizer, scheduler = self.model, self.optimizer, self.scheduler
        method = self.spec.method
        unwrapped = self.accelerator.unwrap_model(model)
        eval_every = t.eval_every or t.save_every
        stale_evals = 0
        watch = DivergenceWatch(self._guessing_loss())
        window_tokens, window_start = 0, time.perf_counter()
        model.train()
        last, folder = ckpt.latest_checkpoint(self.run_dir / "checkpoints"), self.run_dir / "checkpoints"
        finishing = self.resume and self.step >= self.total_steps and self.data.eval  # stopped in its last evaluation
        if finishing and self._evaluate() and self.accelerator.is_main_process and last is not None:
            ckpt.copy_as_best(last, folder)
        while self.step < self.total_steps:
            if self._should_stop():
                self._checkpoint()
                return "cancelled"
            step_start = time.perf_counter()
            try:
                losses, tokens = self._accumulate_gradients()
            except Exception as error:
                if not (compiling and t.compile == "auto"):
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                self.compiler.give_up(error)  # the same step again, uncompiled
                losses, tokens = self._accumulate_gradients()
            window_tokens += tokens
            grad_norm = (
                self.accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm) if t.max_grad_norm > 0 else None
            )
            optimizer.step()
            step_lr = float(scheduler.get_last_lr()[0])  # the rate this step used (after step(): the next one's)
            scheduler.step()
            method.on_step(unwrapped, self.step)  # before zero_grad: AdaLoRA scores ranks by their gradients
            optimizer.zero_grad(set_to_none=True)
            self.step += 1
            step_seconds = time.perf_counter() - step_start
            self.train_seconds += step_seconds
            self.compiler.after_step(step_seconds)
            if compiling:
                compiling = False
                self.stage("training")

            if self.step % t.log_every == 0 or self.step == self.total_steps:
                loss_value, window_tokens = self._gather(torch.stack(losses).mean(), window_tokens)
                if not math.isfinite(loss_value):
                    raise NonFiniteLoss(
                        f"the loss became {loss_value} at step {self.step} — lower the learning rate "
                        f"(now {t.learning_rate:g}), keep gradient clipping on, or check the data for empty rows"
                    )
                diverged = watch.add(loss_value)
                if diverged:
                    raise NonFiniteLoss(
                        f"stopped at step {self.step}: {diverged} — the run diverged; lower the learning rate "
                        f"(now {t.learning_rate:g}) or raise the batch size (now {t.batch_size}); the checkpoints "
                        "before this step are kept"
                    )
                elapsed = time.perf_counter() - window_start
                self.tokens_trained += window_tokens
                self.report(
                    Metrics(
                        step=self.step,
                        epoch=round(self.step * t.gradient_accumulation / self.micro_per_epoch, 4),
                        loss=loss_value,
                        lr=step_lr,
                        grad_norm=float(grad_norm) if grad_norm is not None else 0.0,
                        tokens_per_s=window_tokens / elapsed if elapsed > 0 else 0.0,
                        tokens_seen=self.tokens_trained,
                        elapsed_s=round(self.train_seconds, 3),
                        **memory_stats(self.device),
                        **(summarise(self.pair_stats, self.spec.objective.paired) if self.pair_stats else {}),
                    )
                )
                window_tokens, window_start = 0, time.perf_counter()

            at_end = self.step == self.total_steps
            # Save before evaluating: a failure in evaluation must not cost the training behind it.
            # Every process takes part (a sharded run gathers its tensors); only the main one gets a path.
            checkpointed = self.step % t.save_every == 0 or at_end
            saved = self._checkpoint() if checkpointed else None
            if (self.step % eval_every == 0 or at_end) and self.data.eval:
                improved = self._evaluate()
                stale_evals = 0 if improved else stale_evals + (improved is False)  # None: stopped in it
                if improved is None and at_end:  # stopped in the last evaluation: the run was stopped, as asked
                    return "cancelled"
                if improved and saved is not None:  # only the main process saved (and copies)
                    ckpt.copy_as_best(saved, self.run_dir / "checkpoints")
                model.train()
            if t.early_stopping_patience and stale_evals >= t.early_stopping_patience:
                self.log(f"eval loss has not improved for {stale_evals} evaluations: stopping early")
                if not checkpointed:
                    self._checkpoint()
                return "completed"
            if self.compiler.auto and self.step - start_step >= self.speed.auto_compile_after_steps:
                per_step = (self.train_seconds - start_seconds) / (self.step - start_step)
                compiling = self.compiler.worth_it((self.total_steps - self.step) * per_step)
                if compiling:
                    self.stage("compiling", compiled_step.COMPILING)
        return "completed"

    def _accumulate_gradients(self) -> tuple[list[Any], int]:
        """Forward and backward over the step's micro-batches: (their losses, real tokens)."""
        t = self.spec.training
        losses, tokens = [], 0
        self.pair_stats: list[Any] = []  # a preference objective's rewards of this step's pairs
        for micro in range(t.gradient_accumulation):
            if self.compiler.compiled and self.speed.compile_mode == "reduce-overhead":
                import torch

                torch.compiler.cudagraph_mark_step_begin()  # the last micro-step's graph outputs are done with
            batch, real_tokens = self._batch(self.step * t.gradient_accumulation + micro)
            self._pick_attention(batch["input_ids"].shape[1])
            with route_batch(self.model, batch) as inputs:  # the backward may recompute the routed forward
                with self.accelerator.autocast():
                    full_loss = self._loss(inputs)
                self.accelerator.backward(full_loss / t.gradient_accumulation)
            losses.append(full_loss.detach())
            tokens += real_tokens
        return losses, tokens

    def _loss(self, batch: dict[str, Any]) -> Any:
        if self.pairwise:
            loss, stats = pair_step(self.spec.objective, self.model, self.fast_parts, batch, self.reference)
            self.pair_stats.append(stats)
            return loss
        if self.fast_parts:
            return labelled_loss(self.fast_parts, batch)
        return self.model(**batch).loss

    def _should_stop(self) -> bool:
        """Every process must stop at the same step, or the others wait forever in an all-reduce."""
        if self.accelerator.num_processes == 1:
            return self.stop.is_set()
        import torch

        flag = torch.tensor([1.0 if self.stop.is_set() else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "sum").item() > 0)

    def _gather(self, loss: torch.Tensor, tokens: int) -> tuple[float, int]:
        """Loss averaged and tokens summed over processes; the only host sync of a logging step."""
        if self.accelerator.num_processes == 1:
            return float(loss), tokens
        import torch

        packed = torch.stack([loss.float(), torch.tensor(float(tokens), device=loss.device)])
        total = self.accelerator.reduce(packed, "sum")
        return float(total[0]) / self.accelerator.num_processes, int(total[1])

    def _pick_attention(self, width: int) -> None:
        """Eager attention for short batches on a CPU, SDPA otherwise (SpeedOptions); the attention
        layers and the mask builder read the choice from the config at every forward."""
        if self.attention_config is not None:
            self.attention_config._attn_implementation = self.speed.attention_for(width)

    def _batch(self, micro_index: int) -> tuple[dict[str, Any], int]:
        """The micro-batch at a global position: a pure function of (seed, position), so resuming
        at step k continues with exactly the data an uninterrupted run would have seen."""
        epoch, within = divmod(micro_index, self.micro_per_epoch)
        batches = self._epoch_batches(epoch)
        indices = batches[within % len(batches)]
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        if world > 1:
            indices = indices[rank::world] or indices[:1]
        items = [self.data.train[i] for i in indices]
        longest = max(self.lengths[i] for i in indices)
        limit = self.spec.data.max_length or longest
        multiple = self.speed.multiple_for(self.device, self.compiler.compiled, longest, limit)
        batch = collate(items, self.pad_id, self.task == "classification", multiple)
        # Real (non-padding) tokens counted on the host: no device sync for throughput numbers.
        tokens = sum(len(x.input_ids) for x in items)
        batch = {k: v.to(self.accelerator.device, non_blocking=True) for k, v in batch.items()}
        if self.reference_tables is not None:
            batch = with_reference(batch, self.reference_tables[0], indices)
        return batch, tokens

    _epoch_cache: tuple[int, list[list[int]]] | None = None

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            size = (self.spec.training.batch_size or 1) * self.accelerator.num_processes
            batches = epoch_batches(self.lengths, size, self.spec.training.seed, epoch)
            if isinstance(self.data.train, KtoSet):  # KTO's step margin needs both kinds in a batch
                batches = mix_kinds(batches, self.data.train.desirable, self.accelerator.num_processes)
            self._epoch_cache = (epoch, batches)
        return self._epoch_cache[1]

    def _evaluate(self, counts_as_best: bool = True) -> bool | None:
        import torch

        self.stage("evaluating")
        # Compiled blocks run eagerly here: every evaluation and generation shape would be another compile.
        eager = torch.compiler.set_stance("force_eager") if self.compiler.compiled else contextlib.nullcontext()
        # Stop leaves an evaluation unfinished; the processes of a sharded run finish its forwards together.
        stopped = self.stop.is_set if self.accelerator.num_processes == 1 else None
        table = None if self.reference_tables is None else self.reference_tables[1]
        try:
            with eager:
                result = evaluate_pairs(self.spec.objective, self._pair_pass(), self.data.eval, table, stopped
                                        ) if self.pairwise else evaluate(
                    self.accelerator.unwrap_model(self.model), self.tokenizer, self.data, self.task,
                    batch_size=self.spec.training.batch_size or 4, pad_id=self.pad_id, stopped=stopped,
                    samples=self.spec.training.eval_samples, autocast=self.accelerator.autocast,
                    device=self.accelerator.device)  # fmt: skip
        except EvaluationStopped:
            self.log(f"stopped while evaluating at step {self.step}: that evaluation is left out")
            return None
        self.report(Eval(step=self.step, **result))
        self.stage("training")
        improved = counts_as_best and (self.best_eval is None or result["eval_loss"] < self.best_eval)
        if improved:
            self.best_eval = result["eval_loss"]
        return improved

    def _pair_pass(self, batch_size: int | None = None) -> PairPass:
        return PairPass(self.model, self.fast_parts, batch_size or self.spec.training.batch_size or 4, self.pad_id,
                        self.accelerator.autocast, self.accelerator.device, self.reference)  # fmt: skip

    def _checkpoint(self) -> Path | None:
        """Save a checkpoint; its path on the main process, None on the others (they write nothing)."""
        # FSDP: each process holds a shard of every tensor; gathering them is a collective step that
        # every process takes (with one process too, so one GPU tests the path of several). Its optimizer
        # state stays sharded and is not saved (a resume restarts AdamW).
        sharded = sharded_run()
        tensors = self._gathered_trainable() if sharded else None
        if not self.accelerator.is_main_process:
            return None
        self.stage("saving")
        path = ckpt.save_checkpoint(
            self.run_dir / "checkpoints",
            self.accelerator.unwrap_model(self.model),
            None if sharded else self.optimizer,
            self.scheduler,
            self.step,
            {"tokens_trained": self.tokens_trained, "train_seconds": self.train_seconds, "best_eval": self.best_eval,
             "data_files": self.data_stamps, "data_version": CACHE_VERSION},
            tensors,
        )
        self.last_checkpoint = path
        self.report(Checkpoint(step=self.step, path=str(path)))
        self.stage("training")
        return path

    def _gathered_trainable(self) -> dict[str, Any]:
        full = self.accelerator.get_state_dict(self.model)  # the full tensors, on the main process
        names = [
            n.replace("_fsdp_wrapped_module.", "")
            for n, p in self.accelerator.unwrap_model(self.model).named_parameters()
            if p.requires_grad
        ]
        return {n: full[n].contiguous().cpu() for n in names if n in full}

    def _save_on_failure(self) -> None:
        # Keep what was learnt since the last checkpoint, unless the failure is in the weights.
        if getattr(self, "model", None) is None or self.step == 0:
            return
        latest = ckpt.latest_checkpoint(self.run_dir / "checkpoints")
        if latest is not None and latest.name == f"step-{self.step:07d}":
            return
        if latest is not None:
            self.log(f"the last good checkpoint is kept: {latest}")


def apply_method(spec: RunSpec, model: Any, ctx: Any) -> Any:
    """The method applied; on a 4-/8-bit base, one that trains the packed base weights themselves (full
    fine-tuning, last layers) is refused in words rather than by torch's error about integer tensors."""
    try:
        return spec.method.apply(model, ctx)
    except RuntimeError as e:
        if spec.model.quantization != "none" and "floating point dtype can require gradients" in str(e):
            from adapter_studio.engine.models.loading import quantised_weights_refusal

            raise quantised_weights_refusal(spec.method.title, spec.model.quantization) from None
        raise
