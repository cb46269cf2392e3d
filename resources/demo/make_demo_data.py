"""Generate Adapter Studio's demo data set: date normalisation to ISO 8601.

Task
    Each example asks the model to rewrite a date written in one of many
    everyday styles ("March 14, 2021", "14 Mar 2021", "3/14/2021",
    "the 14th of March, 2021", "14.03.2021", "Sun, 14 Mar 2021", ...) as an
    ISO 8601 date, and the answer is exactly that date ("2021-03-14").

Why this task
    * The answer is short and checkable by exact match, so a held-out score
      is unambiguous and training is cheap (about ten answer tokens).
    * The base SmolLM2-135M-Instruct model is poor at it (it paraphrases,
      explains, or mangles the digits), while a small LoRA adapter learns the
      mapping in a few minutes on a laptop CPU: a clear before/after demo.
    * It needs no downloaded data: everything is generated here,
      deterministically, from a fixed seed.

Conventions (so every answer is well defined)
    * Slash-separated numeric dates are US order, month first: 3/14/2021.
    * Dot- and dash-separated numeric dates are day first: 14.03.2021, 14-03-2021.

Splits
    Training and held-out examples use disjoint calendar dates, so no held-out
    input (nor even its date in another style) appears in training.

Preference pairs
    The same examples as pairs for preference tuning (DPO and friends):
    ``preference_train.jsonl`` and ``preference_eval.jsonl`` with ``prompt``
    (the user turn the alpaca rows make), ``chosen`` (the ISO date) and
    ``rejected``: one of the small model's typical misses, in turn — month
    and day swapped, the date wrapped in a sentence, or another numeric
    format.

Run ``python resources/demo/make_demo_data.py`` to rewrite ``train.jsonl`` and
``eval.jsonl`` next to this file (alpaca format: instruction, input, output),
and the two preference files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
from collections.abc import Callable
from pathlib import Path

SEED = 20240314
N_TRAIN = 600
N_EVAL = 60
YEAR_MIN = 1950
YEAR_MAX = 2049

MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
MONTH_ABBR = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

INSTRUCTIONS = [
    "Rewrite this date in ISO 8601 format (YYYY-MM-DD).",
    "Convert the date to ISO 8601 (YYYY-MM-DD).",
    "Write the following date as YYYY-MM-DD.",
    "Normalize this date to ISO format (YYYY-MM-DD). Answer with the date only.",
    "Give this date in ISO 8601 form, YYYY-MM-DD.",
    "Express the date below in the format YYYY-MM-DD.",
]


def ordinal(n: int) -> str:
    """Return ``n`` with its English ordinal suffix: 1st, 2nd, 3rd, 4th, 11th, 22nd."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _month(d: dt.date) -> str:
    return MONTHS[d.month - 1]


def _abbr(d: dt.date) -> str:
    return MONTH_ABBR[d.month - 1]


def _weekday(d: dt.date) -> str:
    return WEEKDAYS[d.weekday()]


# Each style renders a date the way a person might write it.
STYLES: list[Callable[[dt.date], str]] = [
    lambda d: f"{_month(d)} {d.day}, {d.year}",
    lambda d: f"{_abbr(d)} {d.day}, {d.year}",
    lambda d: f"{_abbr(d)}. {d.day}, {d.year}",
    lambda d: f"{d.day} {_month(d)} {d.year}",
    lambda d: f"{d.day} {_abbr(d)} {d.year}",
    lambda d: f"{d.day}-{_abbr(d)}-{d.year}",
    lambda d: f"{d.month}/{d.day}/{d.year}",
    lambda d: f"{d.month:02d}/{d.day:02d}/{d.year}",
    lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    lambda d: f"{d.day}.{d.month}.{d.year}",
    lambda d: f"{d.day:02d}-{d.month:02d}-{d.year}",
    lambda d: f"the {ordinal(d.day)} of {_month(d)}, {d.year}",
    lambda d: f"{_month(d)} {ordinal(d.day)}, {d.year}",
    lambda d: f"{ordinal(d.day)} {_month(d)} {d.year}",
    lambda d: f"{_weekday(d)}, {_month(d)} {d.day}, {d.year}",
    lambda d: f"{_weekday(d)[:3]}, {d.day} {_abbr(d)} {d.year}",
    lambda d: f"{_month(d).upper()} {d.day} {d.year}",
    lambda d: f"{d.year}/{d.month}/{d.day}",
    lambda d: f"{d.year} {_month(d)} {d.day}",
    lambda d: f"{_month(d)} {d.day} {d.year}",
]


