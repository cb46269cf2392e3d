"""The training recipe: `run(spec, emit, stop_event)` reads top to bottom as what happens in a run.

1. make (or reopen) the run folder, 2. load model and data, 3. fill defaults and check the method,
4. apply the method, 5. loop: forward, backward, step, report, evaluate, checkpoint, 6. finish.
Every outcome ends with a `finished` event; nothing a person can cause escapes as a traceback.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.data.prepare import collate, epoch_batches, example_chunks, load_examples, prepare_data
from adapter_studio.engine.defaults import CPU_EAGER_MAX_WIDTH, cpu_attention
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import Checkpoint, Emit, Event, EventLog, Finished, Log, Metrics, Stage, Started
from adapter_studio.engine.methods.peft_base import compute_lora_inputs_in_autocast_dtype
from adapter_studio.engine.runs import RunLock, new_run_dir
from adapter_studio.engine.spec import RunSpec, load_spec_file
from adapter_studio.engine.training import checkpoints as ckpt
from adapter_studio.engine.training.devices import (
    avoid_per_shape_attention_plans,
    describe_device,
    memory_stats,
    pick_device,
    pick_precision,
)
from adapter_studio.engine.training.evaluation import evaluate
from adapter_studio.engine.training.fast_loss import causal_lm_parts, labelled_loss

if TYPE_CHECKING:
    import torch

# Batch widths rounded up to these multiples (by device type). 1: the longest row, no extra padding.
PAD_MULTIPLE: dict[str, int] = {}
# LoRA layers keep their input in the autocast dtype (see compute_lora_inputs_in_autocast_dtype);
# benchmarks/cpu_speed_options.py switches it to measure both ways.
LORA_INPUTS_IN_AUTOCAST_DTYPE = True
# On a CPU, LoRA's input dropout draws its mask 16 bits per element (engine.training.bits_dropout: 1.8× faster
# than torch's float per element); benchmarks/cpu_speed_options.py switches it to measure both ways.
BITS_DROPOUT_ON_CPU = True
# training.compile = auto: a one-process run judges its speed over its first steps and compiles when
# what is left would take longer than this. Compiling costs about a minute and makes the steps 1.2-1.5×
# faster (the demo at batch 8 and 4 on this CPU; SmolLM2 at batch 4 on an H200: 1.3×, its eager steps
# bound by kernel launches), so it pays for itself after 3-5 minutes; 10 leave room for bigger
# models' longer compiles.
AUTO_COMPILE_AFTER_STEPS = 10
AUTO_COMPILE_MIN_LEFT_S = 600.0
COMPILING = "torch.compile builds the training step; about a minute"  # the stage's detail
# Inductor's mode for the compiled blocks. None is its default; benchmarks/throughput.py --compile-mode
# tries others on a GPU ("reduce-overhead": CUDA graphs, for steps bound by the host's kernel launches;
# on an H100 with torch 2.11 the graph trees crashed in the first compiled backward and the plain graphs
# refuse blocks that share code: benchmarks/gpu_session.sh).
COMPILE_MODE: str | None = None
# Compile the whole decoder instead of one block shared by all (benchmarks/throughput.py --compile-whole):
# inductor's plain CUDA graphs need that, since they record one block's parameters at fixed addresses.
COMPILE_WHOLE = False


@dataclass
class RunResult:
    status: str
    run_dir: Path
    step: int
    error: str | None


class NonFiniteLoss(Exception):
    pass


def _task_for(spec: RunSpec) -> str:
    if spec.model.task != "auto":
        return spec.model.task
    # The shape is known from the first chunk: no need to read a large file whole for it.
    fmt = spec.data.format or next(iter(example_chunks(spec.data, spec.data.path))).format
    return "classification" if fmt == "classification" else "causal_lm"


def _id2label(spec: RunSpec) -> dict[int, str] | None:
    from adapter_studio.engine.data.shapes import label_mapping

    _, _, examples, _ = load_examples(spec.data, spec.data.path)
    return label_mapping(examples) if examples else None


def process_rank() -> int:
    """This process's rank under `accelerate launch` / torchrun (0 when alone)."""
    return int(os.environ.get("RANK", "0"))


