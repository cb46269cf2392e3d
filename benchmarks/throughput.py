"""Training throughput: our engine against the hand-written transformers `Trainer` + peft recipe.

Same model (embedded SmolLM2-135M-Instruct), same tokens and labels (both sides take them from
`adapter_studio.engine.data.prepare.prepare_data`), same method (LoRA r=8, alpha 16, dropout 0.05 on q_proj,v_proj),
same optimisation (AdamW lr 2e-4, linear decay, no warm-up, no weight decay, clipping at 1.0 — the
Trainer's defaults, given to the engine too), same maximum length and number of steps. Three sides:

    defaults  Trainer + peft, DataCollatorForSeq2Seq padding to the longest row, random batches,
              float32 (the Trainer's default on this machine); evaluation and saving off.
    best      the same recipe set up well for the device: bf16=True where the device runs bf16 fast
              (AMX / AVX512-BF16 CPUs, CUDA) and length-grouped batches (group_by_length).
    engine    `engine.training.run.run` with a spec (eval off, no checkpoint until the end, same seed).

on two data sets: the demo's date normalisation (short rows of similar length) and a generated
instruction set whose answer lengths have a long tail (benchmarks/longtail_data.py). For each side:
real training tokens per second (tokens whose attention mask is 1, over the timed steps, the first
two steps excluded as warm-up), the padding share of those steps, and the loss on a fixed held-out
set of 64 rows after training (no-grad float32 forward, mean token cross-entropy over labelled
positions, computed by one function for all sides). Sides run interleaved, `--repeats` times, and
the median speed is reported (the machine may be shared).

    .venv/bin/python benchmarks/throughput.py --steps 8 --data demo        # quick look
    .venv/bin/python benchmarks/throughput.py                              # full: 30 steps, both sets
    .venv/bin/python benchmarks/throughput.py --threads 1 --seeds 0,1      # steadier on a busy 2-core machine
    .venv/bin/python benchmarks/throughput.py --device cuda                # on a GPU (bf16, peak memory)
    .venv/bin/python benchmarks/throughput.py --device cuda --sides engine --engine-set training.compile=on \
        --compile-mode reduce-overhead [--pad-multiple 256]                 # CUDA graphs (see gpu_session.sh)
    .venv/bin/python benchmarks/throughput.py --profile                    # where an engine step's time goes

The last line is `speedup R`: engine against the best-configured recipe, the geometric mean over
the data sets run (both by default).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from adapter_studio.engine.data.batches import collate, epoch_batches
from adapter_studio.engine.data.prepare import PreparedData, prepare_data
from adapter_studio.engine.data.tokenising import IGNORE
from adapter_studio.engine.models.loading import EMBEDDED_SMOLLM2, load_tokenizer, resolve_source
from adapter_studio.engine.spec import DataSpec, apply_overrides, parse_spec

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "resources" / "demo"
FLOP_PER_TOKEN = 0.54e9  # SmolLM2-135M LoRA training: ~2 × 135 M forward + ~2 × 135 M backward to inputs
HELD_OUT = 64
SEED = 0
TARGETS = ["q_proj", "v_proj"]
SIDES = ("defaults", "best", "engine")


# --- data -----------------------------------------------------------------------------------------


def demo_files(folder: Path) -> tuple[Path, Path]:
    """The demo train set, and a held-out set of 64: its 60 eval rows plus 4 on unused dates."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_demo_data", DEMO / "make_demo_data.py")
    assert spec and spec.loader
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    train = DEMO / "train.jsonl"
    held = [json.loads(line) for line in (DEMO / "eval.jsonl").read_text().splitlines() if line.strip()]
    used = {json.loads(line)["output"] for line in train.read_text().splitlines() if line.strip()}
    used |= {r["output"] for r in held}
    rng = random.Random(7)
    while len(held) < HELD_OUT:
        day = make.random_date(rng)
        if day.isoformat() not in used:
            used.add(day.isoformat())
            held.append(make.make_example(day, rng))
    path = folder / "demo-heldout.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in held[:HELD_OUT]), encoding="utf-8")
    return train, path


