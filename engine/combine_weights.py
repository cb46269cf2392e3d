"""LoraHub (Huang et al., 2023): the weights of a combination of LoRA runs found on a few examples of the
task, without gradients.

Each candidate set of weights becomes one adapter through peft's `add_weighted_adapter` ("linear": the
weighted sums of the A and of the B matrices, so the runs' updates mix, cross terms included), and is
scored by its loss on the examples plus LoraHub's L1 penalty (0.05 · Σ|w|, which keeps the weights small
where the loss does not need them). A seeded TPE search (optuna, which the automatic search uses too)
draws each weight in [-1.5, 1.5] — the paper's bounds — starting from equal weights, so the result's
penalised score on those examples is never worse than the plain average's.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.errors import UserError

if TYPE_CHECKING:
    from adapter_studio.engine.data.prepare import PreparedData
    from adapter_studio.engine.spec import RunSpec

BOUND = 1.5
L1 = 0.05
BATCH = 8
SCRATCH = "lorahub-trial"


@dataclass
class FoundWeights:
    weights: list[float]
    loss: float  # the examples' loss with these weights (without the penalty)
    start_loss: float  # with equal weights
    score: float  # loss + the L1 penalty, which the search minimised
    start_score: float
    examples: int
    trials: int

    def describe(self) -> str:
        weights = ", ".join(f"{w:.3f}" for w in self.weights)
        return (f"LoraHub weights {weights} from {self.trials} trials on {self.examples} examples: "
                f"loss {self.start_loss:.4f} with equal weights → {self.loss:.4f}")  # fmt: skip


def examples(spec: RunSpec, tokenizer: Any, task: str, data: Path | None, count: int) -> PreparedData:
    """Up to `count` tokenised examples, as the held-out rows of a PreparedData (what training's `evaluate`
    scores): from `data` (every row) or the run's held-out rows."""
    from adapter_studio.engine.data.prepare import prepare_data
    from adapter_studio.engine.defaults import DEFAULT_MAX_LENGTH

    if spec.objective.pairwise:
        raise UserError(f"LoraHub scores weights by the supervised loss; these runs trained with "
                        f"{spec.objective.title}", where="--how",
                        fix="pick linear, cat, svd, ties or dare")  # fmt: skip
    source = spec.data
    if data is not None:
        source = spec.data.model_copy(update={"path": str(data), "eval_path": None, "eval_split": 0.0})
    prepared = prepare_data(source, tokenizer, task, spec.data.max_length or DEFAULT_MAX_LENGTH, spec.training.seed,
                            use_cache=False)  # fmt: skip
    rows = prepared.train if data is not None or not len(prepared.eval) else prepared.eval
    items = [rows[i] for i in range(min(count, len(rows)))]
    if not items:
        raise UserError("no examples to find the weights on", where=str(data or spec.data.path),
                        fix="give a data file of the task with a few rows")  # fmt: skip
    return replace(prepared, eval=items, eval_prompts=[], eval_prompt_tasks=[])


def find_weights(model: Any, names: list[str], rows: PreparedData, task: str, pad_id: int, trials: int,
                 seed: int) -> FoundWeights:  # fmt: skip
    """The weights of `names` (adapters of the peft `model`) that score best on `rows`' held-out rows."""
    import optuna
    from adapter_studio.engine.training.evaluation import evaluate

    seen: dict[tuple[float, ...], float] = {}

    def drop_scratch() -> None:
        if SCRATCH in model.peft_config:
            model.set_adapter(names[0])  # deleting the active adapter makes peft warn
            model.delete_adapter(SCRATCH)

    def loss_of(weights: list[float]) -> float:
        drop_scratch()
        model.add_weighted_adapter(names, weights, SCRATCH, combination_type="linear")
        model.set_adapter(SCRATCH)
        scores = evaluate(model, None, rows, task, batch_size=BATCH, pad_id=pad_id, samples=0, autocast=nullcontext,
                          device="cpu")  # fmt: skip
        seen[tuple(weights)] = float(scores["eval_loss"] or 0.0)
        return seen[tuple(weights)]

    def objective(trial: optuna.Trial) -> float:
        weights = [trial.suggest_float(f"w{i}", -BOUND, BOUND) for i in range(len(names))]
        return loss_of(weights) + L1 * sum(abs(w) for w in weights)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    equal = [1.0 / len(names)] * len(names)
    study.enqueue_trial({f"w{i}": w for i, w in enumerate(equal)})  # trial 0
    study.optimize(objective, n_trials=max(1, trials))
    best = [float(study.best_params[f"w{i}"]) for i in range(len(names))]
    drop_scratch()
    return FoundWeights(best, seen[tuple(best)], seen[tuple(equal)], float(study.best_value),
                        float(study.trials[0].value or 0.0), len(rows.eval), len(study.trials))
