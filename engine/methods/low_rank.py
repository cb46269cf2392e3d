"""Low-rank updates W + BA through peft: LoRA, DoRA, rsLoRA, LoRA+ and AdaLoRA."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods.base import MethodContext, advanced
from adapter_studio.engine.methods.peft_base import PeftMethod, peft_task_type
from pydantic import Field

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.models.info import ModelInfo

EVA_PASSES = 8  # passes over the sample batches EVA may take to settle (it cycles them until it does)
TARGETS_DESCRIPTION = (
    "Layers that get an update, by their names in the model (q_proj, v_proj on Llama; c_attn on GPT-2; "
    "query, value on BERT). Empty means the method's usual choice for this model."
)


@contextlib.contextmanager
def task_loss_only(model: Any) -> Iterator[None]:
    """The model's loss without AdaLoRA's orthogonality penalty, which peft adds to it: a held-out loss
    is the task's alone (at the start the penalty adds 1.3-1.7 to it), comparable with
    every other method's."""
    configs = [c for c in getattr(model, "peft_config", {}).values() if getattr(c, "orth_reg_weight", 0)]
    weights = [c.orth_reg_weight for c in configs]
    for config in configs:
        config.orth_reg_weight = 0.0
    try:
        yield
    finally:
        for config, weight in zip(configs, weights, strict=True):
            config.orth_reg_weight = weight


class LowRankFields(PeftMethod):
    family = "low-rank"
    mergeable = True
    typical_share = "0.1–1%"
    default_lr = 2e-4

    r: int = Field(8, ge=1, le=1024, description="Rank of the update: higher learns more, costs more.")
    alpha: float = Field(16.0, gt=0, le=4096, description="Scale of the update (alpha / r multiplies it).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter's input while training.")
    target_modules: list[str] | None = Field(
        None, description=TARGETS_DESCRIPTION, json_schema_extra={"widget": "targets"}
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="Also train biases: none, all, or those of adapted layers.",
        json_schema_extra=advanced(),
    )

    def fill_defaults(self, info: ModelInfo) -> LowRankFields:
        if self.target_modules:
            return self
        return self.model_copy(update={"target_modules": list(info.query_value_targets)})

    def lora_kwargs(self, ctx: MethodContext) -> dict[str, Any]:
        return {
            "task_type": peft_task_type(ctx.info),
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules or ctx.info.query_value_targets,
            "bias": self.bias,
        }

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import LoraConfig

        return LoraConfig(**self.lora_kwargs(ctx))


class LoRA(LowRankFields):
    """LoRA (Hu et al., 2021), started as peft's default (B = 0), or from the adapted weight itself:
    PiSSA (Meng et al., 2024: the weight's top-r singular directions, the base keeping the residual) or
    OLoRA (Büyükakyüz, 2024: an orthonormal QR basis of the weight), or from the data: EVA (Paischer et
    al., 2024: A from the top-r right singular vectors of each layer's inputs on training batches, B = 0;
    ranks kept uniform, rho = 1, so counts and exports are plain LoRA's). All start as the base model."""

    name: Literal["lora"] = "lora"
    title = "LoRA"
    description = "Adds a trainable low-rank update BA beside chosen weight matrices; the base stays frozen."

    init: Literal["default", "pissa", "olora", "eva", "loftq"] = Field(
        "default",
        description="How the update starts. default: B = 0 and A random. pissa: from the weight's principal "
        "singular directions (the base keeps the rest; often learns faster early). olora: from a QR "
        "decomposition of the weight. pissa and olora rewrite the adapted base weights, so the run keeps the "
        "untouched base for comparisons and, with a preference objective, a frozen copy as the reference. "
        "eva: A from the main directions of each layer's inputs on a few training batches (read before the "
        "first step; the base is untouched). loftq: for a 4-bit base (model.quantization 4bit) — B·A starts "
        "as the best rank-r part of the quantisation error, so training starts nearer the original weights; "
        "the adapter then belongs to the 4-bit base.",
        json_schema_extra=advanced(),
    )

    @property
    def changes_base(self) -> bool:
        return self.init in ("pissa", "olora")  # EVA sets A from the data and leaves the base alone

    @property
    def reads_data(self) -> bool:
        return self.init == "eva"

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import EvaConfig, LoraConfig

        if self.init == "eva":
            return LoraConfig(**self.lora_kwargs(ctx), init_lora_weights="eva", eva_config=EvaConfig(rho=1.0))
        # LoftQ's start is set after peft builds the layers (engine.methods.loftq); the adapter's own
        # config says default, so peft reloads it without recomputing anything.
        plain = self.init in ("default", "loftq")
        return LoraConfig(**self.lora_kwargs(ctx), init_lora_weights=True if plain else self.init)

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        meta = any(p.is_meta for p in model.parameters())
        computed = self.changes_base or self.reads_data or self.init == "loftq"  # a start computed from values
        missing = (meta or (self.reads_data and ctx.sample_batches is None)
                   or (self.init == "loftq" and ctx.weights_folder is None))  # fmt: skip
        if computed and missing:
            # The estimate's meta model has no values to decompose, and a trained run's weights come from its
            # checkpoint: the shapes and counts are LoRA's.
            return self.model_copy(update={"init": "default"}).apply(model, ctx)
        model = super().apply(model, ctx)
        if self.init == "loftq":
            from adapter_studio.engine.methods.loftq import loftq_start, original_weights

            assert ctx.weights_folder is not None
            started = loftq_start(model, original_weights(ctx.weights_folder))
            if ctx.log:
                ctx.log(started.describe())
        if self.reads_data:
            from peft import initialize_lora_eva_weights

            assert ctx.sample_batches is not None
            batches = list(ctx.sample_batches(self.r))
            calls = 0

            def forward(model: Any, inputs: dict[str, Any]) -> Any:
                # peft cycles the batches until every layer's directions settle: bound it.
                nonlocal calls
                calls += 1
                if calls > EVA_PASSES * len(batches):
                    raise UserError(f"EVA's start did not settle within {EVA_PASSES} passes over "
                                    f"{len(batches)} training batches", where="method.init",
                                    fix="pick init default (or pissa / olora)")  # fmt: skip
                return model(**inputs)

            initialize_lora_eva_weights(model, dataloader=batches, forward_fn=forward, show_progress_bar=False,
                                        prepare_layer_inputs_fn=_eva_layer_inputs)
        return model