def svamp_files(folder: Path) -> tuple[Path, Path]:
    """Real instruction data: SVAMP's math word problems as `benchmarks/quality.py` trains on them (instruction =
    problem, output = equation and number), the 600 rows after its test and dev rows; 64 of its dev rows held out."""
    import quality

    rows = quality.math_rows("svamp.json")
    random.Random(quality.SPLIT_SEED).shuffle(rows)
    paths = folder / "svamp-train.jsonl", folder / "svamp-heldout.jsonl"
    for path, part in zip(paths, (rows[400:], rows[200 : 200 + HELD_OUT]), strict=True):
        path.write_text("".join(json.dumps({"instruction": r["instruction"], "output": r["output"]}) + "\n"
                                for r in part), encoding="utf-8")  # fmt: skip
    return paths


def longtail_files(folder: Path) -> tuple[Path, Path]:
    import longtail_data

    return longtail_data.write(folder / "longtail", n_train=1000, n_eval=HELD_OUT, seed=SEED)


# --- measuring ------------------------------------------------------------------------------------


@dataclass
class Result:
    side: str
    data: str
    tokens_per_s: list[float] = field(default_factory=list)
    padding_share: list[float] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)
    peak_memory: list[int] = field(default_factory=list)
    note: str = ""


def throughput(
    step_end: dict[int, float], step_tokens: list[tuple[int, int]], steps: int, first: int = 2
) -> tuple[float, float]:
    """(real tokens/s, padding share) over steps first+1..N; step_tokens[i] = (real, padded) of step i+1."""
    first = min(first, steps - 1)
    real = sum(r for r, _ in step_tokens[first:steps])
    padded = sum(p for _, p in step_tokens[first:steps])
    seconds = step_end[steps] - step_end[first]
    return real / seconds, 1 - real / padded


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def eval_loss(model: torch.nn.Module, data: PreparedData, pad_id: int, device: str) -> float:
    """Mean token cross-entropy over the held-out set's labelled positions (float32, no grad)."""
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(data.eval), 8):
            batch = {k: v.to(device) for k, v in collate(data.eval[i : i + 8], pad_id, False).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets = batch["labels"][:, 1:]
            keep = targets != IGNORE
            total += float(F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


def lora_config() -> Any:
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS)


def load_base(model_source: str) -> Any:
    """The GGUF through transformers, as a person writing the recipe would, quantized marker cleared."""
    from transformers import AutoModelForCausalLM

    source = resolve_source(model_source)
    model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
    # Dequantised to float32 but still marked as quantized: the Trainer refuses it (FACTS.md).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


class Evaluator:
    """One float32 LoRA model that takes each side's trained tensors in turn: the same eval for all."""

    def __init__(self, base: Any, device: str) -> None:
        from peft import get_peft_model

        self.model = get_peft_model(copy.deepcopy(base), lora_config())  # on the device only while used
        self.device = device

    def __call__(self, trained: dict[str, torch.Tensor], data: PreparedData, pad_id: int) -> float:
        params = dict(self.model.named_parameters())
        missing = [n for n in params if "lora_" in n and n not in trained]
        if missing or any(n not in params for n in trained):
            raise RuntimeError(f"trained tensors do not match the eval model: {missing[:2]} {list(trained)[:2]}")
        with torch.no_grad():
            for name, value in trained.items():
                params[name].copy_(value.to(params[name].dtype))
        loss = eval_loss(self.model.to(self.device), data, pad_id, self.device)
        self.model.to("cpu")
        if self.device == "cuda":
            torch.cuda.empty_cache()
        return loss


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


# --- the Trainer recipe ---------------------------------------------------------------------------


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, list[int]]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]


