"""Memory of one training step, by part: arithmetic on what applying the method fixed (`_Applied`) and
the model's sizes (`_Shape`), for a batch, length, precision, optimizer and device count.

`memory_bytes` is what one training step holds at its peak, by part:
    weights     every parameter and buffer in the dtype it is loaded in (bf16 for a frozen base on a GPU
                and on a CPU computing in bf16, float32 on other CPUs; float32 when the method trains
                the base's own weights or modules injected beside them (selective and bottleneck
                methods); peft adapters float32). With
                `quantization` the linear layers inside the transformer blocks are 4-bit NF4 with
                double quantisation (0.5 byte/param + 1 byte per 64-block absmax + 4 bytes per 16384)
                or LLM.int8 (1 byte/param + a float32 scale per output row); the rest stays unquantised.
    gradients   one gradient per trainable parameter, in the parameter's dtype (4 bytes for adapters).
    optimizer   AdamW: two states per trainable parameter in its dtype (8 bytes for float32);
                8-bit AdamW: 2 bytes + block absmax (tensors under 4096 elements keep 32-bit states);
                SGD with momentum: one state. (The per-tensor step counters are ignored.)
    activations tensors saved for the backward pass, per token per layer (see `ACTIVATIONS` below),
                for every row at full `seq_len` (real batches padded to their longest row use less).
    temporary   buffers alive at the backward peak that are not saved activations: the logits kept
                by the step and the float32 gradients of the loss over the vocabulary.
    overhead    the CUDA context and allocator slack on a GPU (`CUDA_CONTEXT_BYTES`); on a CPU the Python
                process with torch/transformers/peft imported (`CPU_PROCESS_BYTES`) and what the C
                allocator's heap keeps of freed activations (`CPU_HEAP_KEPT` × activations, see there).
    total       the sum of the parts above.

ACTIVATIONS (bytes per token, per transformer block the gradient flows through; c = bytes of the
compute dtype: 2 under bf16/fp16 autocast, 4 in float32; q = heads × head_dim; s = sequence length):
    norms        4·h per normalisation layer (RMSNorm/LayerNorm keep their input in float32)
    attention    fused SDPA: 4·q·c + 4·heads (q, k, v — k/v repeated to all heads when grouped-query
                 attention meets a padding mask — its output, a float32 logsumexp per head); eager
                 attention adds heads·s·2c for its probabilities; SDPA with attention dropout on a CPU
                 falls back to the math path, in float32: 3·q·4 + heads·s·12
    feed-forward 3·i·c for gated MLPs (gate, act(gate), up), 4·i·c for GPT-2's gelu_new (a chain of
                 elementwise ops), 1·i·c for a single native activation
    dropout      h per active hidden dropout: its mask (1 byte on CUDA, the input's dtype on a CPU)
    method       inputs of trainable linear layers (shared inputs once, e.g. q/k/v), LoRA's dropout mask
                 (bool, 1 byte: torch's on CUDA, training.bits_dropout's on a CPU) and rank-r intermediate,
                 DoRA's base and LoRA outputs, IA3's scaled tensor, VeRA's
                 rank-r and output vectors, bottleneck inputs, LLaMA-Adapter's query and scores, a
                 mixture of LoRA experts' input, rank-r intermediates of every expert and gates;
                 ladder side-tuning saves nothing in the blocks, its side network per block the
                 block's output (the rung's input), the rung and the side MLP's intermediates
  and per step, not per token: the padding mask as an additive float mask in every fused SDPA call
  (batch·s·s·c per block); under autocast a bf16 copy of every float32 linear weight in those blocks
  and of the output head (a CPU run keeps its base in float32; full fine-tuning on a GPU too); LoHa
  and LoKr their full out×in delta weight per adapted layer.
  The gradient flows through the blocks from the first one holding a trainable parameter upward (all
  of them when something trains before the blocks, such as a soft prompt or an embedding); blocks
  below it save nothing. After the blocks: 4·h for the final norm and, for a causal LM, the head over the
  vocabulary V — on the labelled tokens only where the engine's loss projects only those and the data's
  labelled share is known (`labelled_share`). A frozen head (fast_loss.chunks_head) keeps c·h per projected
  token (the gradient for the hidden states), and one chunk's float32 logits and log-probabilities are
  `temporary`; a head that trains (or the model's own loss) keeps a 4·V float32 log-softmax per token,
  its logits and float32 gradients in `temporary`.
  With gradient checkpointing each block keeps only its input (h in the residual dtype); the step then
  peaks either at the head (what it keeps and its temporaries alive) or while a block is recomputed (its
  activations alive, the head's freed), whichever is larger. Soft prompts add their
  virtual tokens to every row; prefix methods lengthen keys and values.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.defaults import CPU_EAGER_MAX_WIDTH
from adapter_studio.engine.estimate.meta_models import _Applied, _Base, _inner, _linear_like, _Shape
from adapter_studio.engine.models.info import FINAL_NORM_NAMES
from adapter_studio.engine.training.fast_loss import chunk_rows

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.methods.base import MethodSpec
    from adapter_studio.engine.models.info import ModelInfo
    from adapter_studio.engine.spec import TrainingSpec

MiB = 2**20
CUDA_CONTEXT_BYTES = 500 * MiB  # CUDA context + cuBLAS/cuDNN handles, outside torch's allocator stats
CPU_PROCESS_BYTES = 512 * MiB  # Python + torch + transformers + peft imported: ~410 MiB RSS measured, + slack
# A CPU step's activations come from glibc's heap, which keeps what is freed and fragments as batch widths
# change, so the resident set passes the live tensors' peak by about the activations again (LoRA on every
# linear layer, 4 packed rows of 256 tokens, bf16; the live peak is the first step's): the Llama-3.2-1B shape
# 6.98 GiB over 6 steps and 7.32 at step 14 (levelling off after step 10) against 5.13 live and 2.22 of
# activations; SmolLM2-135M's shape 2.80 GiB over 12 steps and 3.05 at step 40 against 1.80 live and 0.98.
# With this term the estimate reads 7.35 and 2.78 GiB (benchmarks/scale.py --sides engine). A fixed mmap
# threshold (MALLOC_MMAP_THRESHOLD_=1048576) keeps the 1B shape at 5.26 GiB, at about 18 % of its speed
# (the page faults of fresh mappings), so the engine leaves glibc's default alone.
CPU_HEAP_KEPT = 1.0
MEMORY_PARTS = ("weights", "gradients", "optimizer", "activations", "temporary", "overhead")
# Linear layers that read the same input tensor (saved once when their weights train).
SHARED_INPUT = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "query": "qkv", "key": "qkv", "value": "qkv",
                "gate_proj": "mlp_in", "up_proj": "mlp_in", "w1": "mlp_in", "w3": "mlp_in"}


# --- activations ------------------------------------------------------------------------------------


def _virtual_tokens(method: MethodSpec) -> tuple[int, int]:
    """(tokens added to every row, tokens added to keys/values only)."""
    n = int(getattr(method, "num_virtual_tokens", 0) or 0)
    if method.name in ("prompt_tuning", "p_tuning"):
        return n, 0
    if method.name in ("prefix_tuning", "p_tuning_v2", "mam", "unipelt"):
        return 0, n
    return 0, 0


def _activations(applied: _Applied, shape: _Shape, method: MethodSpec, *, batch: int, seq_len: int, compute: int,
                 residual: int, device: str, checkpointing: bool, task: str,
                 projected_share: float = 1.0, chunked_head: bool = False) -> dict[str, int]:
    extra_tokens, extra_kv = _virtual_tokens(method)
    s = seq_len + extra_tokens
    s_kv = s + extra_kv
    tokens = batch * s
    c = compute
    h, q = shape.hidden, shape.q_dim
    cuda = device == "cuda"
    per_block = applied.per_block[c]  # (bytes per token, bytes per step, float32 linear weights) per block

    flow = shape.norms * (4 * h + 4)
    # A CPU run switches SDPA to eager attention for short batches (adapter_studio.engine.defaults.CPU_EAGER_MAX_WIDTH).
    eager = shape.eager or (not cuda and task == "causal_lm" and shape.sdpa and s <= CPU_EAGER_MAX_WIDTH)
    math_path = shape.attention_dropout > 0 and not cuda and not eager
    materialised = eager or math_path
    if math_path:  # SDPA with dropout on a CPU: the math fallback, in float32 even under autocast
        flow += 3 * q * 4 * s_kv / s + shape.heads * s_kv * 12  # q, k, v; probabilities, mask, dropped
    else:  # fused SDPA keeps q, k, v, its output and a logsumexp; eager attention its probabilities too
        flow += (2 * q + 2 * q * s_kv / s) * c + 4 * shape.heads
        if eager:
            flow += shape.heads * s_kv * (2 * c + (0 if shape.attention_dropout <= 0 else 1 if cuda else c))
    flow += shape.mlp_factor * shape.intermediate * c
    flow += shape.hidden_dropouts * h * (1 if cuda else c)  # dropout masks: bool on CUDA, the input's dtype on CPU
    # The padding mask becomes an additive float mask in every fused SDPA call, which keeps it.
    mask_per_block = 0 if materialised else batch * s * s_kv * c
    # Under autocast, float32 weights are cast to bf16 for every matmul and the copies are kept too.
    copies = 2 if c == 2 else 0

    first = applied.first_flowing
    if checkpointing:
        first = 0  # enable_input_require_grads: every block keeps its input
    flowing = range(first, len(per_block))
    per_token = 0.0
    per_step = 0.0
    recompute = 0.0  # checkpointed: one block's activations while it is recomputed in the backward
    if checkpointing and flowing:
        per_token += len(flowing) * h * residual
        worst = max(flowing, key=lambda i: per_block[i][0])
        recompute = tokens * (flow + per_block[worst][0]) + mask_per_block + copies * per_block[worst][2]
        per_step += sum(per_block[i][1] for i in flowing)
    else:
        for i in flowing:
            per_token += flow + per_block[i][0]
            per_step += per_block[i][1] + mask_per_block + copies * per_block[i][2]
    per_token += applied.side_per_token.get(c, 0.0)  # a side network beside the blocks (side-tuning)
    temporary = 0.0
    projected = 0.0
    head_kept = 0.0  # what the head keeps for the backward pass
    if task == "causal_lm":
        per_token += 4 * h  # final norm
        projected = tokens * projected_share  # positions the head projects (labelled only: fast_loss)
        if chunked_head:
            # fast_loss projects a chunk at a time and keeps only the gradient for the hidden states; one
            # chunk's float32 log-probabilities and the float32 logits they come from are alive at once
            head_kept = projected * h * c
            temporary = min(projected, chunk_rows(shape.vocab, device)) * shape.vocab * 8
        else:
            head_kept = projected * 4 * shape.vocab  # float32 log-softmax over the vocabulary
            temporary = projected * shape.vocab * (c + 8)  # the step's logits; float32 loss gradients
        per_step += head_kept
        if applied.head_trains:
            per_token += h * c
    else:
        per_token += 4 * h
    per_step += copies * applied.head_fp32_elements
    saved = tokens * per_token + per_step
    # Checkpointed, the step peaks either at the head (what it keeps and its temporaries alive) or later in a
    # block's recompute (those freed by then): whichever is larger, not both (no recompute: 0).
    if recompute > head_kept + temporary:
        saved, temporary = saved - head_kept + recompute, 0.0
    return {"saved": int(saved), "temporary": int(temporary)}


# --- which blocks save, and what the method adds in each --------------------------------------------


def _is_head(name: str) -> bool:
    leaf = name.split(".")
    return any(part in ("lm_head", "embed_out", "score", "classifier") for part in leaf)


def _first_flowing_block(model: Any, info: ModelInfo, count: int, trainable: set[int]) -> int:
    """Index of the lowest block the gradient reaches; 0 if anything before the blocks trains."""
    inner = _inner(model)
    encoder = getattr(model, "prompt_encoder", None) if inner is not model else None
    if encoder is not None and any(id(p) in trainable for p in encoder.parameters()):
        return 0  # a soft prompt enters below the first block
    prefix = (info.layers_path or "") + "."
    first = count
    for name, p in inner.named_parameters():
        if id(p) not in trainable:
            continue
        if name.startswith(prefix):
            index = name[len(prefix):].split(".", 1)[0]
            if index.isdigit():
                first = min(first, int(index))
        elif not _is_head(name) and not _after_blocks(name, info):
            return 0  # embeddings and anything else before the blocks
    return first


def _after_blocks(name: str, info: ModelInfo) -> bool:
    base = info.layers_path.rsplit(".", 1)[0] + "." if "." in info.layers_path else ""
    rest = name[len(base):] if name.startswith(base) else name
    return rest.split(".")[0] in (*FINAL_NORM_NAMES, "pooler") or \
        name.startswith(("bert.pooler.", "pooler.", "side_network."))  # a side network joins after the blocks


def _method_bytes(block: Any, c: int, trainable: set[int], mask_bytes: int) -> tuple[float, float, int]:
    """What one block saves because of what trains in it: (bytes per token, bytes per step), and the
    number of float32 linear weights in it (autocast keeps a bf16 copy of each)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    per_token, per_step, fp32_weights = 0.0, 0.0, 0
    shared: set[tuple[str, str]] = set()
    skip: tuple[str, ...] = ()
    for name, m in block.named_modules():
        if skip and name.startswith(skip):
            continue
        kind = type(m).__name__
        weight = m._parameters.get("weight")
        if weight is not None and weight.element_size() == 4 and _linear_like(m):
            fp32_weights += weight.numel()
        if isinstance(m, BaseTunerLayer):
            skip += (name + ".",)
            fp32_weights += _fp32_linear_numel(m)
            if any(id(p) in trainable for p in m.parameters()):
                t, st = _peft_layer_bytes(m, c, mask_bytes)
                per_token += t
                per_step += st
            continue
        if kind == "MixtureLoRALinear":  # its input, x·Aₑ for every expert, the gates (engine.methods.mixture)
            skip += (name + ".",)
            fp32_weights += _fp32_linear_numel(m)
            experts, r, in_f = m.lora_A.shape
            per_token += (in_f + experts * r + experts) * c
            continue
        if kind == "AdaptedAttention":  # LLaMA-Adapter: the query again, scores over the adapter tokens
            heads = int(getattr(m.model.config, "num_attention_heads", 1))
            per_token += 2 * int(m.model.config.hidden_size) * c + heads * int(m.adapter_len) * (4 + c)
            continue
        if weight is None or id(weight) not in trainable:
            continue
        leaf = name.rsplit(".", 1)[-1]
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if _linear_like(m):
            key = (parent, SHARED_INPUT.get(leaf, leaf))
            if key not in shared:
                shared.add(key)
                per_token += (getattr(m, "in_features", None) or weight.shape[0]) * c
        elif "norm" in kind.lower():
            per_token += weight.shape[-1] * 4  # the normalised input, float32
    return per_token, per_step, fp32_weights


