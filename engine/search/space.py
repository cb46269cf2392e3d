"""What the automatic search tries: a short list of method choices that pay, a learning-rate band for
each, and a few batch sizes — and how one set of those settings becomes a run spec.

The list is short on purpose: a 20-minute budget on a CPU buys about ten trials, so every choice has to
be one that often wins (LoRA on the attention projections, LoRA and rsLoRA on every linear layer, and
full fine-tuning where the model is small enough to afford it). Each choice has its own learning-rate
parameter, so the sampler models the rate of each method family apart (a rate that suits LoRA would
wreck full fine-tuning).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.defaults import PREFERENCE_RATE_FACTOR
from adapter_studio.engine.methods import METHODS

if TYPE_CHECKING:
    from adapter_studio.engine.methods import MethodSpec
    from adapter_studio.engine.models.info import ModelInfo
    from adapter_studio.engine.spec import RunSpec

# Full fine-tuning of a model this small fits a workstation's memory and trains at a useful speed on a CPU.
FULL_MAX_PARAMS = 200_000_000
# Batch sizes tried per task: short classification rows batch well; answers with worked steps are long.
BATCH_SIZES = {"classification": (8, 16, 32), "causal_lm": (2, 4, 8)}


@dataclass(frozen=True)
class Choice:
    """One method choice: a method, where it applies, its rank, and the band its learning rate is drawn from."""

    key: str
    label: str
    method: str
    lr_band: tuple[float, float]
    baseline_lr: float  # the rate of the baseline trial that opens the search
    targets: str | None = None  # "attention" or "all_linear" (low-rank methods)
    rank: int | None = None
    alpha: float | None = None


CHOICES: dict[str, Choice] = {c.key: c for c in (
    Choice("lora_attention", "LoRA r16 on attention", "lora", (1e-4, 3e-3), 5e-4, "attention", 16, 32.0),
    Choice("lora_all_linear", "LoRA r16 on all linear layers", "lora", (5e-5, 2e-3), 4e-4, "all_linear", 16, 32.0),
    # rsLoRA scales by alpha/sqrt(r): the higher rank keeps learning, so it gets r32 and a lower band.
    Choice("rslora_all_linear", "rsLoRA r32 on all linear layers", "rslora", (2e-5, 1e-3), 2e-4, "all_linear", 32,
           32.0),
    Choice("full", "full fine-tuning", "full", (1e-5, 3e-4), 5e-5),
)}  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """What one trial used: a method choice, a learning rate and a batch size."""

    choice: str
    learning_rate: float
    batch_size: int

    def describe(self) -> str:
        return f"{CHOICES[self.choice].label}, lr {self.learning_rate:.2e}, batch {self.batch_size}"

    def to_json(self, info: ModelInfo | None = None) -> dict[str, Any]:
        choice = CHOICES[self.choice]
        targets = targets_for(choice, info) if info is not None else None
        return {**asdict(self), "method": choice.method, "targets": targets, "rank": choice.rank}


@dataclass
class SearchSpace:
    """The choices, the batch sizes and the fixed learning rate (when the spec sets one) of one search."""

    choices: list[str]
    batch_sizes: tuple[int, ...]
    learning_rate: float | None = None
    baselines: list[Settings] = field(default_factory=list)  # tried first, in this order
    rate_factor: float = 1.0  # a preference objective's: its rates sit below supervised training's (defaults)

    def band(self, key: str) -> tuple[float, float]:
        low, high = CHOICES[key].lr_band
        return low * self.rate_factor, high * self.rate_factor

    def baseline_rate(self, key: str) -> float:
        return self.learning_rate or CHOICES[key].baseline_lr * self.rate_factor

    def suggest(self, trial: Any) -> Settings:
        """The settings of an optuna trial (each choice has its own learning-rate parameter)."""
        key = trial.suggest_categorical("method", self.choices)
        lr = self.learning_rate or trial.suggest_float(f"lr_{key}", *self.band(key), log=True)
        batch = (
            trial.suggest_categorical("batch_size", self.batch_sizes)
            if len(self.batch_sizes) > 1
            else self.batch_sizes[0]
        )
        return Settings(key, float(lr), int(batch))

    def params_of(self, settings: Settings) -> dict[str, Any]:
        """`settings` as optuna parameters (for enqueuing a trial)."""
        params: dict[str, Any] = {"method": settings.choice}
        if self.learning_rate is None:
            params[f"lr_{settings.choice}"] = settings.learning_rate
        if len(self.batch_sizes) > 1:
            params["batch_size"] = settings.batch_size
        return params


def space_for(spec: RunSpec, task: str, total_params: int) -> SearchSpace:
    """The default search space for this task and model size; what the spec fixes stays fixed."""
    keys = ["lora_attention", "lora_all_linear", "rslora_all_linear"]
    if total_params <= FULL_MAX_PARAMS:
        keys.append("full")
    t = spec.training
    batches = (t.batch_size,) if t.batch_size else BATCH_SIZES[task]
    # A number is the person's choice; "auto" (the finder) or empty leaves the rate to the search.
    fixed_lr = t.learning_rate if isinstance(t.learning_rate, float) else None
    factor = PREFERENCE_RATE_FACTOR if spec.objective.pairwise else 1.0
    space = SearchSpace(keys, tuple(batches), fixed_lr, rate_factor=factor)
    middle = batches[len(batches) // 2]
    space.baselines = [Settings(key, space.baseline_rate(key), middle) for key in ("lora_all_linear", "full")
                       if key in keys]  # fmt: skip
    return space


def targets_for(choice: Choice, info: ModelInfo) -> list[str] | None:
    if choice.targets == "all_linear":
        return list(info.all_linear_targets)
    if choice.targets == "attention":
        # BERT names its attention output and its feed-forward output both "dense": leave the shared name out.
        only_attention = [n for n in info.attention_targets if n not in info.mlp_targets]
        return only_attention or list(info.query_value_targets)
    return None


def method_for(settings: Settings, info: ModelInfo) -> MethodSpec:
    choice = CHOICES[settings.choice]
    fields: dict[str, Any] = {}
    if choice.rank is not None:
        fields = {"r": choice.rank, "alpha": choice.alpha, "target_modules": targets_for(choice, info)}
    return METHODS[choice.method](**fields)


def spec_with(base: RunSpec, settings: Settings, info: ModelInfo, name: str, **training: Any) -> RunSpec:
    """The base spec trained with `settings` (and any other training fields given), as run `name`."""
    updates = {"learning_rate": settings.learning_rate, "batch_size": settings.batch_size, **training}
    return base.model_copy(update={
        "method": method_for(settings, info),
        "training": base.training.model_copy(update=updates),
        "name": name,
    })  # fmt: skip
