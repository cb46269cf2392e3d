"""The standard Trainer + peft recipe as a person writes it, one whole process: `benchmarks/whole_run.py`'s baseline.

Reads an alpaca-style JSONL (instruction, optional input, output) with `datasets`, renders each row in the
model's chat template (the user turn, then the answer; loss on the answer's tokens only, as the app
trains it), pads batches with DataCollatorForSeq2Seq and trains LoRA with the Trainer, then saves the
adapter. Nothing here imports Adapter Studio. `--best` is the recipe set up well for the device: bf16
where it runs bf16 fast, length-grouped batches.

Prints one JSON line at the end: seconds since the process started for each phase (imports, model,
data, training, saved) and the real tokens trained.

    .venv/bin/python benchmarks/trainer_recipe.py MODEL_FOLDER TRAIN.jsonl OUT --steps 30 [--best]
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # the driver adds the interpreter's start, which it times from outside

import argparse  # noqa: E402
import json  # noqa: E402

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402
from peft import LoraConfig, TaskType, get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainingArguments,
)


def bf16_is_fast() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("train")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--best", action="store_true")
    args = ap.parse_args()
    phases = {"imports": time.perf_counter() - T0}

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=16, lora_dropout=0.05,
                      target_modules=["q_proj", "v_proj"])  # fmt: skip
    model = get_peft_model(model, lora)
    phases["model"] = time.perf_counter() - T0

    def encode(row: dict) -> dict:
        user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        messages = [{"role": "user", "content": user}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": row["output"]}], return_dict=True
        )["input_ids"][: args.max_length]
        labels = [-100] * len(prompt) + full[len(prompt) :]
        return {"input_ids": full, "attention_mask": [1] * len(full), "labels": labels[: len(full)]}

    raw = load_dataset("json", data_files=args.train, split="train")
    data = raw.map(encode, remove_columns=raw.column_names)
    phases["data"] = time.perf_counter() - T0

    best_bf16 = args.best and bf16_is_fast()
    grouping = {}
    if args.best:  # `train_sampling_strategy` in newer transformers, `group_by_length` before
        fields = TrainingArguments.__dataclass_fields__
        grouping = (
            {"train_sampling_strategy": "group_by_length"}
            if "train_sampling_strategy" in fields
            else {"group_by_length": True}
        )
    targs = TrainingArguments(
        output_dir=args.out,
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=2e-4,
        seed=args.seed,
        bf16=best_bf16,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        **({"use_cpu": True} if not torch.cuda.is_available() else {}),
        **grouping,
    )
    batches: list[int] = []  # real tokens of each batch, in the order made
    padder = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)

    def collate(features: list[dict]) -> dict:
        batch = padder(features)
        batches.append(int(batch["attention_mask"].sum()))
        return batch

    trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collate)
    phases["trainer"] = time.perf_counter() - T0
    trainer.train()
    phases["trained"] = time.perf_counter() - T0
    trainer.save_model(args.out)
    phases["saved"] = time.perf_counter() - T0
    # The loader collates a batch ahead of the step that takes it: count only the steps' batches.
    print(json.dumps({"phases": phases, "tokens": sum(batches[: args.steps]), "bf16": best_bf16}))


if __name__ == "__main__":
    main()
