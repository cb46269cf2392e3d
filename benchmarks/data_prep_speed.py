"""How fast data preparation is, cold and from the cache, and how much memory a huge file needs.

1. Speed: writes a 100,000-row alpaca JSONL file, then times `prepare_data` with the embedded
   SmolLM2 tokenizer twice: cold (read, render, tokenise, write the cache) and warm (the cache).
   The budget is 60 s for the cold run.
2. Streaming: writes a ~1 GB alpaca JSONL file and prepares it in a fresh process, printing
   progress, then reports that process's peak resident memory (budget: 2 GB).

    python benchmarks/data_prep_speed.py            # both, 1 GB streaming file
    python benchmarks/data_prep_speed.py --quick    # both, 100 MB streaming file
    python benchmarks/data_prep_speed.py --skip-stream
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BUDGET_S = 60.0
BUDGET_RSS = 2 * 2**30
VOCABULARY = (
    "the of and to in is was for that with as on by at from his her they which this be are were or an "
    "have had not one all their there been if more when will would who so no what up out about into "
    "than them can only other new some could time these two may then do first any my now such like our "
    "over man me even most made after also did many before must through back years where much your way "
    "well down should because each just those people how too little state good very make world still own "
    "see men work long get here between both life being under never day same another know while last "
    "might us great old year off come since against go came right used take three water number sound "
    "explain describe write list summarize translate compare why which answer question reason step 42 7 "
    '1999 3.14 first second third, however, therefore. (for example) "quoted" e-mail café naïve'
)
WORDS = VOCABULARY.split()


def _sentence(rng: random.Random, low: int, high: int) -> str:
    words = rng.choices(WORDS, k=rng.randint(low, high))
    return " ".join(words).capitalize() + rng.choice(".?!")


def alpaca_row(rng: random.Random) -> dict[str, str]:
    return {
        "instruction": _sentence(rng, 6, 30),
        "input": _sentence(rng, 5, 40) if rng.random() < 0.35 else "",
        "output": " ".join(_sentence(rng, 5, 25) for _ in range(rng.randint(1, 5))),
    }


def write_jsonl(path: Path, rows: int | None = None, target_bytes: int | None = None, seed: int = 0) -> int:
    """Write alpaca rows until `rows` rows or `target_bytes` bytes; returns the number of rows."""
    rng = random.Random(seed)
    written = size = 0
    with path.open("w", encoding="utf-8") as f:
        while (rows is None or written < rows) and (target_bytes is None or size < target_bytes):
            line = json.dumps(alpaca_row(rng), ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode())
            written += 1
    return written


def load_smollm2_tokenizer() -> Any:
    from adapter_studio.engine.models.loading import load_tokenizer, resolve_source

    return load_tokenizer(resolve_source("embedded:smollm2-135m-instruct"))


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def current_rss() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def speed(rows: int, folder: Path) -> None:
    from adapter_studio.engine.data.prepare import prepare_data
    from adapter_studio.engine.spec import DataSpec

    data_file = folder / "alpaca-100k.jsonl"
    t0 = time.perf_counter()
    write_jsonl(data_file, rows=rows)
    print(f"wrote {rows:,} rows ({data_file.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    tokenizer = load_smollm2_tokenizer()
    print(f"loaded the SmolLM2 tokenizer in {time.perf_counter() - t0:.1f} s (not counted below)")
    spec = DataSpec(path=str(data_file))
    timings = []
    for label in ("cold", "warm"):
        t0, cpu0 = time.perf_counter(), time.process_time()
        data = prepare_data(spec, tokenizer, None, 512, 0)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        timings.append(seconds)
        print(f"{label}: {seconds:6.2f} s wall, {cpu:6.2f} s CPU ({seconds / BUDGET_S:.0%} of the "
              f"{BUDGET_S:.0f} s budget)  {len(data.train):,} train / {len(data.eval):,} held out, "
              f"{data.train_tokens:,} tokens, from cache: {data.from_cache}")  # fmt: skip
    cold, warm = timings
    print(f"tokens/s cold: {data.train_tokens / cold:,.0f}; warm is {cold / warm:.0f}x faster than cold")


def stream_child(data_file: Path) -> None:
    """Runs in a fresh process: prepare one big file, report progress and the peak memory."""
    from adapter_studio.engine.data.prepare import prepare_data
    from adapter_studio.engine.spec import DataSpec

    tokenizer = load_smollm2_tokenizer()
    base, base_now = peak_rss(), current_rss()
    last = [0.0]
    t0 = time.perf_counter()

    def progress(stage: str, fraction: float) -> None:
        if fraction - last[0] >= 0.1 or fraction < last[0]:
            last[0] = fraction
            elapsed = time.perf_counter() - t0
            print(f"  {stage} {fraction:4.0%}  {elapsed:6.1f} s  peak RSS {peak_rss() / 2**20:,.0f} MiB", flush=True)

    data = prepare_data(DataSpec(path=str(data_file)), tokenizer, None, 512, 0, progress=progress)
    n = len(data.train)
    sample = data.train[n // 2]  # items are read from the memory-mapped arrays on access
    print(json.dumps({"seconds": time.perf_counter() - t0, "rows": data.rows, "train": n,
                      "tokens": data.train_tokens, "baseline_rss": base, "peak_rss": peak_rss(),
                      "rss_after_tokenizer": base_now, "rss_at_end": current_rss(),
                      "sample_length": len(sample.input_ids)}), flush=True)  # fmt: skip


def streaming(target_bytes: int, folder: Path) -> None:
    data_file = folder / "alpaca-big.jsonl"
    t0 = time.perf_counter()
    rows = write_jsonl(data_file, target_bytes=target_bytes, seed=1)
    size = data_file.stat().st_size
    print(f"wrote {rows:,} rows ({size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.1f} s; preparing it:")
    child = subprocess.run(
        [sys.executable, __file__, "--stream-child", str(data_file)],
        capture_output=True, text=True, env=os.environ.copy(), check=False,
    )  # fmt: skip
    lines = child.stdout.rstrip().splitlines()
    for line in lines[:-1]:
        print(line)
    if child.returncode != 0 or not lines:
        print(child.stderr[-3000:])
        raise SystemExit(f"the streaming run failed (exit {child.returncode})")
    result = json.loads(lines[-1])
    peak = result["peak_rss"]
    verdict = "within" if peak < BUDGET_RSS else "OVER"
    print(f"prepared {result['rows']:,} rows / {result['tokens']:,} tokens in {result['seconds']:.0f} s; "
          f"peak RSS {peak / 2**30:.2f} GiB ({verdict} the {BUDGET_RSS / 2**30:.0f} GiB budget; "
          f"{result['baseline_rss'] / 2**30:.2f} GiB of it is the process with the tokenizer loaded) "
          f"for a {size / 2**30:.2f} GiB file; resident memory {result['rss_after_tokenizer'] / 2**20:,.0f} MiB "
          f"after loading the tokenizer, {result['rss_at_end'] / 2**20:,.0f} MiB at the end")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--stream-gb", type=float, default=1.0, help="size of the streaming check's file")
    parser.add_argument("--quick", action="store_true", help="a 0.1 GB streaming file")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--stream-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if args.stream_child:
        stream_child(args.stream_child)
        return
    with tempfile.TemporaryDirectory(prefix="data-prep-speed-") as tmp:
        folder = Path(tmp)
        os.environ["ADAPTER_STUDIO_DATA_CACHE"] = str(folder / "cache")  # leave the real cache alone
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        if not args.skip_speed:
            speed(args.rows, folder)
        if not args.skip_stream:
            streaming(int((0.1 if args.quick else args.stream_gb) * 2**30), folder)


if __name__ == "__main__":
    main()