def _eva_layer_inputs(layer_input: Any, positions: torch.Tensor, layer_name: str) -> torch.Tensor:
    """A layer's inputs at the tokens EVA reads (`positions`: row, token pairs); a layer that reads one
    vector per row already (BERT's pooler, on the first token) gives its input as it is."""
    x = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
    return x.contiguous() if x.dim() == 2 else x[positions.T.unbind()]


class DoRA(LowRankFields):
    """DoRA (Liu et al., 2024): LoRA on the direction, plus a trained magnitude per output."""

    name: Literal["dora"] = "dora"
    title = "DoRA"
    description = "Splits each adapted weight into magnitude and direction; LoRA updates the direction."

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import LoraConfig

        return LoraConfig(**self.lora_kwargs(ctx), use_dora=True)


class RsLoRA(LowRankFields):
    """rsLoRA (Kalajdzievski, 2023): scale alpha/sqrt(r) so high ranks keep learning."""

    name: Literal["rslora"] = "rslora"
    title = "rsLoRA"
    description = "LoRA scaled by alpha/√r instead of alpha/r, so higher ranks train stably."

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import LoraConfig

        return LoraConfig(**self.lora_kwargs(ctx), use_rslora=True)


class LoRAPlus(LowRankFields):
    """LoRA+ (Hayou et al., 2024): the B matrices learn `loraplus_lr_ratio` times faster."""

    name: Literal["loraplus"] = "loraplus"
    title = "LoRA+"
    description = "LoRA whose B matrices get a higher learning rate than A, for faster convergence."

    loraplus_lr_ratio: float = Field(
        16.0, ge=1.0, le=256.0, description="Learning-rate multiplier for the B matrices (about 16 works)."
    )

    def build_optimizer(self, model: torch.nn.Module, lr: float, weight_decay: float) -> Any:
        import torch
        from adapter_studio.engine.training.devices import adamw_implementation
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(
            model=model,
            optimizer_cls=torch.optim.AdamW,
            lr=lr,
            loraplus_lr_ratio=self.loraplus_lr_ratio,
            weight_decay=weight_decay,
            **adamw_implementation([p for p in model.parameters() if p.requires_grad]),
        )


