"""Poly: routing by task (Polytropon, Ponti et al. 2023; multi-head routing "MHR", Caccia et al. 2023),
through peft's PolyModel.

Beside each chosen linear layer sit a few LoRA "skills"; a router learns, per task, which skills that
task uses (a weight per skill and task, not per token). A row of task t is computed with the mixture of
the skills under t's weights, so tasks share what they have in common and keep apart what they do not.
The data names each row's task (`data.columns.task`); the task names are recorded in the method
(`tasks`) when training starts, so a run loads, is tried and exported without its data.

peft's layers take the task ids as a `task_ids` argument of every forward; `routed` hands them to every
Poly layer of a model for the duration of a forward (and the backward that may recompute it), which
keeps the engine's own loss paths (the labelled-positions loss, gradient checkpointing) working.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods.base import MethodContext, advanced
from adapter_studio.engine.methods.structured import StructuredUpdate
from pydantic import Field

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.models.info import ModelInfo
    from adapter_studio.engine.spec import TrainingSpec

TASKS_FILE = "tasks.json"  # beside an exported adapter: the task names in the order of their ids
NO_TASKS = "map the data's task column on the Data page (data.columns.task: <column>); each row names its task"


class PolyRouting(StructuredUpdate):
    """peft's Poly: LoRA skills per layer, mixed by a learned per-task router (targets and the nn.Linear
    check as the structured updates')."""

    name: Literal["poly"] = "poly"
    title = "Poly (routing by task)"
    family = "mixture of experts"
    description = (
        "A few LoRA skills beside each chosen layer and a router that learns which skills each task of the "
        "data uses (rows name their task in a task column): tasks share what they have in common."
    )
    mergeable = False  # the update depends on the row's task
    typical_share = "≈ 3–7% (several LoRAs a layer)"
    # peft scales the update by 1/r (LoRA: alpha/r), so it takes a higher rate: on every linear layer of
    # SmolLM2, SVAMP + MultiArith (benchmarks/poly_routing.py) 2e-3 0.309, 5e-3 0.274, 1e-2 0.267, 2e-2 0.313.
    default_lr = 1e-2
    supported_models = "models built from nn.Linear layers (not GPT-2); data with a task column"
    routes_by_task: ClassVar[bool] = True
    supports_conv1d = False  # peft's Poly layers wrap nn.Linear only

    r: int = Field(8, ge=1, le=512, description="Rank of each skill.")
    skills: int = Field(4, ge=1, le=64, description="LoRA skills beside each chosen layer, shared by the tasks.")
    splits: int = Field(1, ge=1, le=64, description="Heads of the router (multi-head routing when above 1): "
                        "each skill is cut into this many parts, mixed apart. Must divide the layers' widths.",
                        json_schema_extra=advanced())  # fmt: skip
    tasks: list[str] = Field(default_factory=list, description="The tasks the router knows, in the order of "
                             "their ids; read from the data's task column when training starts.")  # fmt: skip

    def check(self, info: ModelInfo, training: TrainingSpec) -> None:
        super().check(info, training)  # and nn.Linear layers only
        widths = info.linear_widths or [info.hidden_size]
        if self.splits > 1 and any(w % self.splits for w in widths):
            raise UserError(f"{self.title}: {self.splits} splits do not divide every layer width of this model "
                            f"({', '.join(map(str, sorted(set(widths))))})", where="method.splits",
                            fix="pick 1, or a power of two that divides them")  # fmt: skip
        if training.compile == "on":
            raise UserError(f"{self.title} hands each step's task ids to its layers, which the compiled step "
                            "does not see", where="training.compile", fix="set training.compile to auto or off")

    def with_tasks(self, names: list[str] | None, packing: bool, where: str) -> PolyRouting:
        """This method for data with these task names (None: the data has no task column); the names a run
        recorded must be the data's when it resumes or trains again."""
        if not names:
            raise UserError(f"{self.title} routes every row by its task, and the data has no task column",
                            where=where, fix=NO_TASKS)  # fmt: skip
        if packing:
            raise UserError(f"{self.title} routes every row by its task, and packing puts rows of several tasks "
                            "in one sequence", where="data.packing", fix="turn packing off")  # fmt: skip
        if self.tasks and self.tasks != names:
            raise UserError(f"the run's tasks ({', '.join(self.tasks)}) are not the data's ({', '.join(names)})",
                            where=where, fix="train on data with the same tasks, or start a new run")  # fmt: skip
        return self.model_copy(update={"tasks": list(names)})

    def peft_config(self, ctx: MethodContext) -> Any:
        import re

        from peft import PolyConfig

        blocks = ctx.info.layers_path
        # The blocks' layers only: a layer outside them may read one vector per row (BERT's pooler), which
        # Poly's batched product over (rows, tokens, width) cannot take.
        outside = {"exclude_modules": rf"(?!{re.escape(blocks)}\.).*"} if blocks else {}
        return PolyConfig(**self.common(ctx), **outside, r=self.r, n_tasks=max(1, len(self.tasks)),
                          n_skills=self.skills, n_splits=self.splits)  # fmt: skip

    def save_adapter(self, model: torch.nn.Module, out_dir: str) -> None:
        import json
        from pathlib import Path

        super().save_adapter(model, out_dir)
        (Path(out_dir) / TASKS_FILE).write_text(json.dumps({"tasks": self.tasks}, indent=1), encoding="utf-8")

    def task_index(self, task: str | None) -> int:
        """The router's id of a task name (None: the first task)."""
        if task is None:
            return 0
        if task not in self.tasks:
            raise UserError(f"unknown task '{task}'", where="task",
                            fix=f"pick one of the run's tasks: {', '.join(self.tasks)}")  # fmt: skip
        return self.tasks.index(task)


