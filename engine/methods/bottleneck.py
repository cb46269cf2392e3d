"""Bottleneck adapters (Houlsby, Pfeiffer, Parallel) and the MAM adapter, as module injection.

peft has no bottleneck adapters and the AdapterHub `adapters` package pins transformers 4.x, so the
modules are written here. Each chosen submodule of every block is replaced by a small wrapper that
holds the original as `base_layer` and the adapter as `adapter` (so trained names read like
`model.layers.0.mlp.adapter.down.weight`). Up projections start at zero: the wrapped model's output
is exactly the base model's until the first optimizer step.

Where the adapters go (per block, first path that exists):
- after attention: the attention output projection (`self_attn.o_proj`, `attn.c_proj`, and in BERT
  `attention.output.dense`, i.e. before its dropout, residual add and LayerNorm);
- after the feed-forward block: `mlp` in decoders; `output.dense` in BERT (again before the norm);
- beside the feed-forward block (parallel): `mlp` gets `mlp(x) + s·adapter(x)`; in BERT the FFN's
  input is BertOutput's `input_tensor`, so BertOutput is wrapped and the term joins before the norm.

Saved as `bottleneck_adapter.safetensors` (adapter tensors plus a classifier head, names relative to
the transformers model) and `bottleneck_config.json`; MAM adds peft's prefix files in the same folder.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods.base import MethodContext, MethodSpec, advanced, freeze_all, subclass_named
from adapter_studio.engine.methods.peft_base import (
    PREFIX_INIT_TEXT,
    keep_generation_cache,
    peft_task_type,
    seed_prefix_from_text,
)
from adapter_studio.engine.methods.selective import unfreeze_head
from adapter_studio.engine.models.construction import model_construction
from pydantic import Field

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.models.info import ModelInfo

WEIGHTS = "bottleneck_adapter.safetensors"
CONFIG = "bottleneck_config.json"
FORMAT_VERSION = 1

# Candidate paths inside one block, first match wins (Llama/Qwen2/Mistral, GPT-2, BERT, others).
ATTENTION_OUTPUT = ("self_attn.o_proj", "attn.c_proj", "attention.output.dense", "self_attention.dense",
                    "self_attn.out_proj", "attn.out_proj")
FFN_OUTPUT = ("mlp", "feed_forward", "output.dense")
FFN_PARALLEL = ("mlp", "feed_forward", "output")  # "output": BERT-style dense → dropout → LayerNorm(h + x)


def bottleneck_size(hidden_size: int, reduction_factor: int) -> int:
    return max(1, hidden_size // reduction_factor)


@functools.cache
def _modules() -> Any:
    """The nn.Module classes, built on first use so importing the method library stays torch-free."""
    from types import SimpleNamespace

    import torch
    from torch import nn

    activations = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}

    class Bottleneck(nn.Module):
        """up(act(down(x))), with `up` zero-initialised so it adds nothing at first."""

        def __init__(self, hidden: int, size: int, non_linearity: str, like: torch.Tensor) -> None:
            super().__init__()
            kw = {"device": like.device, "dtype": like.dtype}
            self.down = nn.Linear(hidden, size, **kw)  # default Kaiming-uniform weight
            self.act = activations[non_linearity]()
            self.up = nn.Linear(size, hidden, **kw)
            with torch.no_grad():
                self.down.bias.zero_()
                self.up.weight.zero_()
                self.up.bias.zero_()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.up(self.act(self.down(x)))

    class AdapterWrapper(nn.Module):
        def __init__(self, base_layer: nn.Module, adapter: Bottleneck, scaling: float = 1.0) -> None:
            super().__init__()
            self.base_layer = base_layer
            self.adapter = adapter
            self.scaling = scaling

    class Serial(AdapterWrapper):
        """Houlsby/Pfeiffer: h + adapter(h) on the sublayer's output, before the block's residual."""

        def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            h = self.base_layer(*args, **kwargs)
            return h + self.adapter(h)

    class Parallel(AdapterWrapper):
        """He et al.: ffn(x) + s·adapter(x), the adapter reading the feed-forward block's input."""

        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            return self.base_layer(x, *args, **kwargs) + self.scaling * self.adapter(x)

    class ParallelBeforeNorm(AdapterWrapper):
        """BERT's FFN output computes LayerNorm(dropout(dense(h)) + x); the adapter term joins before the norm."""

        def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
            out = self.base_layer
            h = out.dropout(out.dense(hidden_states)) + self.scaling * self.adapter(input_tensor)
            return out.LayerNorm(h + input_tensor)

    return SimpleNamespace(Bottleneck=Bottleneck, AdapterWrapper=AdapterWrapper, Serial=Serial,
                           Parallel=Parallel, ParallelBeforeNorm=ParallelBeforeNorm)


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (MAM), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _find(block: torch.nn.Module, candidates: tuple[str, ...]) -> str | None:
    for path in candidates:
        try:
            block.get_submodule(path)
            return path
        except AttributeError:
            continue
    return None


