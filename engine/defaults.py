"""Defaults that fit the task, the model, the method and the data, filled in before a run is saved.

Every value the person left empty is chosen here, once, for the window, the command line, sweeps and the
automatic search alike, and each choice carries a one-line reason the window shows ("why this value").
The numbers come from runs measured on the embedded models (benchmarks/quality.py, docs/performance.md):
  - LoRA on SmolLM2-135M, math word problems (answer loss vs the base): lr 2e-4 took it 59 % down, 1e-3
    80.5 %, 2e-3 81.4 %; all linear layers instead of q,v 81.9 % at 1e-3;
  - LoRA on MiniLM-L6, AG News topics: lr 2e-3 at batch 16 0.913, at batch 32 0.900 held-out accuracy;
    the old default (2e-4, batch 4) 0.855; lr 2e-3 at batch 4 collapsed to chance (issue 21).
    A classifier keeps its model's pooler and one rate: mean pooling (sentence-transformers' own) gave
    0.847 and a 5× head rate 0.857 against the pooler's 0.872 (hand loop, LoRA r8 all linear, 600 dev rows).
  - DPO on SmolLM2-135M, HH harmless pairs (benchmarks/preference.py): see PREFERENCE_RATE_FACTOR.
Larger models take lower rates (QLoRA's 2e-4 for 7-13B is the usual anchor); the rates between are a
log-linear step per size band, not measured here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.errors import UserError

if TYPE_CHECKING:
    from adapter_studio.engine.methods.base import MethodSpec
    from adapter_studio.engine.models.info import ModelInfo
    from adapter_studio.engine.objectives import ObjectiveSpec
    from adapter_studio.engine.spec import RunSpec, TrainingSpec

DEFAULT_MAX_LENGTH = 512
# On a CPU, eager attention beats the fused SDPA kernel for short batches of a decoder (SmolLM2 forward +
# backward, batch 4, bf16: width 120 0.47 s vs 0.61 s, 256 about equal, 512 slower — measured here), so
# training picks the attention kernel by each batch's width there (training.speed.SpeedOptions); the
# estimate follows.
CPU_EAGER_MAX_WIDTH = 192

CLASSIFICATION_BATCH = 16  # a classifier's gradient from 4 rows is too noisy for the rates below
LOW_RANK = "low-rank"  # the LoRA family (MethodSpec.family)
# (largest model in parameters, LoRA-family rate): small models take higher rates.
LOW_RANK_RATES = ((300e6, 2e-3), (1.5e9, 1e-3), (4e9, 5e-4), (15e9, 2e-4), (math.inf, 1e-4))
# Full fine-tuning: every weight moves, so rates are far lower; a fresh classifier head learns at this too.
FULL_RATES = {"classification": 5e-5, "causal_lm": 2e-5}
FULL_LARGE_FACTOR = 0.5  # above 1.5B parameters
# Preference objectives push log-probability ratios, not the answers' likelihood: the usual practice is a
# rate far below supervised training's (the alignment handbook's Zephyr-7B QLoRA recipes: DPO 5e-6, SFT
# 2e-4). Measured here (DPO, SmolLM2 LoRA, HH harmless, one epoch; held-out preference accuracy, ±0.03 a
# run): 2× this factor 0.625, this factor 0.635, ½ of it 0.628 — so it stays.
PREFERENCE_RATE_FACTOR = 0.25
# Passes over the data when neither epochs nor steps are given: small data needs several passes to be
# learnt, more than three mostly memorises it.
EPOCH_EXAMPLES = 3000  # aim to see about this many examples
MAX_DEFAULT_EPOCHS = 3


@dataclass(frozen=True)
class Choice:
    """A default and the one line that says why."""

    value: Any
    reason: str


def position_limit(config: Any) -> int | None:
    """The longest sequence the model was made for (its position table), where its config says."""
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_max_length(config: Any) -> int:
    return position_limit(config) or DEFAULT_MAX_LENGTH


# Models whose position ids start past the padding id (RoBERTa's 514 positions read 512 tokens).
PADDING_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text")


def position_table_limit(config: Any) -> int | None:
    """The longest sequence a model with a table of learned positions can read (past it, GPT-2 and BERT fail
    with an IndexError); None for rotary (RoPE) or relative positions, which read on past their training
    length (worse the further, but without failing)."""
    if any(getattr(config, key, None) for key in ("rope_parameters", "rope_scaling", "rope_theta")):
        return None
    kind = getattr(config, "model_type", "")
    if kind.startswith("deberta") and not getattr(config, "position_biased_input", True):
        return None
    limit = position_limit(config)
    if limit is not None and kind in PADDING_OFFSET_POSITIONS:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    return limit


def _size(params: int) -> str:
    """135M, 1.2B; a test-size model as 90K, not "0M"."""
    if params >= 1e9:
        return f"{params / 1e9:.1f}B"
    return f"{params / 1e6:.0f}M" if params >= 1e6 else f"{params / 1e3:.0f}K"


def batch_size(method: MethodSpec, task: str) -> Choice:
    if task == "classification":
        return Choice(CLASSIFICATION_BATCH, f"classification: {CLASSIFICATION_BATCH} rows a step keep the "
                      "gradient steady enough for the rate")  # fmt: skip
    return Choice(method.default_batch_size, f"{method.title}'s usual batch (memory grows with it)")


def reference_rate(method: MethodSpec, info: ModelInfo, task: str) -> Choice:
    """The rate for this method, model size and task at the batch `batch_size` picks."""
    return rate_for_size(method, info.total_params, task)


def rate_for_size(method: MethodSpec, params: int, task: str) -> Choice:
    size = _size(params)
    if method.family == LOW_RANK:
        rate = next(r for limit, r in LOW_RANK_RATES if params <= limit)
        return Choice(rate, f"{method.title} on a {size}-parameter model: smaller models take higher rates")
    if method.name == "full":
        rate = FULL_RATES.get(task, FULL_RATES["causal_lm"])
        if params > 1.5e9:
            rate *= FULL_LARGE_FACTOR
        return Choice(rate, f"full fine-tuning of a {size}-parameter model moves every weight: a low rate")
    return Choice(method.default_lr, f"{method.title}'s usual rate")


def learning_rate(
    method: MethodSpec, info: ModelInfo, task: str, batch: int, objective: ObjectiveSpec | None = None
) -> Choice:
    """The reference rate, lowered (by √ of the batch ratio) when the batch is smaller than the one it is
    safe with: a rate that needs a larger batch never goes with a small one. Never raised."""
    return rate_for(method, info.total_params, task, batch, objective)


def for_objective(choice: Choice, objective: ObjectiveSpec | None) -> Choice:
    """A supervised rate lowered for a preference objective."""
    if objective is None or not objective.pairwise:
        return choice
    rate = float(f"{choice.value * PREFERENCE_RATE_FACTOR:.2g}")
    return Choice(rate, f"{choice.reason}; {PREFERENCE_RATE_FACTOR:g}× for {objective.title}, which moves "
                  "preferences rather than learning answers")  # fmt: skip


def rate_for(method: MethodSpec, params: int, task: str, batch: int, objective: ObjectiveSpec | None = None) -> Choice:
    ref = for_objective(rate_for_size(method, params, task), objective)
    ref_batch = batch_size(method, task).value
    if batch >= ref_batch:
        return ref
    rate = float(f"{ref.value * math.sqrt(batch / ref_batch):.2g}")
    return Choice(rate, f"{ref.reason}; lowered from {ref.value:g} for a batch of {batch} "
                  f"(it suits {ref_batch})")  # fmt: skip


def target_modules(method: MethodSpec, info: ModelInfo) -> Choice | None:
    """LoRA-family layers: all linear layers of the blocks (measured better than q,v at the same rate). Poly's
    skills are LoRAs too (benchmarks/poly_routing.py, lr 5e-3: mean answer loss 0.274, on q,v 0.314)."""
    if not (method.family == LOW_RANK or method.routes_by_task) or not info.all_linear_targets:
        return None
    return Choice(list(info.all_linear_targets), "every linear layer of the blocks: learns more than q,v only "
                  "for little more memory")  # fmt: skip


def epochs(rows: int) -> Choice:
    count = max(1, min(MAX_DEFAULT_EPOCHS, math.ceil(EPOCH_EXAMPLES / max(1, rows))))
    if count == 1:
        return Choice(1.0, f"{rows:,} training rows: one pass is enough")
    return Choice(float(count), f"{rows:,} training rows: {count} passes to learn from small data "
                  f"(at most {MAX_DEFAULT_EPOCHS}, more mostly memorises)")  # fmt: skip


def fill_method(method: MethodSpec, info: ModelInfo, reasons: dict[str, str] | None = None) -> MethodSpec:
    """The method with its model-dependent fields filled (targets, layer counts); `reasons` gets why."""
    targets = target_modules(method, info) if getattr(method, "target_modules", "set") is None else None
    if targets is not None:
        method = method.model_copy(update={"target_modules": targets.value})
        if reasons is not None:
            reasons["method.target_modules"] = targets.reason
    return method.fill_defaults(info)


@dataclass(frozen=True)
class Chosen:
    method: MethodSpec
    training: TrainingSpec
    reasons: dict[str, str]  # dotted field → why it has its value (only fields the person left empty)


@dataclass(frozen=True)
class Resolved:
    spec: RunSpec
    reasons: dict[str, str]  # dotted field → why it has its value (only fields the person left empty)


def choose(
    method: MethodSpec, training: TrainingSpec, info: ModelInfo, task: str, objective: ObjectiveSpec | None = None
) -> Chosen:
    """The method and training settings with every model-dependent `None` filled, and why (the window
    shows this before a run; `resolve` uses it for the run)."""
    reasons: dict[str, str] = {}
    method = fill_method(method, info, reasons)
    batch = training.batch_size
    if batch is None:
        choice = batch_size(method, task)
        batch, reasons["training.batch_size"] = choice.value, choice.reason
    rate = training.learning_rate
    if rate is None:
        choice = learning_rate(method, info, task, batch, objective)
        rate, reasons["training.learning_rate"] = choice.value, choice.reason
    return Chosen(method, training.model_copy(update={"batch_size": batch, "learning_rate": rate}), reasons)


def task_for(spec: RunSpec, fmt: str) -> str:
    """model.task, or the data's: labelled texts train a classifier, anything else a causal LM. A task given
    that the rows cannot train is refused (`task: classification` on math problems said "every training row has
    the label 'None'")."""
    task = task_of(spec.model.task, fmt)
    if (fmt == "classification") != (task == "classification"):
        rows = "texts with a label" if fmt == "classification" else f"{fmt} rows, with no label to learn"
        raise UserError(f"{task}, but the data holds {rows}", where="model.task",
                        fix="set model.task to auto (it follows the data), or load data of that kind")  # fmt: skip
    return task


def task_of(model_task: str, fmt: str) -> str:
    if model_task != "auto":
        return model_task
    return "classification" if fmt == "classification" else "causal_lm"


def resolve(spec: RunSpec, info: ModelInfo, task: str, config: Any = None) -> Resolved:
    """A copy of the spec with every model-dependent `None` replaced by a value that fits, and why.
    `training.epochs` waits for the data (`resolve_epochs`); `learning_rate: auto` stays for the finder."""
    chosen = choose(spec.method, spec.training, info, task, spec.objective)
    limit = position_table_limit(config)
    if spec.data.max_length and limit and spec.data.max_length > limit:  # GPT-2 and BERT failed at step 0
        raise UserError(f"{spec.data.max_length} tokens is past the {limit} positions this model has",
                        where="data.max_length", fix=f"give at most {limit}")  # fmt: skip
    max_length = spec.data.max_length or min(DEFAULT_MAX_LENGTH, model_max_length(config))
    data = spec.data.model_copy(update={"max_length": max_length})
    model = spec.model.model_copy(update={"task": task})
    update = {"method": chosen.method, "training": chosen.training, "data": data, "model": model}
    return Resolved(spec.model_copy(update=update), chosen.reasons)


# What a file of each format holds that supervised training cannot learn from, as the objective's reason says.
UNSUPERVISED_DATA = {"preference": "preference pairs (chosen and rejected answers)",
                     "kto": "answers marked desirable or not"}  # fmt: skip


def resolve_objective(spec: RunSpec, fmt: str | None = None) -> Resolved:
    """An objective that trains on the data, where the spec names none: preference pairs train with DPO and
    KTO's marked answers with KTO, as the window picks on loading them; other data keep the supervised
    default. An objective the spec names stays, and `check_data` says when it does not fit the data."""
    from adapter_studio.engine.data.examples import data_format
    from adapter_studio.engine.objectives import objective_for

    if "objective" in spec.model_fields_set:
        return Resolved(spec, {})
    fitting = objective_for(fmt or data_format(spec.data))
    if isinstance(spec.objective, fitting):
        return Resolved(spec, {})
    kind = UNSUPERVISED_DATA.get(fitting.data_formats[0], fitting.data_formats[0])
    return Resolved(spec.model_copy(update={"objective": fitting()}),
                    {"objective.name": f"the data are {kind}, which {fitting.title} trains on"})  # fmt: skip


def resolve_spec(spec: RunSpec, info: ModelInfo, config: Any, task: str) -> RunSpec:
    return resolve(spec, info, task, config).spec


def resolve_epochs(spec: RunSpec, rows: int) -> Resolved:
    """Epochs from the number of training rows, when neither epochs nor steps were given."""
    t = spec.training
    if t.epochs is not None or t.max_steps is not None:
        return Resolved(spec, {})
    choice = epochs(rows)
    training = t.model_copy(update={"epochs": choice.value})
    return Resolved(spec.model_copy(update={"training": training}), {"training.epochs": choice.reason})


def eval_split(rows: int) -> Choice:
    from adapter_studio.engine.data.examples import (
        DEFAULT_EVAL_SHARE,
        MAX_AUTO_HELD_OUT,
        SMALL_DATA_ROWS,
        held_out_count,
    )

    held = held_out_count(rows, None)
    # As few digits as hold as many rows out again (4 mostly; more for a cap of 2,000 in 300,000 rows).
    share = next((round(held / rows, d) for d in range(4, 10) if round(rows * round(held / rows, d)) == held),
                 held / rows) if rows else 0.0  # fmt: skip
    if held == MAX_AUTO_HELD_OUT:
        return Choice(share, f"{rows:,} rows: {held:,} held out ({DEFAULT_EVAL_SHARE:.0%}, at most {held:,}: every "
                      "evaluation scores them all) for the held-out loss, the best checkpoint and the Evaluate page")
    if rows >= SMALL_DATA_ROWS:
        return Choice(share, f"{rows:,} rows: {held:,} held out ({DEFAULT_EVAL_SHARE:.0%}) for the held-out loss, "
                      "the best checkpoint and the Evaluate page")  # fmt: skip
    return Choice(share, f"{rows:,} rows: {held} held out ({share:.1%}); under {SMALL_DATA_ROWS} rows fewer are "
                  "kept back, so more of a small set trains")  # fmt: skip


def resolve_eval_split(spec: RunSpec, rows: int) -> Resolved:
    """The held-out share the data's size gave (`held_out_count`), when data.eval_split was left empty: the
    saved spec then names the rows the run held out."""
    if spec.data.eval_split is not None or spec.data.eval_path:
        return Resolved(spec, {})
    choice = eval_split(rows)
    data = spec.data.model_copy(update={"eval_split": choice.value})
    return Resolved(spec.model_copy(update={"data": data}), {"data.eval_split": choice.reason})


def default_rate(spec: RunSpec, info: ModelInfo, task: str) -> float:
    """The rate an `auto` run centres its range test on and falls back to."""
    batch = spec.training.batch_size or batch_size(spec.method, task).value
    return learning_rate(spec.method, info, task, batch, spec.objective).value


def explain(spec: RunSpec | Chosen, reasons: dict[str, str]) -> list[str]:
    """One line a chosen value: `training.learning_rate = 0.002: LoRA on a 135M-parameter model: …`."""
    lines = []
    for field, reason in reasons.items():
        section, _, name = field.partition(".")
        value = getattr(getattr(spec, section), name)
        shown = ", ".join(value) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else value
        lines.append(f"{field} = {shown}: {reason}")
    return lines