Task = TypeVar("Task", bound=Hashable)
Answer = TypeVar("Answer")


def answer_by_task(tasks: list[Task] | None, count: int,
                   answer: Callable[[Task | None, list[int]], list[Answer]]) -> list[Answer]:  # fmt: skip
    """`answer(task, positions)` for the positions of each task in turn (tasks in their first appearance's
    order; `tasks` None: all `count` positions at once, as task None), the answers back in position order."""
    groups: dict[Task | None, list[int]] = {}
    for i, task in enumerate(tasks if tasks is not None else [None] * count):
        groups.setdefault(task, []).append(i)
    out: list[Any] = [None] * count
    for task, positions in groups.items():
        for i, found in zip(positions, answer(task, positions), strict=True):
            out[i] = found
    return out


def _poly_layers(model: torch.nn.Module) -> list[Any]:
    from peft.tuners.poly.layer import Linear

    return [m for m in model.modules() if isinstance(m, Linear)]


@contextmanager
def routed(model: torch.nn.Module, task_ids: torch.Tensor | int | None) -> Iterator[None]:
    """Inside, every Poly layer of `model` reads `task_ids`: one per row, or one id for every row. Nothing
    changes for a model without Poly layers or without task ids."""
    layers = _poly_layers(model) if task_ids is not None else []
    if not layers:
        yield
        return
    import torch

    def hand_task_ids(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        x = args[0] if args else kwargs["x"]
        ids = task_ids if isinstance(task_ids, torch.Tensor) else torch.full((x.shape[0],), int(task_ids))
        return args, {**kwargs, "task_ids": ids.to(x.device)}

    handles = [layer.register_forward_pre_hook(hand_task_ids, with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def route_batch(model: torch.nn.Module, batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The batch's model inputs (without `task_ids`), with its rows routed by their tasks while inside."""
    task_ids = batch.get("task_ids")
    with routed(model, task_ids):
        yield batch if task_ids is None else {k: v for k, v in batch.items() if k != "task_ids"}