class AdaLoRA(LowRankFields):
    """AdaLoRA (Zhang et al., 2023): SVD-shaped updates whose ranks are pruned by importance."""

    name: Literal["adalora"] = "adalora"
    title = "AdaLoRA"
    uses_total_steps = True
    description = "Starts every update at init_r and moves rank budget to the layers that matter most."

    init_r: int = Field(12, ge=1, le=1024, description="Starting rank of every update.")
    target_r: int = Field(8, ge=1, le=1024, description="Average rank left after pruning.")
    warmup_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of steps before rank pruning starts.", json_schema_extra=advanced()
    )
    final_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="Share of final steps with the ranks held fixed.",
        json_schema_extra=advanced(),
    )
    orth_reg_weight: float = Field(
        0.5, ge=0.0, le=10.0, description="Weight of the orthogonality penalty.", json_schema_extra=advanced()
    )

    def peft_config(self, ctx: MethodContext) -> Any:
        from peft import AdaLoraConfig

        kwargs = self.lora_kwargs(ctx)
        kwargs.pop("r")
        total = max(ctx.total_steps, 3)
        tinit = int(total * self.warmup_fraction)
        tfinal = int(total * self.final_fraction)
        tfinal = min(tfinal, total - tinit - 1)  # peft needs tinit < total - tfinal
        return AdaLoraConfig(
            **kwargs,
            init_r=self.init_r,
            target_r=min(self.target_r, self.init_r),
            tinit=tinit,
            tfinal=tfinal,
            deltaT=max(1, (total - tinit - tfinal) // 10),
            orth_reg_weight=self.orth_reg_weight,
            total_step=total,
        )

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        adapted = super().apply(model, ctx)
        # `ranknum` is a constant (the rank the scaling divides by). peft makes it a trainable
        # Parameter again when it casts adapters of a bf16/fp16 base to float32, and AdamW would then
        # change the scaling: keep it frozen whatever the base's dtype.
        for name, param in adapted.named_parameters():
            if name.endswith("ranknum.default"):
                param.requires_grad_(False)
        return adapted

    def on_step(self, model: torch.nn.Module, step: int) -> None:
        model.base_model.update_and_allocate(step)  # type: ignore[union-attr,operator]


class DyLoRA(LowRankFields):
    """DyLoRA (Valipour et al., 2023): LoRA trained at a random rank b ≤ r each step, so it works at any rank.

    Each training step draws b uniformly from 1..r and uses only the first b components of every update
    (the rest masked to zero), scaled alpha/b; evaluation, Try and exports use `export_rank` components
    (scaled alpha/export_rank, all r when 0). An exported adapter is a plain LoRA adapter of rank
    `export_rank`: peft loads it, and it merges like LoRA. The mask is a tensor changed in place, so a
    compiled step is not recompiled when b changes.
    """

    name: Literal["dylora"] = "dylora"
    title = "DyLoRA"
    description = (
        "LoRA trained at a random rank up to r at every step (its first components carry the most), so one "
        "adapter works at every rank: pick how many to keep when exporting."
    )

    export_rank: int = Field(
        0, ge=0, le=1024, description="Components kept for evaluation and export (0: all r); any value up to r "
        "works without retraining."
    )  # fmt: skip

    def check(self, info: ModelInfo, training: Any) -> None:
        super().check(info, training)
        if self.export_rank > self.r:
            from adapter_studio.engine.errors import UserError

            raise UserError(f"DyLoRA's export_rank {self.export_rank} is above its rank r {self.r}",
                            where="method.export_rank", fix=f"pick 1 to {self.r}, or 0 for all of them")  # fmt: skip

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        import torch

        model = super().apply(model, ctx)
        like = next(p for p in model.parameters() if p.requires_grad)
        keep = self.export_rank or self.r
        masks = {"train": torch.ones(self.r, device=like.device), "eval": _rank_mask(self.r, keep, like.device)}

        def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            mask = masks["train" if module.training else "eval"]
            return output * mask.to(output.dtype)

        handles = [layer.lora_A["default"].register_forward_hook(hook) for layer in _lora_layers(model)]
        seed = int(getattr(ctx.training, "seed", 0) or 0)
        model._dylora = {"masks": masks, "seed": seed, "handles": handles}  # type: ignore[assignment]
        return model

    def on_step(self, model: torch.nn.Module, step: int) -> None:
        """The rank of the next step: b from 1..r, the same for a given seed and step (resumes repeat it)."""
        import random

        import torch

        state = getattr(model, "_dylora", None)
        if state is None:
            return
        b = random.Random(state["seed"] * 1_000_003 + step).randint(1, self.r)
        with torch.no_grad():
            state["masks"]["train"].copy_(_rank_mask(self.r, b, state["masks"]["train"].device))

    def _truncate(self, model: torch.nn.Module) -> None:
        """Keep `export_rank` components in every layer, as a plain LoRA adapter of that rank."""
        import torch

        keep = self.export_rank or self.r
        if keep == self.r or getattr(model, "_dylora", None) is None:
            return
        with torch.no_grad():
            for layer in _lora_layers(model):
                a, b = layer.lora_A["default"], layer.lora_B["default"]
                a.weight = torch.nn.Parameter(a.weight[:keep].clone(), requires_grad=False)
                b.weight = torch.nn.Parameter(b.weight[:, :keep].clone(), requires_grad=False)
                a.out_features = b.in_features = keep
                layer.r["default"] = keep
                layer.scaling["default"] = self.alpha / keep  # what the eval mask gave: alpha/r · r/keep
        model.peft_config["default"].r = keep  # type: ignore[index,union-attr]
        for handle in model._dylora["handles"]:  # type: ignore[index]
            handle.remove()  # the layers are now plain rank-`keep` LoRA

    def save_adapter(self, model: torch.nn.Module, out_dir: str) -> None:
        self._truncate(model)
        super().save_adapter(model, out_dir)

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        self._truncate(model)
        return super().merge(model)


def _rank_mask(r: int, keep: int, device: Any) -> Any:
    """Ones on the first `keep` of r components, scaled r/keep so the update is scaled alpha/keep."""
    import torch

    mask = torch.zeros(r, device=device)
    mask[:keep] = r / keep
    return mask


def _lora_layers(model: torch.nn.Module) -> list[Any]:
    return [m for m in model.modules() if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})]
