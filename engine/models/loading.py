"""Finding and loading base models: folders, GGUF files, embedded models, shipped configs, hub ids."""

from __future__ import annotations

import copy
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.imports import import_heavy_modules
from adapter_studio.engine.models.construction import model_construction
from adapter_studio.engine.models.embedded import EMBEDDED_MINILM, EMBEDDED_SMOLLM2, embedded_source
from adapter_studio.engine.models.encoders import refuse_an_encoder
from adapter_studio.engine.models.gguf_cache import converted_source, converts_in_float32
from adapter_studio.engine.models.hub_ids import hub_source, require_weights
from adapter_studio.engine.models.source import MODEL_CONFIGS, ModelSource, shipped_config
from adapter_studio.engine.models.weight_files import check_safetensors, folder_source, has_weight_files

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.spec import ModelSpec


def shipped_config_names() -> list[str]:
    return (
        sorted(p.name for p in MODEL_CONFIGS.iterdir() if (p / "config.json").exists())
        if MODEL_CONFIGS.exists()
        else []
    )


def resolve_source(source: str) -> ModelSource:
    """Turn `model.source` into a ModelSource; errors say what was looked for."""
    source = source.strip()
    if not source:
        raise UserError("model.source is empty", where="model.source",
                        fix=f"give a model folder, a .gguf file, a hub id or {EMBEDDED_SMOLLM2}")  # fmt: skip
    if source.startswith("embedded:"):
        return embedded_source(source)
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file not found: {path}", where="model.source", fix="check the path")
        if path.stat().st_size == 0:
            raise UserError(f"{path} is empty (0 bytes)", where="model.source",
                            fix="copy or download the .gguf file again")  # fmt: skip
        return ModelSource("gguf", str(path.parent.resolve()), path.name, path.stem)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        # A config.json beside a .gguf and no other weights: the GGUF; without either, an architecture (costs only).
        if (path / "config.json").exists() and (has_weight_files(path) or not ggufs):
            return folder_source(path)
        if ggufs:
            return ModelSource("gguf", str(path.resolve()), ggufs[0].name, ggufs[0].stem)
        raise UserError(
            f"{path} has no config.json and no .gguf file",
            where="model.source",
            fix="pick a Hugging Face model folder (with config.json) or a .gguf file",
        )
    if (config := shipped_config(source)) is not None:
        return config
    if path.exists():
        raise UserError(f"{path} is not a model folder or .gguf file", where="model.source",
                        fix="give a model folder (with config.json), a .gguf file or a hub id")  # fmt: skip
    if source.count("/") == 1 and not source.startswith((".", "/")):
        return hub_source(source)
    raise UserError(
        f"model not found: {source}",
        where="model.source",
        fix=f"give a model folder, a .gguf file, a hub id (owner/name) or an embedded model ({EMBEDDED_SMOLLM2}, "
        f"{EMBEDDED_MINILM}); to compare costs only, an architecture without weights: "
        f"{', '.join(shipped_config_names())}",
    )  # fmt: skip


def _clear_gguf_quantization(model: Any) -> None:
    # GGUF weights arrive dequantised to float32 but the model stays marked as quantized, which
    # makes save_pretrained (merged export) refuse; the marker is all that needs to go (FACTS.md).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _gguf_config_cache(source: ModelSource) -> Path:
    from adapter_studio.engine.app_cache import app_cache_dir
    from adapter_studio.engine.models.gguf_cache import gguf_key

    return app_cache_dir() / "gguf-configs" / f"{gguf_key(source)}.json"


def load_config(source: ModelSource, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    try:
        if source.kind == "gguf":
            # Parsing a GGUF header (vocabulary included) takes seconds: keep the result on disk.
            cache = _gguf_config_cache(source)
            if cache.exists():
                return AutoConfig.for_model(**read_json(cache))
            config = AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file)
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(config.to_dict()))
            except OSError:
                pass  # a read-only home only costs the seconds again
            return config
        return AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        shown = source.location  # the file, for a GGUF
        raise UserError(f"cannot read the model's configuration: {e}", where=f"model.source ({shown})") from None


