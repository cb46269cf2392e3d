"""AdapterFusion (Pfeiffer et al., 2021): several finished bottleneck-adapter runs, trained on other tasks,
mixed per token by a learned attention; their adapters stay frozen, only the fusion layers (and a
classifier's head) train.

Where the runs' adapters sit (after attention and/or after the feed-forward block: Houlsby, Pfeiffer,
Compacter, Compacter++ — serial adapters, as in the paper), each place gets every run's adapter zᵢ = aᵢ(h)
and one fusion layer over them:

    h + Σᵢ softmax(q·kᵢ)·vᵢ,   q = W_Q·h,  kᵢ = W_K·zᵢ,  vᵢ = W_V·zᵢ

W_V starts as the identity and W_Q, W_K near zero, so the fused model starts as h + the mean of the
adapters and learns which adapter serves which token. The layers are h×h each (3·h² per place): far
more than one adapter, which is why the paper trains them at a low rate.

The runs are named in `method.runs` (the Runs page's Combine… → AdapterFusion fills it in). They must
be finished runs of one of those methods on this base model, with the same placement. A checkpoint
holds the fusion layers only (the adapters are read again from the runs); an export holds everything,
with the runs' method settings in `fused_methods.json`, so it loads without the run folders.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from adapter_studio.engine.errors import UserError, a_or_an
from adapter_studio.engine.methods.base import MethodSpec, freeze_all, subclass_named
from adapter_studio.engine.methods.bottleneck import (
    ATTENTION_OUTPUT,
    FFN_OUTPUT,
    _find,
    bottleneck_class,
    bottleneck_size,
)
from adapter_studio.engine.methods.injected import InjectedMethod
from adapter_studio.engine.methods.selective import ADAPTER_WEIGHTS, unfreeze_head
from pydantic import Field

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.methods.base import MethodContext
    from adapter_studio.engine.methods.bottleneck import BottleneckMethod
    from adapter_studio.engine.models.info import ModelInfo
    from adapter_studio.engine.spec import TrainingSpec

FUSABLE = ("adapter_h", "adapter_p", "compacter", "compacter_pp")  # serial adapters, as in the paper
FUSED_METHODS = "fused_methods.json"
PLACES = {"attention": ATTENTION_OUTPUT, "ffn": FFN_OUTPUT}


@functools.cache
def _modules() -> Any:
    """The fusion modules, built on first use so importing the method library stays torch-free."""
    from types import SimpleNamespace

    import torch
    from torch import nn

    class Fusion(nn.Module):
        def __init__(self, hidden: int, like: torch.Tensor) -> None:
            super().__init__()
            kw = {"device": like.device, "dtype": like.dtype}
            self.query = nn.Linear(hidden, hidden, **kw)
            self.key = nn.Linear(hidden, hidden, **kw)
            self.value = nn.Linear(hidden, hidden, **kw)
            if not like.is_meta:
                with torch.no_grad():
                    for layer in (self.query, self.key):
                        layer.weight.normal_(0.0, 0.02)
                    self.value.weight.copy_(torch.eye(hidden, **kw))
                    for layer in (self.query, self.key, self.value):
                        layer.bias.zero_()

        def forward(self, h: torch.Tensor, outs: torch.Tensor) -> torch.Tensor:
            """h (…, H); outs (…, N, H): the N adapters' outputs → (…, H)."""
            scores = (self.query(h).unsqueeze(-2) * self.key(outs)).sum(-1)  # (…, N)
            weights = torch.softmax(scores.float(), dim=-1).to(outs.dtype)
            return (weights.unsqueeze(-1) * self.value(outs)).sum(-2)

    class FusedSerial(nn.Module):
        """h + fusion(h, [a(h) for every adapter]) on the wrapped sublayer's output h."""

        def __init__(self, base_layer: nn.Module, adapters: nn.ModuleList, fusion: Fusion) -> None:
            super().__init__()
            self.base_layer = base_layer
            self.adapters = adapters
            self.fusion = fusion

        def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            h = self.base_layer(*args, **kwargs)
            outs = torch.stack([adapter(h) for adapter in self.adapters], dim=-2)
            return h + self.fusion(h, outs)

    return SimpleNamespace(Fusion=Fusion, FusedSerial=FusedSerial)


