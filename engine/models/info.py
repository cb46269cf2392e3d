"""What the engine needs to know about a model's structure, read off the module tree.

Works on models built on the meta device too, so estimates and defaults never load weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Leaf names of the attention projections and feed-forward layers across the common families.
ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "c_attn", "query", "key", "value",
                   "query_key_value", "Wqkv", "out_proj", "dense")
MLP_NAMES = ("gate_proj", "up_proj", "down_proj", "gate_up_proj", "c_fc", "fc1", "fc2", "w1", "w2", "w3",
             "dense_h_to_4h", "dense_4h_to_h")
# Per model family: the default LoRA targets (queries and values, as in the LoRA paper).
QUERY_VALUE = {"q_proj": "v_proj", "query": "value", "c_attn": "c_attn", "query_key_value": "query_key_value",
               "qkv_proj": "qkv_proj", "Wqkv": "Wqkv"}
HEAD_NAMES = ("lm_head", "classifier", "score", "embed_out", "output")
# Names of the norm after the last block (Llama/Qwen2/Mistral, GPT-2, Phi/Falcon, OPT-style).
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm")


@dataclass
class ModelInfo:
    """The facts about a model that method defaults, checks and estimates depend on."""

    model_type: str
    architecture: str
    task: str  # "causal_lm" or "classification"
    num_layers: int
    hidden_size: int
    total_params: int
    linear_names: list[str] = field(default_factory=list)  # distinct leaf names of linear layers
    conv1d_names: list[str] = field(default_factory=list)  # those that are transformers' Conv1D (GPT-2)
    attention_targets: list[str] = field(default_factory=list)
    mlp_targets: list[str] = field(default_factory=list)
    query_value_targets: list[str] = field(default_factory=list)
    head_names: list[str] = field(default_factory=list)
    has_bias: bool = False
    tied_embeddings: bool = False
    num_labels: int | None = None
    layers_path: str = ""  # dotted path of the ModuleList holding the transformer blocks
    norm_names: list[str] = field(default_factory=list)  # distinct leaf names of the blocks' norm layers
    linear_widths: list[int] = field(default_factory=list)  # distinct input/output widths of the blocks' linears
    embedding_names: list[str] = field(default_factory=list)  # leaf names of its embeddings (embed_tokens, wte)

    @property
    def all_linear_targets(self) -> list[str]:
        return [n for n in self.linear_names if n not in self.head_names]


def _linear_types() -> tuple[type, ...]:
    import torch
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, Conv1D)


def find_layers_path(model: torch.nn.Module) -> str:
    """Dotted path of the longest ModuleList of blocks (model.layers, transformer.h, encoder.layer)."""
    import torch

    best, best_len = "", 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > best_len and "." not in name.split(".")[-1]:
            best, best_len = name, len(module)
    return best


def describe_model(model: torch.nn.Module) -> ModelInfo:
    """Read a ModelInfo off a (possibly meta-device, possibly peft-wrapped) model."""
    import torch

    config = model.config
    linear_types = _linear_types()
    layers_path = find_layers_path(model)
    leaf_names: list[str] = []
    head_names: list[str] = []
    conv1d_names: list[str] = []
    norm_names: list[str] = []
    embedding_names: list[str] = []
    widths: set[int] = set()
    has_bias = any(n.endswith(".bias") for n, _ in model.named_parameters())
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) and name.split(".")[-1] not in embedding_names:
            embedding_names.append(name.split(".")[-1])
        if type(module).__name__.endswith(("LayerNorm", "RMSNorm")) and name.startswith(layers_path + "."):
            leaf = name.split(".")[-1]
            if leaf not in norm_names:
                norm_names.append(leaf)
        if isinstance(module, linear_types):
            leaf = name.split(".")[-1]
            in_blocks = name.startswith(layers_path + ".")
            if not in_blocks:
                if leaf in HEAD_NAMES or "classifier" in name or name.endswith("score"):
                    head_names.append(leaf)
                continue
            if leaf not in leaf_names:
                leaf_names.append(leaf)
            weight = getattr(module, "weight", None)
            if weight is not None and weight.dim() == 2:  # quantised layers keep packed weights: skip them
                widths.update(int(d) for d in weight.shape)
            if type(module).__name__ == "Conv1D" and leaf not in conv1d_names:
                conv1d_names.append(leaf)
    attention = [n for n in leaf_names if n in ATTENTION_NAMES]
    mlp = [n for n in leaf_names if n in MLP_NAMES]
    if config.model_type == "gpt2":
        attention = [n for n in leaf_names if n in ("c_attn", "c_proj")]
        mlp = [n for n in leaf_names if n in ("c_fc", "c_proj")]
    elif "dense" in leaf_names and "query" in leaf_names:
        # BERT-like encoders name both the attention output and the feed-forward output "dense".
        attention = [n for n in ("query", "key", "value", "dense") if n in leaf_names]
        mlp = [n for n in ("dense",) if n in leaf_names]
    qv: list[str] = []
    for q, v in QUERY_VALUE.items():
        if q in leaf_names:
            qv = sorted({q, v} & set(leaf_names))
            break
    task = "classification" if "SequenceClassification" in type(model).__name__ or _is_cls(config) else "causal_lm"
    arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
    return ModelInfo(
        model_type=config.model_type,
        architecture=type(model).__name__ if type(model).__name__ != "PeftModel" else arch,
        task=task,
        num_layers=int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0)),
        hidden_size=int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0)),
        total_params=sum(parameter_count(p) for p in model.parameters()),
        linear_names=leaf_names,
        conv1d_names=conv1d_names,
        attention_targets=attention,
        mlp_targets=mlp,
        query_value_targets=qv or attention[:2],
        head_names=sorted(set(head_names)),
        has_bias=has_bias,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        num_labels=getattr(config, "num_labels", None) if task == "classification" else None,
        layers_path=layers_path,
        norm_names=norm_names,
        linear_widths=sorted(widths),
        embedding_names=embedding_names,
    )


def _is_cls(config: object) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any("SequenceClassification" in a for a in archs)


def parameter_count(p: torch.Tensor) -> int:
    """A weight's elements as the model has them: bitsandbytes stores a 4-bit weight two to a byte (its
    `quant_state` keeps the real shape), so `numel()` would count half of them."""
    state = getattr(p, "quant_state", None)
    return int(math.prod(state.shape)) if state is not None else p.numel()