def build_meta_model(config: Any, task: str, num_labels: int = 2, trust_remote_code: bool = False,
                     dtype: Any = None) -> Any:
    """The model's structure without weights (meta device): for counts, targets and estimates.
    With `dtype`, built as loading in that dtype builds it (buffers such as rotary frequencies stay
    float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = copy.deepcopy(config)  # transformers writes dtype and labels into it; the caller's is a cache key
    extra = {"dtype": dtype} if dtype is not None else {}
    with torch.device("meta"), model_construction():  # transformers switches the process's default dtype
        if task == "classification":
            config.num_labels = num_labels
            return AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code,
                                                                  **extra)
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, **extra)


def default_task(config: Any) -> str:
    archs = getattr(config, "architectures", None) or []
    decoder = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or getattr(config, "is_decoder", False)
    if decoder:
        return "causal_lm"
    return (
        "classification"
        if config.model_type in ("bert", "roberta", "distilbert", "deberta-v2", "electra")
        else "causal_lm"
    )


@dataclass(frozen=True)
class ModelSummary:
    """What the Model page shows before anything heavy is loaded."""

    name: str
    kind: str
    architecture: str
    model_type: str
    params: int
    file_bytes: int
    num_layers: int
    hidden_size: int
    info: Any = None  # adapter_studio.engine.models.info.ModelInfo of the meta model (layer names for targets)
    note: str = ""


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def summarize_model(source_text: str) -> ModelSummary:
    """Name, architecture and size of a model without loading its weights."""
    from adapter_studio.engine.models.info import describe_model

    source = resolve_source(source_text)
    config = load_config(source)
    task = default_task(config)
    model = build_meta_model(config, task)
    files = source.location
    size = folder_bytes(files) if source.kind in ("folder", "gguf") else 0
    return ModelSummary(
        name=source.display_name,
        kind=source.kind,
        architecture=(getattr(config, "architectures", None) or [type(model).__name__])[0],
        model_type=config.model_type,
        params=sum(p.numel() for p in model.parameters()),
        file_bytes=size,
        num_layers=int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0)),
        hidden_size=int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0)),
        info=describe_model(model),
        note=source.note,
    )


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    source = converted_source(source)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the tokenizer: {e}", where=f"model.source ({source.path})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def trains_in_base_dtype(method: Any) -> bool:
    """Methods whose trained parameters take the base weights' dtype: the model's own weights
    (BitFit, last layers, full) or modules injected beside them (bottleneck adapters). Their base
    stays float32, since AdamW on bf16 parameters loses small updates."""
    return method.adapter_format in ("selective", "bottleneck")


def weights_dtype(choice: str, device: str, base_trains: bool, precision: str = "float32") -> Any:
    """The dtype a run loads its base in, for `model.dtype` = `choice` ("auto" or a torch dtype name).

    Frozen bases load in bf16/fp16 on GPUs (half the memory), and in bf16 on CPUs that compute in
    bf16 (autocast would otherwise cast every weight for every matmul: 1.15× tokens/s on the demo here,
    same loss — benchmarks/cpu_speed_options.py); trained weights stay float32. The estimate asks the
    same for a GPU this machine may not have (bf16 then, as on any recent GPU)."""
    import torch

    if choice != "auto":
        return getattr(torch, choice)
    if device == "cuda" and not base_trains:
        fp16_only = torch.cuda.is_available() and not torch.cuda.is_bf16_supported()
        return torch.float16 if fp16_only else torch.bfloat16
    if device == "cpu" and not base_trains and precision == "bf16":
        return torch.bfloat16
    return torch.float32


def load_model(
    spec: ModelSpec, task: str, *, dtype: Any = None, id2label: dict[int, str] | None = None
) -> tuple[torch.nn.Module, Any, ModelSource]:
    """Load weights and tokenizer for training; returns (model, tokenizer, source)."""
    import_heavy_modules()  # before torch: the cycle collector is paused while they import
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    original = resolve_source(spec.source)
    require_weights(spec.source, original)
    source = converted_source(original)
    if source.gguf_file and spec.quantization != "none":
        source = _converted_for_quantising(spec, original, task)
    if source.gguf_file and converts_in_float32(source, task, spec.quantization, dtype):
        # Read once in float32 so the conversion is kept (only float32 is), then cast: the same weights a
        # load in `dtype` gives, and the next load of this file comes from the folder in about a second.
        model, tokenizer, _ = load_model(spec, task, dtype=torch.float32, id2label=id2label)
        model.to(dtype).config.dtype = dtype
        return model, tokenizer, original
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if source.kind == "hub":
        kwargs["local_files_only"] = True  # nothing downloads while training
    if source.kind in ("folder", "hub") and not spec.allow_pickle_weights:
        check_safetensors(source)
        kwargs["use_safetensors"] = True
    if dtype is not None:
        kwargs["dtype"] = dtype
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    if spec.quantization != "none":
        kwargs["quantization_config"] = _quantization_config(spec.quantization, spec.device, task, dtype)
    labels = id2label or {0: "0", 1: "1"}
    try:
        with model_construction():  # one build at a time: transformers switches process-wide settings
            if task == "classification":
                # A saved head of another size is replaced (`replaced_head` says so); any other mismatch stays
                # transformers' error.
                new_head = head_note(source, len(labels), spec.trust_remote_code) is not None
                model = AutoModelForSequenceClassification.from_pretrained(
                    source.path, num_labels=len(labels), id2label={int(k): v for k, v in labels.items()},
                    label2id={v: int(k) for k, v in labels.items()}, ignore_mismatched_sizes=new_head, **kwargs,
                )  # fmt: skip
            else:
                refuse_an_encoder(load_config(source, spec.trust_remote_code), source.display_name or source.path)
                model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError) as e:
        shown = source.location
        raise UserError(f"cannot load the model: {e}", where=f"model.source ({shown})",
                        fix="check that the files are whole (copy or download them again)" if source.gguf_file
                        or "safetensors" in str(e) else None) from None  # fmt: skip
    if source.gguf_file:
        _clear_gguf_quantization(model)
    tokenizer = load_tokenizer(source, spec.trust_remote_code)
    if source.gguf_file and task == "causal_lm" and spec.quantization == "none":
        from adapter_studio.engine.models.gguf_cache import keep_conversion

        keep_conversion(source, model, tokenizer)
    if task == "classification" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, original


def replaced_head(config: Any, labels: int) -> str | None:
    """The note for a classifier saved with a head of another size (an SST-2 model, 2 labels, tuned on 4 news
    topics): its head is replaced by a new one, trained from the start; None where the head is kept or new."""
    heads = [a for a in getattr(config, "architectures", None) or [] if a.endswith("ForSequenceClassification")]
    if not heads or getattr(config, "num_labels", labels) == labels:
        return None
    return (f"the model's classification head has {config.num_labels} labels and the data {labels}: a new head "
            f"of {labels} replaces it and learns from the start")  # fmt: skip


def head_note(source: ModelSource, labels: int, trust_remote_code: bool = False) -> str | None:
    """`replaced_head` for a model source, read from its saved config: `load_model` replaces the head where
    there is one to say, and a run logs it."""
    return replaced_head(load_config(source, trust_remote_code), labels)


def _converted_for_quantising(spec: ModelSpec, original: ModelSource, task: str) -> ModelSource:
    """transformers does not quantise a GGUF file's weights as it reads them: they are converted once to a
    float32 folder (engine.models.gguf_cache: an unquantised load keeps it) and quantised from there."""
    import torch

    load_model(spec.model_copy(update={"quantization": "none"}), task, dtype=torch.float32)
    source = converted_source(original)
    if source.gguf_file:
        raise UserError(
            f"a {spec.quantization} base is made from a float32 copy of the GGUF file, which the app keeps only "
            "for generation models up to 3 GiB of float32 weights",
            where="model.quantization",
            fix="pick the model's Hugging Face folder (safetensors) for a quantised base, or set quantization to none",
        )
    return source


def quantization_problem(kind: str = "4bit", device: str = "auto") -> UserError | None:
    """Why a 4-bit/8-bit base cannot load for `device` (model.device) here, or None.

    bitsandbytes (0.49 and later) quantises on CUDA GPUs and on CPUs (its CPU backend: packed 4-bit
    and 8-bit weights in RAM), not on Apple's MPS."""
    import torch

    # where the run lands, in engine.training.devices.pick_device's order (models sit below training)
    mps_available = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "mps" or (device == "auto" and not torch.cuda.is_available() and mps_available):
        return UserError(
            f"{kind} quantised bases train on CUDA GPUs and CPUs (bitsandbytes), not on mps",
            where="model.quantization",
            fix="set model.device to cpu, or model.quantization to none",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        return UserError(
            "4-bit and 8-bit bases need the bitsandbytes package",
            where="model.quantization",
            fix="pip install bitsandbytes, or set model.quantization to none",
        )
    return None


def quantised_weights_refusal(title: str, kind: str) -> UserError:
    """Training a 4-/8-bit base's own packed weights (full fine-tuning, last layers): the run and estimate say it."""
    return UserError(f"{title} trains base weights, which cannot train while quantised to {kind}",
                     where="model.quantization", fix="set model.quantization to none, or pick a method that keeps "
                     "the base frozen (LoRA on a 4-bit base is QLoRA)")  # fmt: skip


def _quantization_config(kind: str, device: str, task: str, dtype: Any) -> Any:
    import torch

    problem = quantization_problem(kind, device)
    if problem is not None:
        raise problem
    from transformers import BitsAndBytesConfig

    # A classifier's new head trains in full (peft copies it into modules_to_save): it stays unquantised, as
    # transformers keeps a language model's output layer by itself (its own list, used when this is None).
    skip = ["classifier", "score"] if task == "classification" else None
    if kind == "4bit":
        # The 4-bit layers compute in the dtype the caller loads the rest in: bf16 where the run computes in
        # it (GPUs, CPUs with bf16 units: engine.models.loading.weights_dtype), float32 elsewhere.
        half = dtype in (torch.bfloat16, torch.float16)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype if half else torch.float32,
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