def run_trainer(side: str, base: Any, tokenizer: Any, data: PreparedData, args: argparse.Namespace) -> dict[str, Any]:
    import dataclasses

    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments, set_seed

    best = side == "best"
    bf16 = best and (args.device == "cuda" or _cpu_bf16())
    # The engine turns cuDNN attention off for the process (engine.training.devices); the recipe gets torch's default.
    torch.backends.cuda.enable_cudnn_sdp(True)
    set_seed(args.seed)
    model = get_peft_model(copy.deepcopy(base), lora_config())
    rows = [
        {"input_ids": t.input_ids, "attention_mask": [1] * len(t.input_ids), "labels": t.labels} for t in data.train
    ]
    padder = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE)
    batches: list[tuple[int, int]] = []  # (real, padded) tokens of each batch, in the order made

    def counting_collator(features: list[dict[str, Any]]) -> dict[str, Any]:
        out = padder(features)
        batches.append((int(out["attention_mask"].sum()), out["attention_mask"].numel()))
        return out

    step_end: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, a: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step in (min(2, args.steps - 1), args.steps):
                sync(args.device)  # the GPU runs ahead: close the timed window on finished work
            step_end[state.global_step] = time.perf_counter()

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    extra: dict[str, Any] = {}
    grouped = False
    if best:  # length-grouped batches: `train_sampling_strategy` in newer transformers, `group_by_length` before
        if "train_sampling_strategy" in names:
            extra, grouped = {"train_sampling_strategy": "group_by_length"}, True
        elif "group_by_length" in names:
            extra, grouped = {"group_by_length": True}, True
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=args.batch,
            max_steps=args.steps,
            learning_rate=2e-4,
            seed=args.seed,
            bf16=bf16,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            **({"use_cpu": True} if args.device == "cpu" else {}),
            **extra,
        )
        trainer = Trainer(
            model=model,
            args=targs,
            train_dataset=ListDataset(rows),
            data_collator=counting_collator,
            callbacks=[Clock()],
        )
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else 0
    speed, padding = throughput(step_end, batches, args.steps)
    state = trainable(model)
    del trainer, model
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    note = f"{'bf16' if bf16 else 'float32'}, {'length-grouped' if grouped else 'random'} batches"
    tokens = sum(real for real, _ in batches[: args.steps])
    return {"tokens_per_s": speed, "padding": padding, "trained": state, "peak": peak, "note": note, "tokens": tokens}


def _cpu_bf16() -> bool:
    from adapter_studio.engine.training.devices import cpu_has_fast_bf16

    return cpu_has_fast_bf16()


# --- our engine -----------------------------------------------------------------------------------


def speed_options(args: argparse.Namespace) -> Any:
    """The engine's SpeedOptions with this run's --compile-mode, --compile-whole, --pad-multiple and
    --cpu-width-steps."""
    from adapter_studio.engine.training.speed import SpeedOptions

    pad = {args.device: args.pad_multiple} if args.pad_multiple else {}
    steps = {} if args.cpu_width_steps is None else {"cpu_width_steps": args.cpu_width_steps}
    return SpeedOptions(compile_mode=args.compile_mode, compile_whole=args.compile_whole, pad_multiple=pad, **steps)


