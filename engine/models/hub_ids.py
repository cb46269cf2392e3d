"""What a hub id (`owner/name`) names on this machine, where nothing is downloaded while training.

In order: the model in this machine's Hugging Face cache; for the embedded models' own ids, the copy the app
ships (a person who writes `HuggingFaceTB/SmolLM2-135M-Instruct` means that model); for the models whose
architectures ship under resources/model_configs, that architecture, so the Model and Compare pages show the
size and costs (training it still asks for the weights). The log and the Model page say which it was.
"""

from __future__ import annotations

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.models.embedded import WEIGHTS_NOTE, embedded_name, embedded_source
from adapter_studio.engine.models.source import ModelSource, shipped_config
from adapter_studio.engine.models.weight_files import NO_WEIGHTS, in_hub_cache, not_in_hub_cache

# The hub models resources/model_configs reproduces (its README's table), lower case as the hub matches ids.
SHIPPED_CONFIG_HUB_IDS = {
    "meta-llama/llama-3.1-8b": "llama-3.1-8b",
    "meta-llama/llama-3.2-1b": "llama-3.2-1b",
    "meta-llama/llama-3.2-3b": "llama-3.2-3b",
    "mistralai/mistral-7b-v0.3": "mistral-7b",
    "qwen/qwen2.5-0.5b": "qwen2.5-0.5b",
    "qwen/qwen2.5-1.5b": "qwen2.5-1.5b",
    "qwen/qwen2.5-7b": "qwen2.5-7b",
    "google/gemma-2-2b": "gemma-2-2b",
    "microsoft/phi-3-mini-4k-instruct": "phi-3-mini",
    "huggingfacetb/smollm2-135m": "smollm2-135m",
    "huggingfacetb/smollm2-360m": "smollm2-360m",
    "huggingfacetb/smollm2-1.7b": "smollm2-1.7b",
    "google-bert/bert-base-uncased": "bert-base",
}


def hub_source(repo_id: str) -> ModelSource:
    """A hub id as a source: from the cache, the embedded copy of the same model, or its shipped architecture."""
    if in_hub_cache(repo_id):
        return ModelSource("hub", repo_id, None, repo_id)
    not_cached = f"{repo_id} is not in this machine's Hugging Face cache"
    embedded = embedded_name(repo_id)
    if embedded is not None:
        weights = f" ({WEIGHTS_NOTE[embedded]})" if embedded in WEIGHTS_NOTE else ""
        return embedded_source(embedded, f"{not_cached}: using the copy that ships with the app, "
                                         f"{embedded}{weights}")  # fmt: skip
    shipped = SHIPPED_CONFIG_HUB_IDS.get(repo_id.lower())
    config = None if shipped is None else shipped_config(
        shipped, f"{shipped} (architecture only)",
        f"{not_cached}: its architecture ships with the app ({shipped}), so its size and costs are shown; training "
        f"needs the weights (`hf download {repo_id}` on a machine with internet)")  # fmt: skip
    if config is None:
        raise not_in_hub_cache(repo_id)
    return config


def require_weights(spec_source: str, source: ModelSource) -> None:
    """Refuse to train an architecture without weights, saying why (a hub id that is not here says that)."""
    if source.has_weights:
        return
    if spec_source.strip().lower() in SHIPPED_CONFIG_HUB_IDS:  # the hub id of a shipped architecture
        raise not_in_hub_cache(spec_source.strip())
    if source.note.endswith(NO_WEIGHTS):  # a person's folder, not a shipped architecture
        raise UserError(f"{source.path} {NO_WEIGHTS}", where="model.source",
                        fix="copy the model's weight files into it, or give the folder that has them (without "
                        "weights it can compare costs only)")  # fmt: skip
    raise UserError(
        f"'{spec_source}' is an architecture description without weights",
        where="model.source",
        fix="it can be used to compare costs; to train, pick a model folder, .gguf file or hub id",
    )