def sharded_run() -> bool:
    """Whether this process was launched with FSDP (`accelerate launch --use_fsdp` sets the flag)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def run(
    spec: RunSpec | None,
    emit: Emit | None = None,
    stop_event: threading.Event | None = None,
    *,
    resume_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
) -> RunResult:
    """Train as the spec says; report through `emit` and the run folder's `events.jsonl`.

    With `resume_dir`, continue that run from its last checkpoint (same folder, same log), with its
    saved spec or, when given, `spec` (for example with more steps). `run_dir` names a folder made
    beforehand (by the multi-device launcher, so every process writes to the same run).
    Under several processes only rank 0 reports, saves and holds the lock.
    """
    stop_event = stop_event or threading.Event()
    if resume_dir is not None:
        folder = Path(resume_dir)
        if not (folder / "spec.yaml").exists():
            raise UserError(f"{folder} is not a run folder (no spec.yaml)", where="--resume")
        # A spec given with a resume (e.g. a longer max_steps) replaces the saved one.
        spec = spec or load_spec_file(folder / "spec.yaml")
    elif spec is None:
        raise UserError("nothing to run: give a spec or a run folder to resume")
    elif run_dir is not None:
        folder = Path(run_dir)
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    else:
        folder = new_run_dir(spec.output_dir, spec.name, spec.method.name)
    main_process = process_rank() == 0
    lock = RunLock(folder)
    log = EventLog(folder / "events.jsonl") if main_process else None
    if main_process:
        lock.acquire()

    board = None
    if main_process and spec.training.tensorboard:
        from adapter_studio.engine.training.tensorboard_log import TensorBoardLog

        board = TensorBoardLog(folder)

    def report(event: Event) -> None:
        if log is not None:
            log.write(event)
            if board is not None:
                board.write(event)
            if emit is not None:
                emit(event)

    session = TrainingSession(spec, folder, report, stop_event, resume=resume_dir is not None)
    try:
        return session.execute()
    finally:
        if board is not None:
            board.close()
        if log is not None:
            log.close()
            lock.release()


class TrainingSession:
    """One run's state while it trains; `execute` is the recipe."""

    def __init__(self, spec: RunSpec, run_dir: Path, report: Emit, stop: threading.Event, resume: bool) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.report = report
        self.stop = stop
        self.resume = resume
        self.step = 0
        self.tokens_trained = 0
        self.train_seconds = 0.0
        self.last_checkpoint: Path | None = None
        # auto compile still to decide / the training forward is compiled / gave up (compiled code runs eagerly).
        self.auto_compile = self.compiled = self.eager_stance = False

    def log(self, message: str, level: str = "info") -> None:
        self.report(Log(level=level, message=message))

    def stage(self, stage: str, detail: str = "") -> None:
        self.report(Stage(stage=stage, detail=detail))

    def execute(self) -> RunResult:
        status, error = "failed", None
        try:
            status = self._train()
        except UserError as e:
            error = e.message
        except NonFiniteLoss as e:
            error = str(e)
        except Exception as e:  # the run must end with a message, whatever broke
            error = _explain_failure(e)
            self.log(traceback.format_exc(), level="debug")
        finally:
            if self.eager_stance:
                import torch

                torch.compiler.set_stance("default")
        if error:
            self.log(error, level="error")
            self._save_on_failure()
        self.report(
            Finished(
                status=status if error is None else "failed",
                step=self.step,
                error=error,
                train_seconds=round(self.train_seconds, 3),
                tokens_trained=self.tokens_trained,
            )
        )
        return RunResult(status if error is None else "failed", self.run_dir, self.step, error)

    # --- setting up ------------------------------------------------------------------------------
    def _setup(self) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import set_seed
        from adapter_studio.engine.defaults import resolve_spec
        from adapter_studio.engine.methods import MethodContext
        from adapter_studio.engine.models.info import describe_model
        from adapter_studio.engine.models.loading import load_model, trains_in_base_dtype, weights_dtype

        spec = self.spec
        set_seed(spec.training.seed)
        task = _task_for(spec)
        device = pick_device(spec.model.device)
        precision = pick_precision(spec.training.precision, device)
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
            id2label=_id2label(spec) if task == "classification" else None,
        )
        self.log(f"loaded {source.display_name} in {time.perf_counter() - t0:.1f} s")
        # A training forward has no use for a key/value cache; building one also makes every compiled
        # block depend on its own layer's cache state (a recompile per block). Generation asks for it.
        model.config.use_cache = False
        info = describe_model(model)
        spec = resolve_spec(spec, info, model.config, task)
        spec.method.check(info, spec.training)
        if process_rank() == 0:
            spec.save(self.run_dir / "spec.yaml")
        self.spec = spec
        from adapter_studio.engine.methods.selective import notes_for

        for note in notes_for(spec.method, info):
            self.log(note)

        self.stage("tokenising")
        data = prepare_data(spec.data, tokenizer, task, spec.data.max_length or 512, spec.training.seed)
        self.log(
            f"{len(data.train)} training and {len(data.eval)} held-out examples ({data.format} format, "
            f"{data.train_tokens:,} tokens){f'; {len(data.dropped)} rows dropped' if data.dropped else ''}"
        )
        for note in data.dropped[:10]:
            self.log(f"dropped {note}", level="warning")
        if data.truncated:
            self.log(f"{data.truncated} examples were truncated to {spec.data.max_length} tokens", level="warning")

        t = spec.training
        # accelerate keeps its settings in a process-wide singleton; the window trains many runs in
        # one process, each with its own precision. The distributed state (PartialState) is kept.
        AcceleratorState._reset_state()
        self.accelerator = Accelerator(
            mixed_precision={"bf16": "bf16", "fp16": "fp16"}.get(precision, "no"),
            cpu=device == "cpu",
        )
        world = self.accelerator.num_processes
        micro_per_epoch = math.ceil(len(data.train) / (t.batch_size or 1) / world)
        steps_per_epoch = max(1, micro_per_epoch // t.gradient_accumulation)
        self.total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
        self.micro_per_epoch = max(1, micro_per_epoch)

        ctx = MethodContext(info=info, training=t, total_steps=self.total_steps, tokenizer=tokenizer)
        model = spec.method.apply(model, ctx)
        speed_up_lora_layers(model, device, precision)
        if t.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise UserError(f"{spec.method.title} left nothing to train on this model", where="method")
        lr = t.learning_rate or spec.method.default_lr
        optimizer = spec.method.build_optimizer(model, lr, t.weight_decay) or _optimizer(t.optimizer, trainable, lr, t)
        from transformers import get_scheduler

        scheduler = get_scheduler(
            t.scheduler if t.scheduler != "constant" else "constant_with_warmup",
            optimizer,
            num_warmup_steps=math.ceil(t.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        model, optimizer = self.accelerator.prepare(model, optimizer)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.tokenizer, self.data, self.task, self.precision = tokenizer, data, task, precision
        self.device_name = describe_device(device)
        self.device = device
        self.trainable_params = sum(p.numel() for p in trainable)
        self.total_params = sum(p.numel() for p in self.accelerator.unwrap_model(model).parameters())
        self.lengths = [len(x.input_ids) for x in data.train]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # Project only labelled positions (one process: DDP must see the whole model's forward).
        single = self.accelerator.num_processes == 1
        self.fast_parts = causal_lm_parts(model) if task == "causal_lm" and single else None
        self.pad_multiple = pad_multiple(device, compiled=False)
        if t.compile == "on":
            what = self._compile()
            self.log(f"compiling the training step (torch.compile of {what}); the first step takes a while")
        # auto: one process only, where a failed compile can fall back without the others waiting on it;
        # CPUs and CUDA GPUs, where it was measured (inductor on Apple's MPS is still a prototype), and
        # not over a bitsandbytes base, whose kernels dynamo does not see into (not measured).
        self.auto_compile = (t.compile == "auto" and single and device in ("cpu", "cuda")
                             and spec.model.quantization == "none" and compile_unavailable(device) is None)
        config = getattr(self.accelerator.unwrap_model(model), "config", None)
        switchable = (device == "cpu" and task == "causal_lm"  # measured on decoders (SmolLM2) only
                      and getattr(config, "_attn_implementation", None) == "sdpa")
        self.attention_config = config if switchable and CPU_EAGER_MAX_WIDTH else None
        if self.resume:
            self._restore()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def _restore(self) -> None:
        latest = ckpt.latest_checkpoint(self.run_dir / "checkpoints")
        if latest is None:
            self.log("no checkpoint to resume from: starting from step 0", level="warning")
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

    # --- the loop --------------------------------------------------------------------------------
    def _train(self) -> str:
        import torch

        self.best_eval: float | None = None
        self._setup()
        t = self.spec.training
        self.report(
            Started(
                run_dir=str(self.run_dir),
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
        compiling = t.compile == "on"
        if compiling:  # its first minute goes to compiling: say so rather than seem stuck at step 0
            self.stage("compiling", COMPILING)
        else:
            self.stage("training")
        start_step, start_seconds = self.step, self.train_seconds
        model, optimizer, scheduler = self.model, self.optimizer, self.scheduler
        method = self.spec.method
        unwrapped = self.accelerator.unwrap_model(model)
        eval_every = t.eval_every or t.save_every
        stale_evals = 0
        window_tokens, window_start = 0, time.perf_counter()
        model.train()
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
                self._give_up_compiling(error)  # the same step again, uncompiled
                losses, tokens = self._accumulate_gradients()
            window_tokens += tokens
            grad_norm = (
                self.accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm) if t.max_grad_norm > 0 else None
            )
            optimizer.step()
            scheduler.step()
            method.on_step(unwrapped, self.step)  # before zero_grad: AdaLoRA scores ranks by their gradients
            optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.train_seconds += time.perf_counter() - step_start
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
                elapsed = time.perf_counter() - window_start
                self.tokens_trained += window_tokens
                self.report(
                    Metrics(
                        step=self.step,
                        epoch=round(self.step * t.gradient_accumulation / self.micro_per_epoch, 4),
                        loss=loss_value,
                        lr=float(scheduler.get_last_lr()[0]),
                        grad_norm=float(grad_norm) if grad_norm is not None else 0.0,
                        tokens_per_s=window_tokens / elapsed if elapsed > 0 else 0.0,
                        tokens_seen=self.tokens_trained,
                        elapsed_s=round(self.train_seconds, 3),
                        **memory_stats(self.device),
                    )
                )
                window_tokens, window_start = 0, time.perf_counter()

            at_end = self.step == self.total_steps
            saved = None
            # Save before evaluating: a failure in evaluation must not cost the training behind it.
            if self.step % t.save_every == 0 or at_end:
                saved = self._checkpoint()
            if (self.step % eval_every == 0 or at_end) and self.data.eval:
                improved = self._evaluate()
                stale_evals = 0 if improved else stale_evals + 1
                if improved and saved is not None:
                    ckpt.copy_as_best(saved, self.run_dir / "checkpoints")
                model.train()
            if t.early_stopping_patience and stale_evals >= t.early_stopping_patience:
                self.log(f"eval loss has not improved for {stale_evals} evaluations: stopping early")
                if saved is None:
                    self._checkpoint()
                return "completed"
            if self.auto_compile and self.step - start_step >= AUTO_COMPILE_AFTER_STEPS:
                compiling = self._compile_if_worth_it(start_step, start_seconds)
        return "completed"

    def _accumulate_gradients(self) -> tuple[list[Any], int]:
        """Forward and backward over the step's micro-batches: (their losses, real tokens)."""
        t = self.spec.training
        losses, tokens = [], 0
        for micro in range(t.gradient_accumulation):
            if self.compiled and COMPILE_MODE == "reduce-overhead":
                import torch

                torch.compiler.cudagraph_mark_step_begin()  # the last micro-step's graph outputs are done with
            batch, real_tokens = self._batch(self.step * t.gradient_accumulation + micro)
            self._pick_attention(batch["input_ids"].shape[1])
            with self.accelerator.autocast():
                full_loss = self._loss(batch)
            self.accelerator.backward(full_loss / t.gradient_accumulation)
            losses.append(full_loss.detach())
            tokens += real_tokens
        return losses, tokens

    def _compile_if_worth_it(self, start_step: int, start_seconds: float) -> bool:
        """training.compile = auto: compile when the rest of the run, at the speed measured since it
        started, would take longer than AUTO_COMPILE_MIN_LEFT_S. Decided once."""
        self.auto_compile = False
        per_step = (self.train_seconds - start_seconds) / (self.step - start_step)
        left = (self.total_steps - self.step) * per_step
        if left <= AUTO_COMPILE_MIN_LEFT_S:
            return False
        what = self._compile()
        self.log(f"about {left / 60:.0f} minutes to go: compiling the training step to make them faster "
                 f"(torch.compile of {what}; training.compile: auto)")
        self.stage("compiling", COMPILING)
        return True

    def _compile(self) -> str:
        what = _compile_training_forward(self.fast_parts, self.model, self.device)
        self.compiled = True
        self.pad_multiple = pad_multiple(self.device, compiled=True)
        return what

    def _give_up_compiling(self, error: Exception) -> None:
        """An automatic compile that fails must not cost the run: go on uncompiled."""
        import torch

        root: BaseException = error
        while (inner := getattr(root, "inner_exception", None) or root.__cause__) is not None:
            root = inner  # dynamo wraps the compiler's own error (BackendCompilerFailed.inner_exception)
        first_line = (str(root).strip().splitlines() or [""])[0][:300]
        self.log(f"compiling failed ({type(root).__name__}: {first_line}); training goes on uncompiled",
                 level="warning")
        self.optimizer.zero_grad(set_to_none=True)
        torch.compiler.set_stance("force_eager")  # process-wide: undone when the run ends (execute)
        self.eager_stance = True

    def _loss(self, batch: dict[str, Any]) -> Any:
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
        """Eager attention for short batches on a CPU, SDPA otherwise (see CPU_EAGER_MAX_WIDTH); the
        attention layers and the mask builder read the choice from the config at every forward."""
        if self.attention_config is not None:
            self.attention_config._attn_implementation = cpu_attention(width)

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
        batch = collate(items, self.pad_id, self.task == "classification", self.pad_multiple)
        # Real (non-padding) tokens counted on the host: no device sync for throughput numbers.
        tokens = sum(len(x.input_ids) for x in items)
        return {k: v.to(self.accelerator.device, non_blocking=True) for k, v in batch.items()}, tokens

    _epoch_cache: tuple[int, list[list[int]]] | None = None

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            size = (self.spec.training.batch_size or 1) * self.accelerator.num_processes
            self._epoch_cache = (epoch, epoch_batches(self.lengths, size, self.spec.training.seed, epoch))
        return self._epoch_cache[1]

    def _evaluate(self) -> bool:
        import torch

        self.stage("evaluating")
        # Compiled blocks run eagerly here: every evaluation and generation shape would be another compile.
        eager = torch.compiler.set_stance("force_eager") if self.compiled else contextlib.nullcontext()
        with eager:
            result = evaluate(
                self.accelerator.unwrap_model(self.model),
                self.tokenizer,
                self.data,
                self.task,
                batch_size=self.spec.training.batch_size or 4,
                pad_id=self.pad_id,
                samples=self.spec.training.eval_samples,
                autocast=self.accelerator.autocast,
                device=self.accelerator.device,
            )
        from adapter_studio.engine.events import Eval

        self.report(Eval(step=self.step, **result))
        self.stage("training")
        improved = self.best_eval is None or result["eval_loss"] < self.best_eval
        if improved:
            self.best_eval = result["eval_loss"]
        return improved

    def _checkpoint(self) -> Path:
        # FSDP: each process holds a shard of every tensor; gathering them is a collective step that
        # every process takes (with one process too, so one GPU tests the path of several). Its optimizer
        # state stays sharded and is not saved (a resume restarts AdamW).
        sharded = sharded_run()
        tensors = self._gathered_trainable() if sharded else None
        if not self.accelerator.is_main_process:
            return self.run_dir / "checkpoints"
        self.stage("saving")
        path = ckpt.save_checkpoint(
            self.run_dir / "checkpoints",
            self.accelerator.unwrap_model(self.model),
            None if sharded else self.optimizer,
            self.scheduler,
            self.step,
            {"tokens_trained": self.tokens_trained, "train_seconds": self.train_seconds, "best_eval": self.best_eval},
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


def compile_unavailable(device: str) -> UserError | None:
    """Why inductor cannot build here (no C++ compiler on a CPU, no triton on a GPU), or None."""
    import importlib.util
    import shutil

    if device == "cpu" and not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")):
        return UserError("torch.compile needs a C++ compiler on a CPU, and none was found",
                         where="training.compile", fix="install g++ (e.g. apt-get install g++), or turn compile off")
    if device == "cuda" and importlib.util.find_spec("triton") is None:
        return UserError("torch.compile needs the triton package on a GPU", where="training.compile",
                         fix="pip install triton, or turn compile off")
    return None


def speed_up_lora_layers(model: Any, device: str, precision: str) -> None:
    """The engine's changes to peft's LoRA layers for speed (benchmarks/throughput.py --profile makes them
    too): inputs kept in the autocast dtype, and on a CPU dropout masks from 16-bit lanes."""
    if precision in ("bf16", "fp16") and LORA_INPUTS_IN_AUTOCAST_DTYPE:
        compute_lora_inputs_in_autocast_dtype(model)
    if device == "cpu" and BITS_DROPOUT_ON_CPU:
        from adapter_studio.engine.training.bits_dropout import (
            use_bits_dropout_for_lora,  # imports torch: not at the GUI's start
        )

        use_bits_dropout_for_lora(model)


def pad_multiple(device: str, compiled: bool) -> int:
    """The multiple batch widths are rounded up to on this device type (PAD_MULTIPLE); compiled CUDA
    code pads to 8 too, since inductor specialises its kernels on whether the width is a multiple of 8."""
    multiple = PAD_MULTIPLE.get(device, 1)
    return math.lcm(multiple, 8) if compiled and device == "cuda" else multiple


def _compile_training_forward(fast_parts: tuple[Any, Any] | None, model: Any, device: str) -> str:
    """Regional torch.compile, in place: each transformer block is compiled, and since the blocks
    share their code, inductor builds it once for all of them (SmolLM2 on this CPU: about a minute
    instead of four for the whole decoder, at 92% of its speed; benchmarks/throughput.py). Evaluation
    runs eagerly (TrainingSession._evaluate). Refuses, saying why, where inductor cannot build.
    Returns what was compiled, for the log."""
    from adapter_studio.engine.models.info import find_layers_path

    missing = compile_unavailable(device)
    if missing is not None:
        raise missing
    import torch

    # Compiled code is cached per Python function: the runs before this one in the same process (the
    # window trains many) would otherwise use up dynamo's recompile limit and leave this one eager.
    torch.compiler.reset()
    root = fast_parts[0] if fast_parts is not None else model
    path = find_layers_path(root)
    # A prefix (prefix tuning, P-Tuning v2, MAM) reaches every block as its layer's key/value cache,
    # and each block's compiled code would be specialised to its own layer: compile the whole model.
    configs = getattr(getattr(model, "module", model), "peft_config", {})  # DDP wraps the peft model
    prefix = any(str(c.peft_type).endswith("PREFIX_TUNING") for c in configs.values())
    if prefix or not path or COMPILE_WHOLE:
        root.compile(dynamic=True, mode=COMPILE_MODE)  # what the training forward calls
        return "the whole model"
    blocks = root.get_submodule(path)
    # Dynamo guards on whether a block's input carries a gradient. With the embeddings frozen, the
    # first block that trains is the only one whose input carries none while it does backward; it
    # would be a second compiled variant of the shared code (and, with the mask and width variants
    # on a GPU, reach dynamo's limit of 8). It runs eagerly instead: 1/N of the blocks.
    boundary = _first_trainable_block(blocks, root)
    for i, block in enumerate(blocks):
        if i != boundary:
            block.compile(dynamic=True, mode=COMPILE_MODE)
    if boundary is None:
        return f"one block, shared by all {len(blocks)}"
    return (f"one block, shared by {len(blocks) - 1} of {len(blocks)}; block {boundary}, the first that trains, "
            "runs eagerly")


def _first_trainable_block(blocks: Any, root: Any) -> int | None:
    """The block whose input carries no gradient and whose parameters train (None: no such block)."""
    root = getattr(root, "module", root)  # DDP wraps the model
    embeddings = root.get_input_embeddings() if hasattr(root, "get_input_embeddings") else None
    if embeddings is None or any(p.requires_grad for p in embeddings.parameters()):
        return None  # the embeddings train: every block's input carries a gradient
    if embeddings._forward_hooks:  # e.g. enable_input_require_grads (gradient checkpointing) makes it carry one
        return None
    for i, block in enumerate(blocks):
        if any(p.requires_grad for p in block.parameters()):
            return i
    return None


def _optimizer(kind: str, params: list[torch.nn.Parameter], lr: float, t: Any) -> Any:
    import torch

    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=t.weight_decay)
    if kind == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError(
                "8-bit AdamW needs the bitsandbytes package",
                where="training.optimizer",
                fix="pip install bitsandbytes (CUDA only), or use adamw",
            ) from None
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=t.weight_decay)
    from adapter_studio.engine.training import devices  # looked up per call: LoRA+'s optimizer asks the same function

    return torch.optim.AdamW(params, lr=lr, weight_decay=t.weight_decay, **devices.adamw_implementation(params))


def _explain_failure(error: Exception) -> str:
    import torch

    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower():
        return (
            "out of memory — try a smaller batch size (training.batch_size), gradient checkpointing "
            "(training.gradient_checkpointing), shorter sequences (data.max_length) or a lighter method"
        )
    return f"training failed: {type(error).__name__}: {error}"
