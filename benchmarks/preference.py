"""DPO against supervised training on the same pairs (issue 24's goals), through the engine's own run().

Data: Anthropic HH harmless pairs (/work/shared/data/hh_harmless_test.jsonl.gz, MIT), read by the
app's `preference` format (dialogues split where chosen and rejected diverge). The first `--held-out`
usable pairs are the evaluation file, the next `--pairs` the training file.

Runs, same model, method (LoRA r8/alpha16 on the app's default layers, every linear layer of the blocks,
unless --targets), learning rate (the app's default for the objective unless --lr), batch, max_length, seed:
  dpo  objective dpo (β the app's default, 0.1, unless --beta) on the pairs, `--epochs` passes,
       `--accumulate` batches a step (default 1);
       evaluated on the held-out pairs at the end: preference accuracy (the share of pairs whose chosen
       answer gains more log-probability over the base than the rejected one) and reward margin.
  sft  objective sft on the same rows as conversations, each pair's two sides as two rows, batch 2×:
       the same tokens per step, so tokens/s compare the steps (DPO's reference forward included);
       `--sft-steps` steps (default 100): it measures speed and memory only, a whole epoch would add
       nothing but time.
Reported: DPO's held-out preference accuracy, tokens/s of each (median over the steps after the
first three), the ratio sft/dpo (the goal: at most 1.3), and the peak of `memory_bytes` of each
(process RSS on a CPU, CUDA allocated on a GPU; the goal: dpo at most 1.15× sft).
The last line: `preference_accuracy <acc> speed_ratio <sft/dpo> memory_ratio <dpo/sft>`.

Usage: .venv/bin/python benchmarks/preference.py [--model embedded:smollm2-135m-instruct] [--pairs 2000]
       [--held-out 300] [--epochs 1] [--max-steps N] [--sft-steps 100] [--batch 4] [--accumulate N]
       [--max-length 512] [--lr RATE] [--beta B] [--targets q_proj,v_proj] [--sft-first] [--seed N] [--out DIR]
The issue's goal run is the default (2,000 pairs, one epoch, 300 held out); `--max-steps` and smaller
`--pairs`/`--held-out` make a quick check; `--sft-steps 0` skips the supervised side (the accuracy alone,
e.g. of another `--seed`). `--sft-first` starts DPO from a supervised epoch on the chosen answers, merged
(the DPO paper's recipe for HH): its accuracy is then measured against that model, not the embedded base
(on HH it came out below the defaults: the README's preference section).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_test.jsonl.gz"


def split_pairs(pairs: int, held_out: int, folder: Path) -> tuple[Path, Path, Path, Path]:
    """(train pairs, held-out pairs, the train pairs as 2 conversations each, their chosen sides as
    conversations) as JSONL files."""
    from adapter_studio.engine.data.preference import pair_examples

    with gzip.open(HH, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    examples, _ = pair_examples(rows, "preference", {"chosen": "chosen", "rejected": "rejected"}, str(HH))
    if len(examples) < pairs + held_out:
        sys.exit(f"only {len(examples)} usable pairs in {HH}")
    used = {e.row for e in examples}
    kept = [r for i, r in enumerate(rows, start=1) if i in used]
    evals, train = kept[:held_out], kept[held_out : held_out + pairs]
    conversations = [{"messages": [*e.messages, {"role": "assistant", "content": answer}]}
                     for e in examples[held_out : held_out + pairs] for answer in (e.chosen, e.rejected)]  # fmt: skip
    out = []
    files = (("train.jsonl", train), ("eval.jsonl", evals), ("sft.jsonl", conversations),
             ("chosen.jsonl", conversations[::2]))  # fmt: skip
    for name, data in files:
        path = folder / name
        path.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
        out.append(path)
    return out[0], out[1], out[2], out[3]


def train(spec: dict[str, Any]) -> tuple[Any, list[Any]]:
    from adapter_studio.engine.spec import parse_spec
    from adapter_studio.engine.training.run import run

    events: list[Any] = []
    result = run(parse_spec(spec), emit=events.append)
    if result.status != "completed":
        sys.exit(f"{spec.get('objective', {}).get('name', 'sft')} run failed: {result.error}")
    return result, events


def summary(events: list[Any]) -> dict[str, float]:
    metrics = [e for e in events if e.type == "metrics"]
    steady = metrics[3:] or metrics
    return {"tokens_per_s": statistics.median(m.tokens_per_s for m in steady),
            "peak_memory_mib": max(m.memory_peak_bytes or m.memory_bytes for m in metrics) / 2**20,
            "steps": metrics[-1].step}  # fmt: skip


def supervised_start(common: dict[str, Any], chosen_file: Path, args: argparse.Namespace) -> Path:
    """The DPO paper's recipe for HH: one epoch of supervised LoRA (the app's defaults) on the chosen
    answers, merged into the base (the app's merged export), so that DPO starts from, and compares with,
    a model that has seen this kind of dialogue."""
    from adapter_studio.engine.export.run_export import export_run

    sft, events = train({**common,
                         "data": {"path": str(chosen_file), "eval_split": 0.0, "max_length": args.max_length},
                         "training": {"epochs": 1, "save_every": 100_000, "eval_samples": 0, "compile": "off",
                                      "seed": args.seed}})  # fmt: skip
    losses = [e.loss for e in events if e.type == "metrics"]
    first, last = statistics.mean(losses[:25]), statistics.mean(losses[-25:])
    merged = export_run(Path(sft.run_dir), "merged", Path(common["output_dir"]) / "sft-merged")
    print(f"sft first: {len(losses)} steps, loss {first:.3f} → {last:.3f} (first and last 25 steps); "
          f"merged into {merged.path}")  # fmt: skip
    return merged.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--held-out", type=int, default=300)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--sft-steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches of --batch pairs summed per step")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=None, help="default: the app's own choice for the run")
    parser.add_argument("--beta", type=float, default=None, help="DPO's β (default: the app's own, 0.1)")
    parser.add_argument(
        "--targets",
        default=None,
        help="LoRA layers, comma-separated (default: the app's own choice, every linear layer)",
    )
    parser.add_argument("--sft-first", action="store_true",
                        help="a supervised epoch on the chosen answers, merged, before DPO (the DPO paper's recipe)")
    parser.add_argument("--seed", type=int, default=0, help="training.seed of both runs (row order, adapter start)")
    parser.add_argument("--out", default=None, help="folder for the data and run folders (default: temporary)")
    args = parser.parse_args()
    folder = Path(args.out or tempfile.mkdtemp(prefix="preference-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    train_file, eval_file, sft_file, chosen_file = split_pairs(args.pairs, args.held_out, folder)
    common = {
        "model": {"source": args.model},
        "method": {
            "name": "lora",
            "r": 8,
            "alpha": 16,
            **({"target_modules": args.targets.split(",")} if args.targets else {}),
        },
        "output_dir": str(folder / "runs"),
    }
    budget = {"max_steps": args.max_steps} if args.max_steps else {"epochs": args.epochs}
    rate = {"learning_rate": args.lr} if args.lr else {}
    training = {**budget, **rate, "gradient_accumulation": args.accumulate, "save_every": 100_000,
                "eval_samples": 0, "compile": "off", "seed": args.seed}
    objective = {"name": "dpo", **({"beta": args.beta} if args.beta else {})}
    if args.sft_first:
        common["model"] = {"source": str(supervised_start(common, chosen_file, args))}
    dpo, dpo_events = train({**common, "objective": objective,
                             "data": {"path": str(train_file), "eval_path": str(eval_file),
                                      "max_length": args.max_length},
                             "training": {**training, "batch_size": args.batch,
                                          "eval_every": 100_000}})  # fmt: skip
    final = [e for e in dpo_events if e.type == "eval"][-1]
    d = summary(dpo_events)
    print(
        f"dpo: {d['steps']} steps, {d['tokens_per_s']:.0f} tokens/s, peak memory {d['peak_memory_mib']:.0f} MiB; "
        f"held-out ({args.held_out} pairs): preference accuracy {final.preference_accuracy:.3f}, reward margin "
        f"{final.reward_margin:.3f}, loss {final.eval_loss:.4f}"
    )
    if args.sft_steps == 0:  # the accuracy alone (another seed, say)
        print(f"runs: {dpo.run_dir}\npreference_accuracy {final.preference_accuracy:.3f}")
        return
    sft, sft_events = train({**common,
                             "data": {"path": str(sft_file), "eval_split": 0.0, "max_length": args.max_length},
                             "training": {**training, "max_steps": args.max_steps or args.sft_steps,
                                          "batch_size": 2 * args.batch}})  # fmt: skip
    s = summary(sft_events)
    print(f"sft: {s['steps']} steps, {s['tokens_per_s']:.0f} tokens/s, peak memory {s['peak_memory_mib']:.0f} MiB")
    print(f"runs: {dpo.run_dir} {sft.run_dir}")
    print(
        f"preference_accuracy {final.preference_accuracy:.3f} "
        f"speed_ratio {s['tokens_per_s'] / d['tokens_per_s']:.2f} "
        f"memory_ratio {d['peak_memory_mib'] / s['peak_memory_mib']:.2f}"
    )


if __name__ == "__main__":
    main()