def _fp32_linear_numel(module: Any) -> int:
    """Weights of the float32 linear layers inside `module` (autocast keeps a 16-bit copy of each)."""
    return sum(x.weight.numel() for x in module.modules() if _linear_like(x) and x.weight.element_size() == 4)


def _peft_layer_bytes(m: Any, c: int, mask_bytes: int) -> tuple[float, float]:
    """Saved activations of one peft-adapted layer (beyond what the frozen base saves)."""
    base = m.get_base_layer()
    in_f = getattr(m, "in_features", None) or getattr(base, "in_features", 0) or 0
    out_f = getattr(m, "out_features", None) or getattr(base, "out_features", 0) or 0
    per_token, per_step = 0.0, 0.0
    if hasattr(m, "lora_A") and "default" in m.lora_A:  # LoRA, DoRA, rsLoRA, LoRA+, AdaLoRA
        r = m.r.get("default", 0) if isinstance(m.r, dict) else m.r
        drop = m.lora_dropout["default"] if hasattr(m, "lora_dropout") else None
        per_token += in_f * c + r * c
        if drop is not None and getattr(drop, "p", 0) > 0:
            per_token += in_f * mask_bytes  # the dropout mask
        if hasattr(m, "lora_E"):  # AdaLoRA: x·A, then ·E
            per_token += r * c
        if getattr(m, "use_dora", {}).get("default", False):
            per_token += 2 * out_f * c  # base output and LoRA output, scaled by the magnitude
    elif hasattr(m, "ia3_l"):
        per_token += (in_f if m.is_feedforward else out_f) * c
    elif hasattr(m, "vera_lambda_d"):
        r = m.vera_lambda_d["default"].shape[0]
        per_token += (r + out_f) * c
    elif hasattr(m, "hada_w1_a") or hasattr(m, "lokr_w1") or hasattr(m, "lokr_w1_a"):
        per_token += in_f * c
        per_step += in_f * out_f * c  # the full delta weight, in the compute dtype
    elif hasattr(m, "oft_R"):
        per_token += 2 * in_f * c  # input and rotated input
    else:  # other peft layers: their input
        per_token += in_f * c
    return per_token, per_step