def random_date(rng: random.Random) -> dt.date:
    """Draw a uniformly random calendar date between YEAR_MIN and YEAR_MAX."""
    start = dt.date(YEAR_MIN, 1, 1).toordinal()
    end = dt.date(YEAR_MAX, 12, 31).toordinal()
    return dt.date.fromordinal(rng.randint(start, end))


def make_example(d: dt.date, rng: random.Random) -> dict[str, str]:
    """Build one alpaca-style example for date ``d`` with a random style and phrasing."""
    style = rng.choice(STYLES)
    return {
        "instruction": rng.choice(INSTRUCTIONS),
        "input": style(d),
        "output": d.isoformat(),
    }


def generate(n_train: int, n_eval: int, seed: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Return (train, eval) example lists built on disjoint sets of dates."""
    rng = random.Random(seed)
    dates: list[dt.date] = []
    seen: set[dt.date] = set()
    while len(dates) < n_train + n_eval:
        d = random_date(rng)
        if d not in seen:
            seen.add(d)
            dates.append(d)
    eval_dates, train_dates = dates[:n_eval], dates[n_eval:]
    # Round-robin the styles over the held-out set so every style is scored.
    eval_rows = []
    for i, d in enumerate(eval_dates):
        eval_rows.append(
            {
                "instruction": rng.choice(INSTRUCTIONS),
                "input": STYLES[i % len(STYLES)](d),
                "output": d.isoformat(),
            }
        )
    train_rows = [make_example(d, rng) for d in train_dates]
    assert not {r["input"] for r in eval_rows} & {r["input"] for r in train_rows}
    return train_rows, eval_rows


def rejected_answer(d: dt.date, i: int) -> str:
    """A plausible wrong answer for date ``d``, the ``i``-th kind of miss in turn."""
    kind = i % 3
    if kind == 0:  # month and day swapped (the year moved when they cannot be)
        swapped = d.day <= 12 and d.day != d.month
        return f"{d.year}-{d.day:02d}-{d.month:02d}" if swapped else f"{d.year + 1}-{d.month:02d}-{d.day:02d}"
    if kind == 1:
        return f"The date in ISO 8601 format is {d.isoformat()}."
    return f"{d.day:02d}/{d.month:02d}/{d.year}"


def preference_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The alpaca rows as preference pairs: the ISO date chosen, a typical miss rejected."""
    pairs = []
    for i, row in enumerate(rows):
        d = dt.date.fromisoformat(row["output"])
        prompt = f"{row['instruction']}\n\n{row['input']}"  # the user turn the alpaca format renders
        pairs.append({"prompt": prompt, "chosen": row["output"], "rejected": rejected_answer(d, i)})
    return pairs


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    """Write ``rows`` as JSON Lines (UTF-8, one object per line)."""
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    """Parse arguments and write train.jsonl and eval.jsonl."""
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=here)
    parser.add_argument("--n-train", type=int, default=N_TRAIN)
    parser.add_argument("--n-eval", type=int, default=N_EVAL)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    train_rows, eval_rows = generate(args.n_train, args.n_eval, args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out_dir / "train.jsonl", train_rows)
    write_jsonl(args.out_dir / "eval.jsonl", eval_rows)
    write_jsonl(args.out_dir / "preference_train.jsonl", preference_rows(train_rows))
    write_jsonl(args.out_dir / "preference_eval.jsonl", preference_rows(eval_rows))
    print(f"wrote {len(train_rows)} train and {len(eval_rows)} eval examples (and as preference pairs) to "
          f"{args.out_dir}")


if __name__ == "__main__":
    main()