def run_engine(train_path: Path, data: PreparedData, args: argparse.Namespace) -> dict[str, Any]:
    from adapter_studio.engine.events import Finished, Log, Metrics, Started
    from adapter_studio.engine.training import checkpoints
    from adapter_studio.engine.training.run import run
    from safetensors.torch import load_file

    step_end: dict[int, float] = {}
    seen: dict[int, int] = {}
    note = ""
    info: dict[str, Any] = {}

    def emit(event: Any) -> None:
        if isinstance(event, Metrics):
            step_end[event.step] = time.perf_counter()  # metrics are reported after each step's work
            seen[event.step] = event.tokens_seen
        elif isinstance(event, Started):
            info["precision"] = event.precision
        elif isinstance(event, Finished) and event.error:
            info["error"] = event.error
        elif isinstance(event, Log) and event.level == "debug":  # the traceback of a failed run
            info["debug"] = event.message

    with tempfile.TemporaryDirectory() as out:
        fields = {
            "model": {"source": args.model, "device": args.device},
            "data": {"path": str(train_path), "eval_split": 0.0, "max_length": args.max_length},
            "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": TARGETS},
            "training": {
                "max_steps": args.steps,
                "batch_size": args.batch,
                "learning_rate": 2e-4,
                "scheduler": "linear",
                "warmup_ratio": 0.0,
                "weight_decay": 0.0,
                "max_grad_norm": 1.0,
                "seed": args.seed,
                "save_every": args.steps + 1,
                "eval_samples": 0,
                "log_every": 1,
            },
            "output_dir": out,
            "name": "throughput",
        }
        apply_overrides(fields, args.engine_set)
        spec = parse_spec(fields)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # accelerate keeps one process-wide state: a float32 Trainer run before would make the engine's
        # bf16 Accelerator refuse ("AcceleratorState has already been initialized"); the engine does not reset it.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()
        result = run(spec, emit, speed=speed_options(args))
        if result.status != "completed":
            print(info.get("debug", ""), file=sys.stderr)  # where it broke (a lent GPU's run folder is gone after)
            raise RuntimeError(f"engine run failed: {info.get('error') or result.error}")
        peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else 0
        latest = checkpoints.latest_checkpoint(result.run_dir / "checkpoints")
        assert latest is not None
        state = {k: v.float() for k, v in load_file(str(latest / checkpoints.WEIGHTS)).items()}
    # Real tokens per step as the engine counted them; padded widths from a recount of its batches
    # (a pure function of lengths, batch size, seed and epoch), kept only where the two agree.
    real = [seen[s] - seen.get(s - 1, 0) for s in range(1, args.steps + 1)]
    lengths = [len(t.input_ids) for t in data.train]
    per_epoch = math.ceil(len(lengths) / args.batch)
    speed, compiled = speed_options(args), "training.compile=on" in args.engine_set
    step_tokens = []
    for step in range(args.steps):
        epoch, within = divmod(step, per_epoch)
        batches = epoch_batches(lengths, args.batch, args.seed, epoch)
        sizes = [lengths[i] for i in batches[within % len(batches)]]
        multiple = speed.multiple_for(args.device, compiled, max(sizes), args.max_length)
        width = -(-max(sizes) // multiple) * multiple
        step_tokens.append((real[step], width * len(sizes) if sum(sizes) == real[step] else 0))
    if not all(p for _, p in step_tokens):  # the engine batches some other way now: padding unknown
        step_tokens = [(r, r) for r, _ in step_tokens]
        note = "padding not recounted"
    speed, padding = throughput(step_end, step_tokens, args.steps)
    # The second half alone: a compiled run's speed once the compiles for new batch widths are behind it.
    later, _ = throughput(step_end, step_tokens, args.steps, first=args.steps // 2)
    if note:
        padding = math.nan
    return {
        "tokens_per_s": speed,
        "second_half_tokens_per_s": later,
        "padding": padding,
        "trained": state,
        "peak": peak,
        "tokens": sum(real),
        "note": f"{info.get('precision')}, length-grouped batches, labelled-only head" + (f"; {note}" if note else ""),
    }


# --- peak -----------------------------------------------------------------------------------------


def matmul_peak(device: str) -> tuple[float, float]:
    """(bf16, float32) matmul GFLOP/s: 2048³ products on the CPU's threads, 8192³ on a GPU."""
    n = 8192 if device == "cuda" else 2048
    out = []
    for dtype in (torch.bfloat16, torch.float32):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        best = math.inf
        for _ in range(3 if device == "cpu" else 2):
            a @ b
        sync(device)
        for _ in range(6 if device == "cpu" else 10):
            t0 = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - t0)
        out.append(2 * n**3 / best / 1e9)
    return out[0], out[1]


# --- profile --------------------------------------------------------------------------------------


def profile_engine(args: argparse.Namespace, train_path: Path) -> None:
    """The engine's step, taken apart: forward, backward, clip+optimizer, batching; then top ops."""
    from accelerate import Accelerator
    from adapter_studio.engine.methods import METHODS, MethodContext
    from adapter_studio.engine.models.info import describe_model
    from adapter_studio.engine.models.loading import load_model, weights_dtype
    from adapter_studio.engine.spec import ModelSpec, TrainingSpec
    from adapter_studio.engine.training.devices import (
        adamw_implementation,
        avoid_per_shape_attention_plans,
        pick_precision,
    )
    from adapter_studio.engine.training.fast_loss import causal_lm_parts, labelled_loss

    speed = speed_options(args)

    precision = pick_precision("auto", args.device)
    if args.device == "cuda":
        avoid_per_shape_attention_plans()  # as the engine's session does
    dtype = weights_dtype("auto", args.device, False, precision)  # the engine's choice for a frozen base
    model, tokenizer, _ = load_model(ModelSpec(source=args.model), "causal_lm", dtype=dtype)
    model.config.use_cache = False  # as engine.training.session does: no key/value cache in a training forward
    data = prepare_data(DataSpec(path=str(train_path), eval_split=0.0), tokenizer, "causal_lm", args.max_length, SEED)
    acc = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=args.device == "cpu")
    method = METHODS["lora"](r=8, alpha=16, dropout=0.05, target_modules=TARGETS)
    info = describe_model(model)
    model = method.apply(
        model, MethodContext(info=info, training=TrainingSpec(), total_steps=args.steps, tokenizer=tokenizer)
    )
    speed.speed_up_lora_layers(model, args.device, precision)  # as the engine's session does
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, **adamw_implementation(params))  # as engine.training.session does
    model, opt = acc.prepare(model, opt)
    parts = causal_lm_parts(model)
    if "training.compile=on" in args.engine_set:  # the regional compile engine.training.session does (warm-up compiles)
        from adapter_studio.engine.training.compiled_step import compile_training_forward

        print(f"compiled: {compile_training_forward(parts, model, args.device, speed)}")
    lengths = [len(t.input_ids) for t in data.train]
    batches = epoch_batches(lengths, args.batch, SEED, 0)
    times: dict[str, list[float]] = {"batch": [], "forward": [], "backward": [], "optimizer": []}
    real = 0

    def step(i: int, record: bool) -> None:
        nonlocal real
        if args.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # as the engine's session does
        t0 = time.perf_counter()
        items = [data.train[j] for j in batches[i % len(batches)]]
        batch = {k: v.to(acc.device) for k, v in collate(items, tokenizer.pad_token_id, False).items()}
        if args.device == "cpu":  # the engine's per-batch attention choice (engine.training.session._pick_attention)
            model.config._attn_implementation = speed.attention_for(batch["input_ids"].shape[1])
        t1 = time.perf_counter()
        with acc.autocast():
            loss = labelled_loss(parts, batch)
        sync(args.device)
        t2 = time.perf_counter()
        acc.backward(loss)
        sync(args.device)
        t3 = time.perf_counter()
        acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss)
        t4 = time.perf_counter()
        if record:
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                times[k].append(v)
            real += sum(len(x.input_ids) for x in items)

    model.train()
    for i in range(2):
        step(i, False)
    n = max(4, min(args.steps, 12))
    for i in range(2, 2 + n):
        step(i, True)
    total = sum(sum(v) for v in times.values())
    print(f"engine step parts over {n} steps ({precision}, {real / total:.0f} real tokens/s):")
    for k, v in times.items():
        print(f"  {k:<10} {1000 * sum(v) / n:8.1f} ms/step  {100 * sum(v) / total:5.1f}%")
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=acts) as prof:
        for i in range(2 + n, 2 + n + 3):
            step(i, False)
    key = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=40))


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--data", default="demo,longtail", help="comma list of demo, svamp, longtail")
    parser.add_argument("--sides", default=",".join(SIDES), help="comma list of defaults, best, engine")
    parser.add_argument("--repeats", type=int, default=1, help="run every side this many times, interleaved")
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma list of training seeds (data order, LoRA init); each repeat runs every seed; eval loss is "
        "averaged over seeds, since 30 steps see a different sample of rows per seed",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--model",
        default=EMBEDDED_SMOLLM2,
        help="another SmolLM2-shaped model (e.g. random weights where the GGUF cannot go)",
    )
    parser.add_argument(
        "--engine-set", action="append", default=[], metavar="KEY=VALUE", help="a spec override for the engine side"
    )
    parser.add_argument(
        "--compile-mode",
        help="inductor's mode for the engine's compiled blocks (e.g. reduce-overhead: CUDA graphs); with "
        "--engine-set training.compile=on",
    )
    parser.add_argument(
        "--no-cudagraph-trees",
        action="store_true",
        help="with --compile-mode reduce-overhead: inductor's plain CUDA graphs instead of its graph trees",
    )
    parser.add_argument(
        "--compile-whole",
        action="store_true",
        help="with --engine-set training.compile=on: compile the whole decoder, not one block shared by all",
    )
    parser.add_argument(
        "--pad-multiple",
        type=int,
        help="the engine rounds batch widths up to this multiple (e.g. --max-length: one shape for CUDA graphs)",
    )
    parser.add_argument(
        "--cpu-width-steps",
        type=int,
        help="the engine's width steps per doubling on a CPU (SpeedOptions.cpu_width_steps; 0: the longest row)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="only profile the engine's step on --data's first set (compiled with --engine-set training.compile=on)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--threads", type=int, help="CPU threads for torch (default: its own choice); 1 is steadier on a busy machine"
    )
    args = parser.parse_args()
    if args.steps < 4:
        parser.error("--steps must be at least 4 (two warm-up steps are not timed)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_cudagraph_trees:
        from torch._inductor import config as inductor_config

        inductor_config.triton.cudagraph_trees = False
    sets, sides = args.data.split(","), args.sides.split(",")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    tmp = Path(tempfile.mkdtemp(prefix="throughput-"))
    makers = {"demo": demo_files, "svamp": svamp_files, "longtail": longtail_files}
    files = {name: makers[name](tmp) for name in sets}
    if args.profile:
        profile_engine(args, files[sets[0]][0])
        return

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, device {args.device}, "
        f"{torch.get_num_threads()} threads; {args.steps} steps of batch {args.batch}, max length {args.max_length}"
    )
    bf16_peak, fp32_peak = matmul_peak(args.device)
    where = "GPU" if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"matmul peak ({where}): bf16 {bf16_peak:,.0f} GFLOP/s, float32 {fp32_peak:,.0f} GFLOP/s")
    if args.device == "cpu" and torch.get_num_threads() != 2:  # the reference point is 2 threads
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        two = matmul_peak("cpu")
        torch.set_num_threads(threads)
        print(
            f"matmul peak (2 threads): bf16 {two[0]:,.0f} GFLOP/s, float32 {two[1]:,.0f} GFLOP/s "
            f"(shares below use the {threads}-thread peak the training ran with)"
        )

    tokenizer = load_tokenizer(resolve_source(args.model))
    prepared = {
        name: prepare_data(DataSpec(path=str(tr), eval_path=str(ev)), tokenizer, "causal_lm", args.max_length, SEED)
        for name, (tr, ev) in files.items()
    }
    t0 = time.perf_counter()
    base = load_base(args.model)
    print(
        f"base model loaded in {time.perf_counter() - t0:.1f} s; held-out rows: "
        + ", ".join(f"{n} {len(d.eval)}" for n, d in prepared.items())
    )
    evaluator = Evaluator(base, args.device)
    results = {(d, s): Result(s, d) for d in sets for s in sides}
    seeds = [int(x) for x in args.seeds.split(",")]
    runs = [(rep, seed) for rep in range(args.repeats) for seed in seeds]
    for k, (rep, seed) in enumerate(runs):
        args.seed = seed
        for name in sets:
            order = sides[k % len(sides) :] + sides[: k % len(sides)]  # rotate who goes first
            for side in order:
                t0 = time.perf_counter()
                if side == "engine":
                    out = run_engine(files[name][0], prepared[name], args)
                else:
                    out = run_trainer(side, base, tokenizer, prepared[name], args)
                r = results[(name, side)]
                r.tokens_per_s.append(out["tokens_per_s"])
                r.padding_share.append(out["padding"])
                r.peak_memory.append(out["peak"])
                r.note = out["note"]
                if rep == 0:  # a repeat with the same seed trains the same way: its eval is not redone
                    r.eval_losses.append(evaluator(out["trained"], prepared[name], tokenizer.pad_token_id))
                print(
                    f"  [{k + 1}/{len(runs)} seed {seed}] {name:<8} {side:<8} {out['tokens_per_s']:7.0f} tok/s  "
                    f"padding {100 * out['padding']:4.1f}%  {out['tokens']:6d} tokens  eval {r.eval_losses[-1]:.4f}  "
                    f"({time.perf_counter() - t0:.0f} s{peak_text(out['peak'])}"
                    + (f", second half {out['second_half_tokens_per_s']:.0f} tok/s" if side == "engine" else "")
                    + ")",
                    flush=True,
                )
                gc.collect()
    report(results, sets, sides, bf16_peak, args)


