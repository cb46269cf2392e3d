"""Defaults that fit the chosen model and method, filled in before a run is saved."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapter_studio.engine.models.info import ModelInfo
    from adapter_studio.engine.spec import RunSpec

DEFAULT_MAX_LENGTH = 512
# On a CPU, eager attention beats the fused SDPA kernel for short batches of a decoder (SmolLM2 forward +
# backward, batch 4, bf16: width 120 0.47 s vs 0.61 s, 256 about equal, 512 slower — measured here), so
# training picks the attention kernel by each batch's width there (training.speed.SpeedOptions); the
# estimate follows.
CPU_EAGER_MAX_WIDTH = 192


def model_max_length(config: Any) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_LENGTH


def resolve_spec(spec: RunSpec, info: ModelInfo, config: Any, task: str) -> RunSpec:
    """A copy of the spec with every model-dependent `None` replaced by a value that fits."""
    method = spec.method.fill_defaults(info)
    training = spec.training.model_copy(
        update={
            "batch_size": spec.training.batch_size or method.default_batch_size,
            "learning_rate": spec.training.learning_rate or method.default_lr,
        }
    )
    data = spec.data.model_copy(
        update={"max_length": spec.data.max_length or min(DEFAULT_MAX_LENGTH, model_max_length(config))}
    )
    model = spec.model.model_copy(update={"task": task})
    return spec.model_copy(update={"method": method, "training": training, "data": data, "model": model})
