"""What compiling the training step costs on this machine, remembered from earlier runs, and whether a run
with training.compile = auto should pay it.

Compiling is paid once per run, in its first compiled step. Inductor caches what it built on disk, and the
engine keeps that cache with the app's own (adapter_studio.engine sets TORCHINDUCTOR_CACHE_DIR; not /tmp,
which a restart may empty), so a later run of the same model and method builds far faster. The demo
(SmolLM2, LoRA on q,v, batch 8, 150 steps) on the project's 2-core CPU: the first step of a compiled run
took 30.8 s with inductor's cache empty and 6.7 s with it filled, against 1 s eager; the steps after it ran
1.3× faster (benchmarks/compile_auto.py). So the decision needs the cost, which this module remembers per
device, torch version, model shape, method and precision: the first compile's, then the cached ones'.
Between the two, a cached compile is expected to cost speed.auto_compile_cached_share of the first; where
nothing is remembered, speed.auto_compile_unknown_cost_s stands in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

from adapter_studio.engine.app_cache import app_cache_dir
from adapter_studio.engine.training.speed import SpeedOptions

COSTS_FILE = "compile-seconds.json"  # {key: {"first_s": s, "cached_s": s}}, under app_cache_dir()


def cost_key(device: str, model_config: Any, method: Any, precision: str, speed: SpeedOptions) -> str:
    """What the compiled code depends on: two runs with one key build the same graphs."""
    import torch

    config = model_config.to_dict() if hasattr(model_config, "to_dict") else {}
    config.pop("_name_or_path", None)
    parts = [device, torch.__version__, config, method.model_dump(mode="json"), precision,
             speed.compile_mode, speed.compile_whole]  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _costs_path() -> Path:
    return app_cache_dir() / COSTS_FILE


def _read_costs() -> dict[str, dict[str, float]]:
    try:
        costs = json.loads(_costs_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: nothing remembered
        return {}
    if not isinstance(costs, dict):
        return {}
    return {k: {n: float(x) for n, x in v.items() if n in ("first_s", "cached_s") and isinstance(x, int | float)}
            for k, v in costs.items() if isinstance(v, dict) and isinstance(v.get("first_s"), int | float)}  # fmt: skip


def remembered(key: str) -> dict[str, float] | None:
    """What compiles with this key cost: `first_s`, the first (inductor's cache empty), and `cached_s`, the
    last one after it (its cache filled by the first); None if it never compiled here."""
    return _read_costs().get(key)


def remember_cost(key: str, seconds: float) -> None:
    """Keep a measured cost for the next run: the first compile's, then the cached ones'. A cache folder
    that cannot be written only loses the memory."""
    from adapter_studio.engine.durable import write_text

    costs = _read_costs()
    entry = costs.setdefault(key, {})
    entry["cached_s" if "first_s" in entry else "first_s"] = round(max(seconds, 0.0), 2)
    with contextlib.suppress(OSError):
        write_text(_costs_path(), json.dumps(costs, indent=1, sort_keys=True))


def expected_cost(entry: dict[str, float] | None, speed: SpeedOptions) -> tuple[float, str]:
    """The seconds compiling should cost now, and how that is known (for the log)."""
    if entry is None:
        return speed.auto_compile_unknown_cost_s, "not yet measured here"
    if "cached_s" in entry:
        return entry["cached_s"], "as measured last time"
    return entry["first_s"] * speed.auto_compile_cached_share, "inductor's cache filled by an earlier run"


def worth_compiling(left_s: float, cost_s: float, speed: SpeedOptions) -> bool:
    """Whether the rest of a run, `left_s` seconds at its eager speed, is long enough to pay `cost_s` back:
    speed.auto_compile_payback times the cost (compiled steps 1.2-1.5× faster save 17-33 % of the rest,
    so a gain of 1.25× or more pays at 5×)."""
    return left_s > speed.auto_compile_payback * cost_s