# --- precision and devices --------------------------------------------------------------------------


def _precision(choice: str, device: str, dtype: torch.dtype) -> str:
    import torch
    from adapter_studio.engine.training.devices import pick_precision

    if choice != "auto":
        return choice
    if device == "cuda" and not torch.cuda.is_available():
        return "bf16"  # estimating for a GPU this machine lacks: the usual modern card
    return pick_precision("auto", device)


def _fsdp_world(training: TrainingSpec, device: str) -> int:
    """How many GPUs an FSDP run shards over (1: not sharded; one device trains in-process)."""
    return training.devices if device == "cuda" and training.distributed == "fsdp" else 1


def _per_process(memory: dict[str, int], applied: _Applied, base: _Base, training: TrainingSpec, device: str) -> int:
    """Turn one process's memory into one device's for a run on `training.devices` devices (in place);
    returns how many processes share the machine's memory (CPU processes do, GPUs do not)."""
    n = training.devices
    if n <= 1:
        return 1
    if device != "cuda" or training.distributed == "ddp":
        # DDP keeps a full copy per device and all-reduces gradients through buckets of their size.
        memory["temporary"] += memory["gradients"]
        return n if device != "cuda" else 1
    # ZeRO-2 shards gradients and optimizer state; FSDP also the weights, and gathers one block's
    # weights (in the compute dtype, the next one prefetched) at a time.
    for part in ("gradients", "optimizer") + (("weights",) if training.distributed == "fsdp" else ()):
        memory[part] = math.ceil(memory[part] / n)
    if training.distributed == "fsdp":
        layers = max(1, base.info.num_layers)
        block = max(0, applied.total_params - base.shape.vocab * base.shape.hidden) / layers
        memory["temporary"] += int(2 * 2 * block)
    return 1