def _title(name: str) -> str:
    """A method's title by its name (the method registry imports this module, so it cannot be imported here)."""
    cls = subclass_named(MethodSpec, name)
    return cls.title if cls is not None else name


def _run_settings(run: Path) -> tuple[str, dict[str, Any]]:
    """A run's base model and method fields, from its spec.yaml (read here: engine.spec imports this package)."""
    import yaml
    from adapter_studio.engine.runs import require_run_folder

    require_run_folder(run, "method.runs", fix="pick run folders")
    file = run / "spec.yaml"
    saved = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    return str((saved.get("model") or {}).get("source")), dict(saved.get("method") or {})


def fused_methods(runs: list[str]) -> list[BottleneckMethod]:
    """The runs' bottleneck methods, checked: two or more finished runs of a serial adapter, one placement."""
    from adapter_studio.engine.training import checkpoints as ckpt

    if len(runs) < 2:
        raise UserError(
            f"AdapterFusion fuses two or more finished bottleneck-adapter runs; {len(runs) or 'none'} "
            f"{'is' if len(runs) == 1 else 'are'} listed",
            where="method.runs",
            fix="train Adapter (Pfeiffer) runs on other tasks, then select them on the Runs page and pick "
            "Combine… → AdapterFusion",
        )
    methods, bases = [], set()
    for run in runs:
        base, fields = _run_settings(Path(run))
        bases.add(base)
        name = str(fields.get("name"))
        if name not in FUSABLE:
            raise UserError(f"{Path(run).name} is {a_or_an(_title(name))} run; AdapterFusion fuses serial bottleneck "
                            "adapters", where="method.runs",
                            fix=f"pick runs of {', '.join(_title(n) for n in FUSABLE)}")  # fmt: skip
        if ckpt.latest_checkpoint(Path(run) / "checkpoints") is None:
            raise UserError(f"{Path(run).name} has no checkpoint yet", where="method.runs",
                            fix="let it finish (or resume it) first")  # fmt: skip
        methods.append(bottleneck_class(name).model_validate(fields))
    if len(bases) > 1:
        raise UserError(f"the runs were trained on different base models ({', '.join(sorted(bases))})",
                        where="method.runs", fix="fuse runs of one base model")  # fmt: skip
    if len({m.positions for m in methods}) > 1:  # type: ignore[attr-defined]
        raise UserError("the runs put their adapters in different places (Houlsby: after attention and the "
                        "feed-forward block; Pfeiffer: after the feed-forward block only)", where="method.runs",
                        fix="fuse runs of one placement")  # fmt: skip
    return methods  # type: ignore[return-value]


