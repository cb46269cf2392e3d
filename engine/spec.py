"""The run spec: one pydantic model that is the spec file, the CLI's `--set` target and the forms.

Everything but `model.source` and `data.path` has a default; defaults that depend on the model
(target modules, batch size, learning rate, maximum length) are `None` here and filled by
`adapter_studio.engine.defaults.resolve_spec` once the model's structure is known, so the saved `spec.yaml` of a
run holds every value it used.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from adapter_studio.engine import durable
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.machines import MachinesSpec
from adapter_studio.engine.methods import METHOD_CLASSES, METHODS, MethodSpec
from adapter_studio.engine.objectives import OBJECTIVE_CLASSES, OBJECTIVES, ObjectiveSpec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ADVANCED = {"advanced": True}  # shown in the form's collapsible "Advanced" section
DataFormat = Literal[
    "alpaca", "messages", "sharegpt", "prompt_completion", "text", "classification", "preference", "kto"
]


class SpecSection(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(SpecSection):
    source: str = Field(
        description="A model folder, a .gguf file, a shipped config name or a hub id already on this machine."
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code that ships with the model. Only for models you trust."
    )
    allow_pickle_weights: bool = Field(
        False,
        json_schema_extra=ADVANCED,
        description="Load weights saved as pickles (.bin, .pt), which can run code when loaded. Off: safetensors "
        "only. Only for models you trust.",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="Where to train: auto picks the GPU when there is one."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Precision of the frozen base weights: auto is bf16 on GPUs that have it, else float32."
    )
    task: Literal["auto", "causal_lm", "classification"] = Field(
        "auto", description="Text generation or sequence classification: auto follows the data format."
    )
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none", description="Load the base in 4-bit NF4 or 8-bit (QLoRA; bitsandbytes, on a CUDA GPU or the CPU)."
    )


class DataSpec(SpecSection):
    path: str | list[str] = Field(description="A data file (JSON, JSONL, CSV, TSV, Parquet, TXT), folder or list.")
    format: DataFormat | None = Field(None, description="Shape of the rows; detected from the columns when empty.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Role → column name, e.g. {instruction: question, output: answer}."
    )
    eval_split: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Share of rows held out for evaluation (0: none; empty: 10 %, less below 500 rows).",
    )
    eval_path: str | None = Field(None, description="A separate evaluation file (replaces eval_split).")
    max_length: int | None = Field(
        None, ge=8, le=131072, description="Longest tokenised example; longer ones are truncated."
    )
    system_prompt: str | None = Field(None, description="System message put before every conversation.")
    template: str | None = Field(
        None,
        description="Prompt template with {instruction} and {input} instead of the tokenizer's chat template.",
    )
    packing: bool = Field(False, description="Pack several short examples into one sequence (no padding).")
    max_rows: int | None = Field(None, ge=1, description="Use only the first N rows (quick trials).")


class TrainingSpec(SpecSection):
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    epochs: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="Passes over the training data (empty: from its size, one to three passes).",
    )
    batch_size: int | None = Field(None, ge=1, le=4096, description="Examples per step on each device.")
    gradient_accumulation: int = Field(
        1, ge=1, le=1024, json_schema_extra=ADVANCED, description="Micro-batches summed before each step."
    )
    learning_rate: Annotated[float, Field(gt=0, le=10.0)] | Literal["auto"] | None = Field(
        None,
        json_schema_extra={"choice_labels": {"auto": "find automatically"}},
        description="Peak learning rate (empty: the method's default; auto: found by a short range test on your "
        "own data before training, and saved with the run).",
    )
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, json_schema_extra=ADVANCED, description="AdamW weight decay.")
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", json_schema_extra=ADVANCED, description="Learning-rate schedule."
    )
    warmup_ratio: float = Field(
        0.05, ge=0.0, le=0.5, json_schema_extra=ADVANCED, description="Share of steps spent warming up."
    )
    min_lr_ratio: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        json_schema_extra=ADVANCED,
        description="Where a cosine or linear schedule ends, as a share of the peak rate: a short run keeps "
        "learning to its last step instead of decaying to zero.",
    )
    max_grad_norm: float = Field(
        1.0, ge=0.0, le=1000.0, json_schema_extra=ADVANCED, description="Gradient clipping (0: off)."
    )
    optimizer: Literal["adamw", "adamw_8bit", "sgd"] = Field(
        "adamw", json_schema_extra=ADVANCED, description="Optimizer."
    )
    precision: Literal["auto", "float32", "bf16", "fp16"] = Field(
        "auto", description="Compute precision: auto uses bf16 where the device runs it fast."
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto",
        json_schema_extra=ADVANCED,
        description="Recompute activations in the backward pass to save memory (about a third more compute). "
        "auto: on only where the memory estimate says a step does not fit this device without it; "
        "true/false are on/off.",
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        json_schema_extra=ADVANCED,
        description="Compile the training step with torch.compile: half a minute or more of compiling the first "
        "time (seconds once cached), then faster steps (1.2–1.5× on the demo on a 2-core CPU, 1.3× on one GPU). "
        "auto: in a one-process run whose time left, judged after its first 10 steps, pays the cost back five "
        "times (the cost measured by the last run of the same model and method, else a minute); on: from the "
        "start (a C++ compiler on a CPU, triton on a GPU).",
    )

    @field_validator("compile", "gradient_checkpointing", mode="before")
    @classmethod
    def _switch_from_bool(cls, value: Any) -> Any:
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    seed: int = Field(
        0, ge=0, json_schema_extra=ADVANCED, description="Random seed for data order, dropout and initialisation."
    )
    save_every: int = Field(
        100, ge=1, json_schema_extra=ADVANCED, description="Write a checkpoint every N steps (and always at the end)."
    )
    eval_every: int | None = Field(
        None,
        ge=1,
        json_schema_extra=ADVANCED,
        description="Evaluate every N steps (empty: at each checkpoint and at the end).",
    )
    eval_on_start: bool = Field(
        False,
        json_schema_extra=ADVANCED,
        description="Also evaluate before the first step: the held-out loss training starts from.",
    )
    eval_samples: int = Field(
        32,
        ge=0,
        le=10000,
        json_schema_extra=ADVANCED,
        description="Held-out examples answered by generation for exact match (0: off).",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        json_schema_extra=ADVANCED,
        description="Stop when eval loss has not improved for this many evaluations.",
    )
    log_every: int = Field(1, ge=1, json_schema_extra=ADVANCED, description="Report metrics every N steps.")
    tensorboard: bool = Field(
        False, json_schema_extra=ADVANCED, description="Also write TensorBoard event files in the run folder."
    )
    devices: int = Field(
        1,
        ge=1,
        le=64,
        json_schema_extra=ADVANCED,
        description="Processes to train with (several GPUs through accelerate).",
    )
    distributed: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp",
        json_schema_extra=ADVANCED,
        description="How several devices share the work: DDP (a full copy each), FSDP or DeepSpeed ZeRO-2 "
        "(sharded; CUDA GPUs only).",
    )
    machines: MachinesSpec = Field(
        default_factory=MachinesSpec,
        json_schema_extra=ADVANCED,
        description="Several machines: a count (or a host list), machine 0's address and port, and this "
        "machine's rank. Each machine runs the same spec with its own rank.",
    )


MethodUnion = Annotated[Union[tuple(METHOD_CLASSES)], Field(discriminator="name")]  # type: ignore[valid-type]  # noqa: UP007
ObjectiveUnion = Annotated[Union[tuple(OBJECTIVE_CLASSES)], Field(discriminator="name")]  # type: ignore[valid-type]  # noqa: UP007
# Tagged sections: the spec key, its registry, the tag a section without `name` gets.
TAGGED = {"method": (METHODS, "lora"), "objective": (OBJECTIVES, "sft")}


class RunSpec(SpecSection):
    model: ModelSpec
    data: DataSpec
    method: MethodUnion = Field(default_factory=lambda: METHODS["lora"]())
    objective: ObjectiveUnion = Field(
        default_factory=lambda: OBJECTIVES["sft"](),
        description="What training optimises: sft (the answers in the data) or a preference objective "
        "(dpo, ipo, simpo, orpo) on pairs of chosen and rejected answers.",
    )
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    output_dir: str = Field("runs", description="Folder that holds the run folders.")
    name: str | None = Field(None, description="Run folder name (empty: method and time).")

    @model_validator(mode="before")
    @classmethod
    def _method_defaults_to_lora(cls, data: Any) -> Any:
        for key, (_, default) in TAGGED.items():
            if isinstance(data, dict) and isinstance(data.get(key), dict) and "name" not in data[key]:
                data = {**data, key: {"name": default, **data[key]}}
        return data

    def to_yaml(self, as_given: bool = False) -> str:
        """`as_given`: only the values set, so what the app fills in from the data is filled in again on reading."""
        return yaml.safe_dump(self.model_dump(mode="json", exclude_unset=as_given), sort_keys=False, allow_unicode=True)

    def save(self, path: Path, as_given: bool = False) -> None:
        durable.write_text(path, self.to_yaml(as_given))


# --- reading, overriding and explaining -------------------------------------------------------


def load_spec_file(path: str | Path, overrides: list[str] | None = None) -> RunSpec:
    """Read a YAML spec, apply `--set` overrides, validate; errors name file, line and field."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"spec file not found: {path}", fix="check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(
            f"not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})",
            where=f"{path}:{line}",
            fix="save the spec file as UTF-8",
        ) from None
    except OSError as e:
        raise UserError(f"cannot read the spec file: {e.strerror or e}", where=str(path)) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # one line, whatever the reader said
        raise UserError(f"not valid YAML ({problem})", where=where, fix="fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError("a spec file must be a mapping with model, data, method, training", where=str(path))
    base = path.parent
    for section, key in (("model", "source"), ("data", "path"), ("data", "eval_path")):
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        # Relative paths in a spec file mean relative to the file, as a person would expect.
        if isinstance(value, str) and not Path(value).is_absolute() and (base / value).exists():
            data[section][key] = str((base / value).resolve())
    apply_overrides(data, overrides or [])
    return parse_spec(data, origin=str(path), text=text)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> None:
    """`a.b=v` sets a nested key (creating levels); v is YAML, so `[q_proj,v_proj]` is a list."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set needs key=value, got '{item}'", fix="e.g. --set training.max_steps=3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value


def parse_spec(data: dict[str, Any], origin: str = "spec", text: str | None = None) -> RunSpec:
    try:
        return RunSpec.model_validate(data)
    except ValidationError as e:
        raise _explain(e, data, origin, text) from None


_UNION_MEMBER = re.compile(r"(constrained-)?(float|int|str|bool)|literal\[.*\]|(list|dict)\[.*\]")


def _field_path(loc: tuple[Any, ...], data: dict[str, Any]) -> list[str]:
    # A union field puts the member that failed in the location (learning_rate.constrained-float): drop it.
    parts = [str(p) for p in loc if not (isinstance(p, str) and _UNION_MEMBER.fullmatch(p))]
    # A discriminated union puts the tag in the location: method.<tag>.field → method.field.
    if len(parts) >= 2 and parts[0] in TAGGED and parts[1] in TAGGED[parts[0]][0]:
        parts = [parts[0], *parts[2:]]
    return parts


def _valid_keys(path: list[str], data: dict[str, Any]) -> list[str]:
    model: type[BaseModel] | None = RunSpec
    for part in path[:-1]:
        if model is RunSpec and part in TAGGED:
            registry, default = TAGGED[part]
            name = data.get(part, {}).get("name", default) if isinstance(data.get(part), dict) else default
            model = registry.get(name)
            continue
        field = model.model_fields.get(part) if model else None
        annotation = getattr(field, "annotation", None)
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return list(model.model_fields) if model else []


def _explain(error: ValidationError, data: dict[str, Any], origin: str, text: str | None) -> UserError:
    first = error.errors()[0]
    path = _field_path(first["loc"], data)
    dotted = ".".join(path)
    line = _line_of(text, path) if text else None
    where = f"{origin}:{line}" if line else origin
    if first["type"] == "extra_forbidden":
        near = difflib.get_close_matches(path[-1], _valid_keys(path, data), n=3, cutoff=0.5)
        valid = _valid_keys(path, data)
        fix = f"did you mean {', '.join(near)}?" if near else f"valid keys here: {', '.join(valid)}"
        return UserError(f"unknown key {dotted!r}", where=where, fix=fix)  # repr: a key may hold a line break
    if first["type"] == "missing":
        return UserError(f"'{dotted}' is required", where=where, fix=f"add {dotted} to the spec")
    if first["type"] == "union_tag_invalid":
        section = str(first["loc"][0])
        registry = TAGGED[section][0]
        bad = data.get(section, {}).get("name")
        near = difflib.get_close_matches(str(bad), registry, n=3)
        fix = f"did you mean {', '.join(near)}?" if near else f"known {section}s: {', '.join(registry)}"
        return UserError(f"unknown {section} '{bad}'", where=f"{where} ({section}.name)", fix=fix)
    got = first.get("input")
    # A union field fails once per member: say what each would have taken ("greater than 0 or 'auto'").
    wanted = [e["msg"].lower() for e in error.errors() if _field_path(e["loc"], data) == path]
    what = " or ".join(dict.fromkeys(wanted))
    return UserError(f"{dotted}: {what} (got {got!r})", where=where, fix=f"change {dotted} in the spec")


def _line_of(text: str, path: list[str]) -> int | None:
    """1-based line of a dotted key in YAML text, or of its nearest existing parent."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in path:
        if not isinstance(node, yaml.MappingNode):
            break
        for key, value in node.value:
            if key.value == part:
                line, node = key.start_mark.line + 1, value
                break
        else:
            break
    return line


def method_from_dict(data: dict[str, Any]) -> MethodSpec:
    """Validate a method alone (the window's form uses this as values are typed)."""
    from adapter_studio.engine.methods import method_class

    try:
        return method_class(data.get("name", "lora")).model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UserError(f"method.{field}: {first['msg'].lower()}", where="method", fix="change the value") from None


def objective_from_dict(data: dict[str, Any]) -> ObjectiveSpec:
    """Validate an objective alone (the window's form)."""
    from adapter_studio.engine.objectives import objective_class

    try:
        return objective_class(data.get("name", "sft")).model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UserError(
            f"objective.{field}: {first['msg'].lower()}", where="objective", fix="change the value"
        ) from None
