"""SpeedOptions: the switches that make a run fast without changing what it learns, as data.

The session receives one `SpeedOptions`; the defaults here are what was measured best (the numbers are
beside each field). Benchmarks pass other values to measure both ways of a switch, and tests pass them
to pin a path, instead of patching module globals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adapter_studio.engine.defaults import CPU_EAGER_MAX_WIDTH
from adapter_studio.engine.methods.peft_base import compute_lora_inputs_in_autocast_dtype


@dataclass(frozen=True)
class SpeedOptions:
    # Batch widths rounded up to these multiples, by device type ("cpu", "cuda"). 1: the longest row.
    pad_multiple: Mapping[str, int] = field(default_factory=dict)
    # On a CPU a batch's width is rounded up to one of this many steps per doubling (at most 1/8 more
    # padding; 0: off): oneDNN builds its matmul kernels anew for every shape it meets (without its cache a
    # SmolLM2 step took 4.4× as long), so every new width costs time (SmolLM2, long-tail instructions, 24
    # steps: 633-638 tokens/s with the steps, 603-605 without; benchmarks/cpu_speed_options.py and
    # throughput.py --cpu-width-steps measure both ways). Its cache also grows by each width's kernels (the
    # Llama-3.2-1B shape: ~25 MB a width), but the steps were not measured to lower the resident set.
    cpu_width_steps: int = 8
    # LoRA layers keep their input in the autocast dtype (see compute_lora_inputs_in_autocast_dtype);
    # benchmarks/cpu_speed_options.py measures both ways.
    lora_inputs_in_autocast_dtype: bool = True
    # On a CPU, LoRA's input dropout draws its mask 16 bits per element (training.bits_dropout: 1.8×
    # faster than torch's float per element); benchmarks/cpu_speed_options.py measures both ways.
    bits_dropout_on_cpu: bool = True
    # On a CPU, batches up to this width use eager attention instead of SDPA (engine.defaults); 0: never.
    cpu_eager_attention_max_width: int = CPU_EAGER_MAX_WIDTH
    # training.compile = auto: a one-process run judges its speed over its first steps and compiles when
    # what is left, at that speed, would take longer than `auto_compile_payback` times what compiling is
    # expected to cost (engine.training.compile_cost: measured by the earlier runs of the same model, method
    # and device, else `auto_compile_unknown_cost_s`). Compiled steps are 1.2-1.5× faster (the demo at
    # batch 8 and 4 on this CPU; SmolLM2 at batch 4 on an H200: 1.3×, its eager steps bound by kernel
    # launches). The demo's first compile on this 2-core CPU cost 30 s; with inductor's cache filled by it,
    # 6 s (`auto_compile_cached_share` of the first, until a cached compile is measured).
    auto_compile_after_steps: int = 10
    auto_compile_payback: float = 5.0
    auto_compile_unknown_cost_s: float = 60.0
    auto_compile_cached_share: float = 0.25
    # Inductor's mode for the compiled blocks. None is its default; benchmarks/throughput.py --compile-mode
    # tries others on a GPU ("reduce-overhead": CUDA graphs, for steps bound by the host's kernel launches;
    # on an H100 with torch 2.11 the graph trees crashed in the first compiled backward and the plain
    # graphs refuse blocks that share code: benchmarks/gpu_session.sh).
    compile_mode: str | None = None
    # Compile the whole decoder instead of one block shared by all (benchmarks/throughput.py
    # --compile-whole): inductor's plain CUDA graphs need that, since they record one block's parameters
    # at fixed addresses.
    compile_whole: bool = False

    def padding(self, device: str, compiled: bool) -> int:
        """The multiple batch widths are rounded up to on this device type; compiled CUDA code pads to 8
        too, since inductor specialises its kernels on whether the width is a multiple of 8."""
        multiple = self.pad_multiple.get(device, 1)
        return math.lcm(multiple, 8) if compiled and device == "cuda" else multiple

    def multiple_for(self, device: str, compiled: bool, longest: int, limit: int) -> int:
        """The multiple a batch whose longest row has `longest` tokens is padded to: `padding`'s, and on a
        CPU one of `cpu_width_steps` steps per doubling, unless that would pass `limit` (the data's
        max_length: a model with learned positions has none beyond its own)."""
        multiple = self.padding(device, compiled)
        if device != "cpu" or not self.cpu_width_steps or longest <= self.cpu_width_steps:
            return multiple
        stepped = math.lcm(multiple, max(1, (1 << (longest.bit_length() - 1)) // self.cpu_width_steps))
        return stepped if -(-longest // stepped) * stepped <= max(limit, longest) else multiple

    def speed_up_lora_layers(self, model: Any, device: str, precision: str) -> None:
        """The engine's changes to peft's LoRA layers for speed (benchmarks/throughput.py --profile makes
        them too): inputs kept in the autocast dtype, and on a CPU dropout masks from 16-bit lanes."""
        if precision in ("bf16", "fp16") and self.lora_inputs_in_autocast_dtype:
            compute_lora_inputs_in_autocast_dtype(model)
        if device == "cpu" and self.bits_dropout_on_cpu:
            from adapter_studio.engine.training.bits_dropout import (
                use_bits_dropout_for_lora,  # imports torch: not at the GUI's start
            )

            use_bits_dropout_for_lora(model)

    def attention_for(self, width: int) -> str:
        """The attention kernel a CPU training step of this batch width uses."""
        return "eager" if width <= self.cpu_eager_attention_max_width else "sdpa"