class AdapterFusion(InjectedMethod):
    """AdapterFusion: a learned per-token attention over frozen adapters from finished runs."""

    name: Literal["adapter_fusion"] = "adapter_fusion"
    title = "AdapterFusion"
    family = "multi-task composition"
    description = (
        "Fuses the frozen adapters of several finished runs (trained on other tasks): a learned attention picks, "
        "per token, how much of each adapter to use. Start it from the Runs page: select the runs, Combine…."
    )
    typical_share = "≈ 3·h² per adapter place: 10–25%"
    default_lr = 1e-4
    supported_models = "Llama, Mistral, Qwen2, GPT-2 and BERT-style models"

    runs: list[str] = Field(default_factory=list, description="The finished Adapter (Houlsby / Pfeiffer) or "
                            "Compacter runs to fuse: two or more, on this base model, one placement.")  # fmt: skip

    def check(self, info: ModelInfo, training: TrainingSpec) -> None:
        super().check(info, training)
        fused_methods(self.runs)

    def inject(self, model: torch.nn.Module, info: ModelInfo, methods: list[BottleneckMethod] | None = None) -> Any:
        """Wrap every adapter place with the runs' adapters (untrained) and a fusion layer."""
        from torch import nn

        methods = fused_methods(self.runs) if methods is None else methods
        mods = _modules()
        blocks = model.get_submodule(info.layers_path) if info.layers_path else None
        if blocks is None:
            raise UserError(f"{self.title}: no blocks found in this {info.model_type} model", where="method.name")
        shared: list[dict[str, Any]] = [{} for _ in methods]  # per run: what its adapters share (Compacter)
        for block in blocks:  # type: ignore[union-attr]
            for position in methods[0].positions:
                path = _find(block, PLACES[position])
                if path is None:
                    raise UserError(f"{self.title}: cannot find the {position} output in a {info.model_type} block",
                                    where="method.name")  # fmt: skip
                base = block.get_submodule(path)
                like = next(base.parameters())
                adapters = nn.ModuleList(
                    m.new_adapter(info.hidden_size, bottleneck_size(info.hidden_size, m.reduction_factor), like, s)
                    for m, s in zip(methods, shared, strict=True)
                )
                block.set_submodule(path, mods.FusedSerial(base, adapters, mods.Fusion(info.hidden_size, like)))
        return methods

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        self.inject(model, ctx.info)
        freeze_all(model)  # the base and the runs' adapters (made trainable, as every new module is)
        if not next(model.parameters()).is_meta:  # the estimate builds on the meta device: nothing to read
            self._load_runs(model)
        for name, p in model.named_parameters():
            if ".fusion." in name:
                p.requires_grad_(True)
        unfreeze_head(model, ctx.info)
        return model

    def _load_runs(self, model: torch.nn.Module) -> None:
        """Each run's trained adapter tensors (`….adapter.x`) into its slot (`….adapters.i.x`)."""
        import torch
        from adapter_studio.engine.training import checkpoints as ckpt
        from safetensors.torch import load_file

        params = dict(model.named_parameters())
        with torch.no_grad():
            for i, run in enumerate(self.runs):
                checkpoint = ckpt.latest_checkpoint(Path(run) / "checkpoints")
                tensors = load_file(str(checkpoint / ckpt.WEIGHTS))  # type: ignore[operator]
                slots = {n.replace(".adapter.", f".adapters.{i}.", 1): t
                         for n, t in tensors.items() if ".adapter." in n}  # fmt: skip
                wanted = {n for n in params if f".adapters.{i}." in n}
                if set(slots) != wanted or any(params[n].shape != t.shape for n, t in slots.items()):
                    raise UserError(f"{Path(run).name}'s adapters do not fit this model", where="method.runs",
                                    fix="fuse runs trained on this base model")  # fmt: skip
                for name, tensor in slots.items():
                    params[name].copy_(tensor.to(params[name].dtype))

    def save_adapter(self, model: torch.nn.Module, out_dir: str) -> None:
        """The runs' adapters, the fusion layers and a head in one file; the runs' settings beside it."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters()
                   if p.requires_grad or ".adapters." in n}  # fmt: skip
        save_file(tensors, str(out / ADAPTER_WEIGHTS))
        methods = [m.model_dump(mode="json") for m in fused_methods(self.runs)]
        (out / FUSED_METHODS).write_text(json.dumps(methods, indent=1), encoding="utf-8")

    def inject_saved(self, base: torch.nn.Module, folder: Path) -> None:
        """From the export alone: the runs' settings in `fused_methods.json`, not the run folders."""
        from adapter_studio.engine.models.info import describe_model

        saved = json.loads((Path(folder) / FUSED_METHODS).read_text(encoding="utf-8"))
        methods = [bottleneck_class(m["name"]).model_validate(m) for m in saved]
        self.inject(base, describe_model(base), methods)  # type: ignore[arg-type]