def peak_text(peak: int) -> str:
    return f", peak {peak / 2**30:.2f} GiB" if peak else ""


def report(
    results: dict[tuple[str, str], Result], sets: list[str], sides: list[str], peak: float, args: argparse.Namespace
) -> None:
    cuda = args.device == "cuda"
    if args.json:
        args.json.write_text(json.dumps({f"{d}/{s}": vars(r) for (d, s), r in results.items()}, indent=1))
    loss = {key: statistics.mean(r.eval_losses) for key, r in results.items()}
    print()
    print(
        f"{'data':<9}{'side':<10}{'tokens/s':>10}{'range':>14}{'padding':>9}{'eval loss':>11}{'seeds range':>16}"
        + (f"{'peak GiB':>10}" if cuda else "")
        + "  setup"
    )
    med: dict[tuple[str, str], float] = {}
    for name in sets:
        for side in sides:
            r = results[(name, side)]
            med[(name, side)] = statistics.median(r.tokens_per_s)
            spread = f"{min(r.tokens_per_s):.0f}-{max(r.tokens_per_s):.0f}"
            line = (
                f"{name:<9}{side:<10}{med[(name, side)]:>10.0f}{spread:>14}"
                f"{100 * statistics.median(r.padding_share):>8.1f}%{loss[(name, side)]:>11.4f}"
                f"{f'{min(r.eval_losses):.4f}-{max(r.eval_losses):.4f}':>16}"
            )
            if cuda:
                line += f"{max(r.peak_memory) / 2**30:>10.2f}"
            print(f"{line}  {r.note}")
    print()
    speedups = []
    for name in sets:
        parts = []
        if "engine" not in sides:
            continue
        e = med[(name, "engine")]
        for other in ("defaults", "best"):
            if other in sides:
                ratio = e / med[(name, other)]
                loss_gap = loss[(name, "engine")] / loss[(name, other)] - 1
                parts.append(f"engine/{other} {ratio:.2f}x (eval loss {100 * loss_gap:+.2f}%)")
                if other == "best":
                    speedups.append(ratio)
        share = e * FLOP_PER_TOKEN / (peak * 1e9)
        parts.append(f"engine at {100 * share:.1f}% of the bf16 matmul peak ({FLOP_PER_TOKEN / 1e9:.2f} GFLOP/token)")
        print(f"{name}: " + "; ".join(parts))
    if speedups:
        geo = math.exp(sum(math.log(s) for s in speedups) / len(speedups))
        which = "geometric mean over " + " and ".join(n for n in sets) if len(speedups) > 1 else sets[0]
        print(f"speedup against the best-configured recipe: {which}")
        print(f"speedup {geo:.2f}")


if __name__ == "__main__":
    main()