def adapter_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Every injected adapter's parameters, named relative to the transformers model."""
    wrapper = _modules().AdapterWrapper
    found, seen = {}, set()
    for name, module in _inner(model).named_modules():
        if isinstance(module, wrapper):
            for pname, p in module.adapter.named_parameters():
                if id(p) not in seen:  # a tensor the adapters share (Compacter's rules) under its first name
                    seen.add(id(p))
                    found[f"{name}.adapter.{pname}"] = p
    return found


class BottleneckMethod(MethodSpec):
    """Shared fields, injection, saving. Subclasses say where the adapters go (`positions`)."""

    family = "bottleneck adapters"
    mergeable = False  # a non-linear module cannot fold into a linear weight; base merge refuses
    default_lr = 1e-3
    supported_models = "Llama, Mistral, Qwen2, GPT-2 and BERT-style models"
    adapter_format = "bottleneck"
    positions: ClassVar[tuple[str, ...]] = ()  # of "attention", "ffn", "parallel_ffn"

    reduction_factor: int = Field(
        16, ge=1, le=4096, description="Bottleneck width is the hidden size divided by this (at least 1)."
    )
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = Field(
        "relu", description="Activation between the down and up projections.", json_schema_extra=advanced()
    )

    def _scaling(self) -> float:
        return 1.0

    def new_adapter(self, hidden: int, size: int, like: torch.Tensor, shared: dict[str, Any]) -> torch.nn.Module:
        """One adapter module, in `like`'s dtype and device; `shared` holds what the adapters of one model
        share (empty at the first; Compacter keeps its rules there)."""
        return _modules().Bottleneck(hidden, size, self.non_linearity, like)

    def inject(self, model: torch.nn.Module, info: ModelInfo) -> list[str]:
        """Wrap the chosen submodules of every block; return the wrapped paths."""
        mods = _modules()
        if adapter_parameters(model):
            raise UserError("this model already has bottleneck adapters", where="method.name")
        blocks = model.get_submodule(info.layers_path) if info.layers_path else None
        if blocks is None or len(blocks) == 0:  # type: ignore[arg-type]
            raise UserError(f"{self.title}: no transformer blocks found in this {info.model_type} model",
                            where="method.name", fix="pick LoRA for this model")
        size = bottleneck_size(info.hidden_size, self.reduction_factor)
        candidates = {"attention": ATTENTION_OUTPUT, "ffn": FFN_OUTPUT, "parallel_ffn": FFN_PARALLEL}
        injected: list[str] = []
        shared: dict[str, Any] = {}
        for i, block in enumerate(blocks):  # type: ignore[arg-type]
            for position in self.positions:
                path = _find(block, candidates[position])
                if path is None:
                    raise UserError(f"{self.title}: cannot find the {position} output in a "
                                    f"{info.model_type} block", where="method.name", fix="pick LoRA for this model")
                base = block.get_submodule(path)
                like = next(base.parameters())  # adapter dtype and device follow the base weights
                adapter = self.new_adapter(info.hidden_size, size, like, shared)
                if position == "parallel_ffn" and path == "output":
                    wrapper = mods.ParallelBeforeNorm(base, adapter, self._scaling())
                elif position == "parallel_ffn":
                    wrapper = mods.Parallel(base, adapter, self._scaling())
                else:
                    wrapper = mods.Serial(base, adapter)
                block.set_submodule(path, wrapper)
                injected.append(f"{info.layers_path}.{i}.{path}")
        return injected

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        freeze_all(model)
        self.inject(model, ctx.info)
        for p in adapter_parameters(model).values():
            p.requires_grad_(True)
        unfreeze_head(model, ctx.info)
        return model

    def saved_parameters(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        """Adapters plus whatever else trains (a classifier head), named relative to the transformers model."""
        params = adapter_parameters(model)
        params.update({n: p for n, p in model.named_parameters() if p.requires_grad and n not in params})
        return params

    def save_adapter(self, model: torch.nn.Module, out_dir: str) -> None:
        from adapter_studio.engine.models.info import find_layers_path
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        inner = _inner(model)
        tensors = {n: p.detach().contiguous().cpu() for n, p in self.saved_parameters(model).items()}
        save_file(tensors, str(out / WEIGHTS))
        layers_path = find_layers_path(inner)
        config = inner.config
        hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
        wrapper = _modules().AdapterWrapper
        (out / CONFIG).write_text(json.dumps({
            "format": "bottleneck",
            "format_version": FORMAT_VERSION,
            "method": self.model_dump(),
            "model_type": config.model_type,
            "architecture": type(inner).__name__,
            "hidden_size": hidden,
            "bottleneck_size": bottleneck_size(hidden, self.reduction_factor),
            "layers_path": layers_path,
            "injected": [n for n, m in inner.named_modules() if isinstance(m, wrapper)],
            "peft_prefix": isinstance(self, PrefixBottleneck),
        }, indent=2))


class AdapterH(BottleneckMethod):
    """Houlsby et al. (2019): a bottleneck after attention and after the feed-forward block."""

    name: Literal["adapter_h"] = "adapter_h"
    title = "Adapter (Houlsby)"
    description = "Small bottleneck layers after the attention and the feed-forward output of every block."
    typical_share = "≈ 1–2%"
    positions = ("attention", "ffn")


class AdapterP(BottleneckMethod):
    """Pfeiffer et al. (2020): one bottleneck per block, after the feed-forward block."""

    name: Literal["adapter_p"] = "adapter_p"
    title = "Adapter (Pfeiffer)"
    description = "One small bottleneck layer after the feed-forward output of every block."
    typical_share = "≈ 0.5–1%"
    positions = ("ffn",)


class ParallelAdapter(BottleneckMethod):
    """He et al. (2022): a scaled bottleneck beside the feed-forward block, reading its input."""

    name: Literal["parallel_adapter"] = "parallel_adapter"
    title = "Parallel adapter"
    description = "A small bottleneck beside each feed-forward block; its scaled output is added to the block's."
    typical_share = "≈ 0.5–1%"
    positions = ("parallel_ffn",)

    scaling: float = Field(
        4.0, gt=0.0, le=100.0, description="Multiplier on the adapter's output (4, as in He et al. 2022)."
    )

    def _scaling(self) -> float:
        return self.scaling


class PrefixBottleneck(BottleneckMethod):
    """Bottleneck adapters plus peft's prefix tuning without its MLP (prefix_projection=False, as P-Tuning v2),
    the hybrids MAM and UniPELT: what trains is what is saved, and the trainable count is exact."""

    family = "hybrid"
    supports_gradient_checkpointing = False  # prefix tuning does not work with it
    # The prefix rides on past_key_values, which BERT-style encoders no longer take in transformers 5.
    supports_classification = False

    num_virtual_tokens: int = Field(30, ge=1, le=512, description="Trained prefix length per layer.")
    init_text: str = Field(PREFIX_INIT_TEXT, description="Text whose keys and values start the prefix: the model "
                           "starts out reading it before every input (empty: random start).",
                           json_schema_extra=advanced())  # fmt: skip

    def prefix_config(self, info: ModelInfo) -> Any:
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(task_type=peft_task_type(info), num_virtual_tokens=self.num_virtual_tokens,
                                  prefix_projection=False)

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        from peft import get_peft_model

        model = super().apply(model, ctx)
        peft_model = get_peft_model(model, self.prefix_config(ctx.info))
        for p in adapter_parameters(peft_model).values():  # wrapping for prompt learning froze them too
            p.requires_grad_(True)
        seed_prefix_from_text(peft_model, ctx.tokenizer, self.init_text)  # the adapters add nothing yet
        return keep_generation_cache(peft_model)

    def saved_parameters(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        return adapter_parameters(model)  # the prefix and the head go in peft's own files

    def save_adapter(self, model: torch.nn.Module, out_dir: str) -> None:
        model.save_pretrained(out_dir)  # type: ignore[operator]
        super().save_adapter(model, out_dir)


class MAMAdapter(PrefixBottleneck, ParallelAdapter):
    """He et al. (2022) "Mix-And-Match": prefix tuning on attention plus a parallel adapter on the FFN."""

    name: Literal["mam"] = "mam"  # type: ignore[assignment]
    title = "MAM adapter"
    description = "Prefix tuning on every attention layer plus a parallel adapter beside every feed-forward block."
    typical_share = "≈ 1%"

    num_virtual_tokens: int = Field(30, ge=1, le=512, description="Trained prefix length per layer (30 in the paper).")


BOTTLENECK_CLASSES: tuple[type[BottleneckMethod], ...] = (AdapterH, AdapterP, ParallelAdapter, MAMAdapter)


def bottleneck_class(name: str) -> type[BottleneckMethod]:
    """The bottleneck method class named `name`: those declared here and their subclasses elsewhere (the
    package's __init__, which Python runs before this module, imports them all)."""
    cls = subclass_named(BottleneckMethod, name)
    if cls is None:
        raise UserError(f"'{name}' is not a bottleneck adapter this version knows", where="adapter",
                        fix="load it with the version of Adapter Studio that trained it")  # fmt: skip
    return cls  # type: ignore[return-value]


def bottleneck_param_count(info: ModelInfo, spec: BottleneckMethod, kv_dim: int | None = None) -> int:
    """Trainable parameters the method adds, without a classifier head.

    Each adapter has 2·h·b weights and b + h biases. MAM adds the prefix: virtual tokens × layers ×
    2 (keys and values) × kv_dim, where kv_dim is num_key_value_heads × head_dim (hidden size if None).
    """
    if hasattr(spec, "added_parameters"):  # its own formula (Compacter, UniPELT)
        return int(spec.added_parameters(info, kv_dim or info.hidden_size))
    h = info.hidden_size
    b = bottleneck_size(h, spec.reduction_factor)
    count = info.num_layers * len(spec.positions) * (2 * h * b + b + h)
    if isinstance(spec, PrefixBottleneck):
        count += spec.num_virtual_tokens * info.num_layers * 2 * (kv_dim or h)
    return count


def load_bottleneck_adapter(model: torch.nn.Module, adapter_dir: str | Path) -> torch.nn.Module:
    """Re-inject the saved adapters into a fresh base model and load their weights (frozen)."""
    import torch
    from adapter_studio.engine.models.info import describe_model
    from safetensors.torch import load_file

    folder = Path(adapter_dir)
    if not (folder / CONFIG).is_file():
        raise UserError(f"{folder} holds no {CONFIG}", where="adapter", fix="pick a bottleneck adapter folder")
    saved = json.loads((folder / CONFIG).read_text())
    spec = bottleneck_class(saved["method"]["name"]).model_validate(saved["method"])
    info = describe_model(model)
    if (info.model_type, info.hidden_size) != (saved["model_type"], saved["hidden_size"]):
        raise UserError(
            f"this adapter was trained on a {saved['model_type']} model of width {saved['hidden_size']}, "
            f"not a {info.model_type} of width {info.hidden_size}", where="adapter", fix="load it onto its base model")
    if spec.inject(model, info) != saved["injected"]:
        raise UserError("the base model's blocks do not match the adapter's", where="adapter",
                        fix="load it onto the base model it was trained on")
    state = load_file(str(folder / WEIGHTS))
    params = dict(model.named_parameters())
    missing = set(adapter_parameters(model)) - set(state)
    unknown = set(state) - set(params)
    if missing or unknown:
        raise UserError(f"adapter weights do not fit: missing {sorted(missing)[:3]}, unknown {sorted(unknown)[:3]}",
                        where="adapter")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
    freeze_all(model)
    if saved.get("peft_prefix"):
        from peft import PeftModel

        with model_construction():  # peft makes its modules in the process's default dtype
            model = keep_generation_cache(PeftModel.from_pretrained(model, str(folder)))
        freeze_all(model)  # peft leaves the loaded prefix trainable even in inference mode
    return model
