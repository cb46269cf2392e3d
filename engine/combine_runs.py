"""Combining finished LoRA runs into one (adapter composition): peft's `add_weighted_adapter` merges their
updates — `linear` (a weighted sum, same rank), `cat` (ranks side by side: the exact weighted sum),
`svd` (the weighted sum re-factored at a rank), `ties` / `dare_linear` / `dare_ties` (Yadav et al. 2023;
Yu et al. 2024: the sparsified, sign-resolved sums for merging task vectors, at `density`), and `lorahub`
(a `linear` combination whose weights are found on a few examples without gradients; combine_weights.py).

The result is a run folder like any other — `spec.yaml` (the first run's, with the combined adapter's
LoRA settings), `events.jsonl` (started, a log line naming the inputs, finished) and one checkpoint — so
the Runs, Try, Evaluate and Export pages and `adapter-studio export` take it as they take a trained run.
Inputs must share the base model and task, and be LoRA-family runs peft can combine (LoRA, rsLoRA, LoRA+,
DyLoRA at its export rank; not DoRA's magnitudes or AdaLoRA's SVD form).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.errors import UserError, a_or_an

if TYPE_CHECKING:
    from adapter_studio.engine.events import Emit
    from adapter_studio.engine.spec import RunSpec

COMBINABLE = ("lora", "rslora", "loraplus", "dylora")
HOW = ("cat", "svd", "linear", "ties", "dare_linear", "dare_ties", "lorahub")  # the first is the default
SAME_RANK = ("linear", "ties", "dare_linear", "dare_ties", "lorahub")
LORAHUB_EXAMPLES = 32  # LoraHub used 5 to 50; the held-out rows of the first run by default
LORAHUB_TRIALS = 40  # the paper's search budget


@dataclass
class Combined:
    run_dir: Path
    how: str
    rank: int
    trainable_params: int


def combine_runs(run_dirs: list[Path], weights: list[float] | None = None, how: str = "cat", *,
                 density: float = 0.5, output_dir: Path | None = None, name: str | None = None,
                 emit: Emit | None = None, data: Path | None = None, examples: int = LORAHUB_EXAMPLES,
                 trials: int = LORAHUB_TRIALS) -> Combined:  # fmt: skip
    """Combine the runs' LoRA adapters into a new run folder (in `output_dir`, by default the first run's).
    `lorahub` finds the weights on `examples` rows of `data` (default: the first run's held-out rows) in
    `trials` tries; the others use `weights` (default: equal)."""
    import tempfile

    import torch
    from adapter_studio.engine.events import EventLog, Finished, Log, Started
    from adapter_studio.engine.inference.trained import load_base, load_trained
    from adapter_studio.engine.methods import METHODS
    from adapter_studio.engine.runs import COMBINED, new_run_dir
    from adapter_studio.engine.training import checkpoints as ckpt
    from peft import PeftModel

    specs = _check(run_dirs, weights, how, density)
    weights = weights or [1.0 / len(run_dirs)] * len(run_dirs)
    with tempfile.TemporaryDirectory(prefix="combine-") as scratch:
        for i, run_dir in enumerate(run_dirs):  # each run's adapter as peft writes it (DyLoRA: its export rank)
            trained = load_trained(run_dir)
            trained.spec.method.save_adapter(trained.model, str(Path(scratch) / f"a{i}"))
            del trained
        base, tokenizer, task = load_base(specs[0])
        model = PeftModel.from_pretrained(base, str(Path(scratch) / "a0"), adapter_name="a0")
        for i in range(1, len(run_dirs)):
            model.load_adapter(str(Path(scratch) / f"a{i}"), adapter_name=f"a{i}")
    names = [f"a{i}" for i in range(len(run_dirs))]
    found = None
    if how == "lorahub":
        from adapter_studio.engine.combine_weights import examples as example_rows
        from adapter_studio.engine.combine_weights import find_weights

        rows = example_rows(specs[0], tokenizer, task, data, examples)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        found = find_weights(model, names, rows, task, pad, trials, specs[0].training.seed)
        weights = found.weights
    kwargs: dict[str, Any] = {"density": density} if how.startswith(("ties", "dare")) else {}
    with torch.no_grad():
        model.add_weighted_adapter(names, list(weights), "combined", combination_type=_peft_how(how), **kwargs)
    config = model.peft_config["combined"]
    fields = {"name": "rslora" if config.use_rslora else "lora", "r": config.r, "alpha": config.lora_alpha,
              "dropout": config.lora_dropout, "target_modules": sorted(config.target_modules)}  # fmt: skip
    method = METHODS[fields["name"]](**{k: v for k, v in fields.items() if k != "name"})
    spec = specs[0].model_copy(update={"method": method})
    folder = Path(output_dir or Path(run_dirs[0]).parent)
    run_dir = new_run_dir(str(folder), name, f"combined-{how}")
    spec.save(run_dir / "spec.yaml")
    tensors = {_as_default(n): p.detach().contiguous().cpu() for n, p in model.named_parameters()
               if ".combined." in n}  # fmt: skip
    ckpt.save_checkpoint(run_dir / "checkpoints", model, None, SimpleNamespace(state_dict=dict), 0,
                         {"combined_from": [str(r) for r in run_dirs]}, tensors=tensors)  # fmt: skip
    trainable = sum(t.numel() for t in tensors.values())
    # The base and its adapter, as a trained run counts them (the runs combined are not part of it).
    total = sum(p.numel() for n, p in model.base_model.model.named_parameters() if ".lora_" not in n) + trainable
    log = EventLog(run_dir / "events.jsonl")
    events = [
        Started(run_dir=str(run_dir.resolve()), model=spec.model.source, method=method.name, trainable_params=trainable,
                total_params=total, total_steps=0, device="cpu"),
        Log(level="info", message=f"{COMBINED}{how}, weights {', '.join(f'{w:g}' for w in weights)}"
            f"{f', density {density:g}' if kwargs else ''}) from {', '.join(Path(r).name for r in run_dirs)}"),
        *([Log(level="info", message=found.describe())] if found else []),
        Finished(status="completed", step=0, error=None, train_seconds=0.0, tokens_trained=0),
    ]  # fmt: skip
    for event in events:
        log.write(event)
        if emit:
            emit(event)
    log.close()
    return Combined(run_dir, how, int(config.r), trainable)


def _peft_how(how: str) -> str:
    return "linear" if how == "lorahub" else how


def _as_default(name: str) -> str:
    """A combined tensor's name as a trained run's checkpoint holds it (adapter "default")."""
    return name.replace(".combined.", ".default.").replace(".combined", ".default")


def _check(run_dirs: list[Path], weights: list[float] | None, how: str, density: float) -> list[Any]:
    from adapter_studio.engine.inference.trained import run_spec
    from adapter_studio.engine.methods.fusion import FUSABLE
    from adapter_studio.engine.runs import summarize_run
    from adapter_studio.engine.training.checkpoints import latest_checkpoint

    if len(run_dirs) < 2:
        raise UserError("combining needs at least two runs", where="runs", fix="pick two or more finished runs")
    if len({Path(r).resolve() for r in run_dirs}) < len(run_dirs):  # 'linear' silently doubled its update
        raise UserError("a run is given twice", where="runs", fix="give each run once (a weight sets its share)")
    if how not in HOW:
        raise UserError(f"unknown combination {how!r}", where="--how", fix=f"pick one of: {', '.join(HOW)}")
    if how == "lorahub" and weights is not None:
        raise UserError("lorahub finds the weights itself", where="--weights", fix="leave the weights out")
    if weights is not None and len(weights) != len(run_dirs):
        raise UserError(f"{len(weights)} weights for {len(run_dirs)} runs", where="--weights",
                        fix="give one weight per run, in the same order")  # fmt: skip
    if weights is not None and not any(weights):
        raise UserError("every weight is 0: the combined run would change nothing", where="--weights",
                        fix="give at least one run a weight other than 0")  # fmt: skip
    if not 0 < density <= 1:
        raise UserError(f"density {density} is outside (0, 1]", where="--density", fix="pick e.g. 0.5")
    specs = [run_spec(Path(r)) for r in run_dirs]
    for run_dir, spec in zip(run_dirs, specs, strict=True):
        if spec.method.name not in COMBINABLE:
            fusable = " — or fuse bottleneck-adapter runs with --how fusion" if spec.method.name in FUSABLE else ""
            raise UserError(f"{Path(run_dir).name} is {a_or_an(spec.method.title)} run; only LoRA-family runs "
                            "combine", where=str(run_dir),
                            fix=f"pick runs of {', '.join(COMBINABLE)}{fusable}")  # fmt: skip
        status = summarize_run(Path(run_dir)).status
        if status != "completed":  # a failed, stopped or still training run is not the model it was meant to be
            go_on = "wait for it to finish" if status == "running" else "resume it until it completes"
            raise UserError(f"{Path(run_dir).name} is {status}, not finished", where=str(run_dir),
                            fix=f"{go_on}, or pick a finished run")  # fmt: skip
        if spec.method.changes_base:  # each run's adapter belongs to its own rewritten base
            raise UserError(f"{Path(run_dir).name} started its LoRA from the base's own weights ({spec.method.init}), "
                            "which rewrites them; it cannot be added to other runs' adapters", where=str(run_dir),
                            fix="combine runs with the default LoRA start")  # fmt: skip
        if getattr(spec.method, "init", None) == "loftq":  # it holds part of its 4-bit base's quantisation error
            raise UserError(f"{Path(run_dir).name} started its LoRA from the 4-bit base's quantisation error "
                            "(LoftQ); added to other adapters that part would count twice", where=str(run_dir),
                            fix="combine runs with the default LoRA start")  # fmt: skip
        if latest_checkpoint(Path(run_dir) / "checkpoints") is None:
            raise UserError(f"{Path(run_dir).name} has no checkpoint yet", where=str(run_dir),
                            fix="let it train, or pick a finished run")  # fmt: skip
        if spec.model.source != specs[0].model.source:
            raise UserError(f"{Path(run_dir).name} was trained on {spec.model.source}, not {specs[0].model.source}",
                            where=str(run_dir), fix="combine runs of the same base model")  # fmt: skip
    ranks = {_rank(s.method) for s in specs}
    if how in SAME_RANK and len(ranks) > 1:
        raise UserError(f"'{how}' needs runs of one rank; these have ranks {', '.join(map(str, sorted(ranks)))}",
                        where="--how", fix="use 'cat' or 'svd', which combine different ranks")  # fmt: skip
    return specs


def _rank(method: Any) -> int:
    return int(getattr(method, "export_rank", 0) or method.r)


def fusion_spec(run_dirs: list[Path]) -> RunSpec:
    """A run spec that fuses `run_dirs` with AdapterFusion (engine.methods.fusion; it trains, unlike the merges
    above): the first run's model, data and budget, and the fusion's own learning rate, not the adapters';
    checked, so a reason comes before training starts."""
    from adapter_studio.engine.inference.trained import run_spec
    from adapter_studio.engine.methods.fusion import AdapterFusion, fused_methods

    runs = [str(p) for p in run_dirs]
    fused_methods(runs)
    spec = run_spec(run_dirs[0])
    training = spec.training.model_copy(update={"learning_rate": None})
    return spec.model_copy(update={"name": None, "method": AdapterFusion(runs=runs), "training": training})
