"""Optional TensorBoard logging (`training.tensorboard: true`): the run's metrics as standard event
files in `<run>/tensorboard`, for people who already watch their runs in TensorBoard
(`tensorboard --logdir runs`). events.jsonl stays the record the app itself reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapter_studio.engine.events import Eval, Event, Finished, Metrics

FOLDER = "tensorboard"


class TensorBoardLog:
    """Writes Metrics and Eval events as scalars (tags `train/…`, `eval/…`, `memory/…`) by step."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer: Any = SummaryWriter(log_dir=str(run_dir / FOLDER))

    def write(self, event: Event) -> None:
        if isinstance(event, Metrics):
            for tag, value in (
                ("train/loss", event.loss), ("train/learning_rate", event.lr), ("train/grad_norm", event.grad_norm),
                ("train/tokens_per_s", event.tokens_per_s), ("train/epoch", event.epoch),
                ("memory/allocated_mib", event.memory_bytes / 2**20),
                ("memory/peak_mib", (event.memory_peak_bytes or 0) / 2**20 or None),
            ):  # fmt: skip
                if value is not None:
                    self.writer.add_scalar(tag, value, event.step, walltime=event.time)
        elif isinstance(event, Eval):
            for tag, value in (("eval/loss", event.eval_loss), ("eval/accuracy", event.accuracy),
                               ("eval/exact_match", event.exact_match)):
                if value is not None:
                    self.writer.add_scalar(tag, value, event.step, walltime=event.time)
        elif isinstance(event, Finished):
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
