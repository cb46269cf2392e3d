"""A generated instruction set whose answer lengths have a long tail, for throughput benchmarks.

Each row is an alpaca-style instruction (instruction, input, output) from one of a few checkable
tasks (counting, sorting numbers, reversing words, multiplication tables, dates to ISO 8601).
The answer length in tokens is drawn log-normal (median about 30 tokens, clipped to 5–200), so most
rows are short and a few are long, as in real instruction data: a batch padded to its longest row
then wastes much of its compute on padding. Deterministic for a seed; no downloads.

    .venv/bin/python benchmarks/longtail_data.py OUT_DIR      # writes train.jsonl and eval.jsonl
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
from pathlib import Path

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "garden",
    "window",
    "silver",
    "forest",
    "candle",
    "mirror",
    "ocean",
    "pepper",
    "bridge",
    "lantern",
    "meadow",
    "thunder",
    "violet",
    "harbor",
    "pencil",
    "marble",
    "copper",
    "feather",
    "island",
    "rocket",
    "winter",
    "summer",
    "valley",
    "shadow",
    "castle",
    "dragon",
    "planet",
    "orange",
    "yellow",
    "purple",
    "engine",
    "basket",
    "ladder",
    "tiger",
    "falcon",
    "kettle",
    "blanket",
    "crystal",
    "desert",
    "canyon",
    "glacier",
    "jungle",
    "prairie",
    "volcano",
    "comet",
    "anchor",
    "compass",
]
MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip


def _count(n: int, rng: random.Random) -> dict[str, str]:
    start = rng.randint(1, 500)
    end = start + max(1, n) - 1
    return {
        "instruction": f"Count from {start} to {end}, separating the numbers with commas.",
        "input": "",
        "output": ", ".join(str(i) for i in range(start, end + 1)),
    }


def _sort(n: int, rng: random.Random) -> dict[str, str]:
    values = [rng.randint(0, 999) for _ in range(max(2, n))]
    return {
        "instruction": "Sort these numbers in ascending order.",
        "input": " ".join(map(str, values)),
        "output": " ".join(map(str, sorted(values))),
    }


def _reverse(n: int, rng: random.Random) -> dict[str, str]:
    words = [rng.choice(WORDS) for _ in range(max(2, n))]
    return {
        "instruction": "Write these words in reverse order.",
        "input": " ".join(words),
        "output": " ".join(reversed(words)),
    }


def _table(n: int, rng: random.Random) -> dict[str, str]:
    k = rng.randint(2, 19)
    upto = max(1, n)
    return {
        "instruction": f"Write the multiplication table of {k} from 1 up to {upto}, one line each.",
        "input": "",
        "output": "\n".join(f"{i} x {k} = {i * k}" for i in range(1, upto + 1)),
    }


def _dates(n: int, rng: random.Random) -> dict[str, str]:
    days = [dt.date(1950, 1, 1) + dt.timedelta(days=rng.randint(0, 36500)) for _ in range(max(1, n))]
    return {
        "instruction": "Rewrite each date in ISO 8601 form (YYYY-MM-DD), one per line.",
        "input": "\n".join(f"{MONTHS[d.month - 1]} {d.day}, {d.year}" for d in days),
        "output": "\n".join(d.isoformat() for d in days),
    }


# (task, answer tokens per item under SmolLM2's tokenizer (digits are single tokens), whether the
# input is as long as the answer: those answers are capped at 100 tokens so rows fit in 256)
TASKS = [(_count, 3.9, False), (_sort, 3.8, True), (_reverse, 1.0, True), (_table, 11.0, False), (_dates, 11.0, True)]


def answer_tokens(rng: random.Random, median: float = 30.0, sigma: float = 0.9) -> int:
    """A log-normal answer length in tokens, clipped to 5–200."""
    return int(min(200, max(5, round(rng.lognormvariate(math.log(median), sigma)))))


def generate(n_train: int, n_eval: int, seed: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n_train + n_eval):
        task, per_item, echoes_input = rng.choice(TASKS)
        tokens = answer_tokens(rng)
        rows.append(task(max(1, round(min(tokens, 100 if echoes_input else 200) / per_item)), rng))
    return rows[n_eval:], rows[:n_eval]


def write(out_dir: Path, n_train: int = 1000, n_eval: int = 64, seed: int = 0) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    train, held = generate(n_train, n_eval, seed)
    paths = out_dir / "train.jsonl", out_dir / "eval.jsonl"
    for path, rows in zip(paths, (train, held), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-eval", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    print(*write(a.out_dir, a.n_train, a.n_eval, a.seed))
