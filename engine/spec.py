"""The run spec: one pydantic model that is the spec file, the CLI's `--set` target and the forms.

Everything but `model.source` and `data.path` has a default; defaults that depend on the model
(target modules, batch size, learning rate, maximum length) are `None` here and filled by
`adapter_studio.engine.defaults.resolve_spec` once the model's structure is known, so the saved `spec.yaml` of a
run holds every value it used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from adapter_studio.engine import durable
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.machines import MachinesSpec
from adapter_studio.engine.methods import METHOD_CLASSES, METHODS, MethodSpec
from adapter_studio.engine.objectives import OBJECTIVE_CLASSES, OBJECTIVES, ObjectiveSpec
from adapter_studio.engine.runs import NOT_ONE_FOLDER, is_one_folder_name
from adapter_studio.engine.spec_errors import TAGGED, check_truth_values, explain, sentence_case
from adapter_studio.engine.spec_overrides import apply_overrides, drop_the_other_kinds_fields
from adapter_studio.engine.spec_yaml import read_spec_yaml
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
        description="Share of rows held out for evaluation (0: none; empty: 10 %, at most 2,000 rows, less below "
        "500 rows).",
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
    label_names: dict[str, str] = Field(
        default_factory=dict,
        description="Classification: a name for labels as the data writes them, e.g. {1: World, 2: Sports}; "
        "the run, Try, Evaluate and the exported model use the names.",
    )

    @field_validator("label_names", mode="before")
    @classmethod
    def _names_as_text(cls, value: Any) -> Any:
        """YAML reads `{1: World}` with a number for a key, `{true: spam}` with a true/false: keys are read as a
        row's label is (1.0 is 1, true is `true`), and compared as text."""
        from adapter_studio.engine.data.shapes import label_value

        if not isinstance(value, dict):
            return value
        if any(isinstance(v, bool) for v in value.values()):  # {0: no, 1: yes} named the classes False and True
            raise ValueError("a name read as true/false (YAML's yes, no, on, off): quote it: 'yes'")
        keys = [label_value(k) for k in value]
        if None in keys:
            raise ValueError("a label to name is empty")
        named = {str(k): str(v).strip() if isinstance(v, str | int | float) else v
                 for k, v in zip(keys, value.values(), strict=True)}  # fmt: skip
        if any(not isinstance(v, str) or not v for v in named.values()):
            raise ValueError("each label needs a name (text)")
        twice = sorted({v for v in named.values() if list(named.values()).count(v) > 1})
        if twice:
            raise ValueError(f"two labels named {twice[0]!r}: they would be one class")
        return named


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
# A section written as its one value: `method: dora`, `data: train.jsonl`, `model: embedded:smollm2-135m-instruct`.
SHORTHAND = {"model": "source", "data": "path", "method": "name", "objective": "name"}


def expand_shorthands(data: Any) -> Any:
    """The spec mapping with each section whole: a lone value is the section's main field, an empty or missing
    method or objective name the default, and a name written as people write it (LoRA, p-tuning) the tag."""
    if not isinstance(data, dict):
        return data
    # A section with nothing under it (`method:`) is left to its defaults; `model:` and `data:` are then missing.
    data = {k: v for k, v in data.items() if not (v is None and k in ("model", "data", *TAGGED, "training"))}
    for key, field in SHORTHAND.items():
        value = data.get(key)
        if isinstance(value, str) or (key == "data" and isinstance(value, list)):
            data = {**data, key: {field: value}}
    for key, (registry, default) in TAGGED.items():
        section = data.get(key)
        if isinstance(section, dict):
            name = section.get("name")
            plain = as_tag(name) if isinstance(name, str) else None
            name = default if name is None or name == "" else plain if plain in registry else name
            data = {**data, key: {**section, "name": name}}
    return data


def as_tag(name: str) -> str:
    """A method or objective name as people write it (LoRA, LoRA+, p-tuning, P-Tuning v2) as its tag."""
    return name.strip().lower().replace("-", "_").replace(" ", "_").replace("+", "plus")


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
    def _whole_sections(cls, data: Any) -> Any:
        return expand_shorthands(data)

    @field_validator("output_dir")
    @classmethod
    def _a_folder(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty: name the folder that holds the run folders (runs, unless you say)")
        return value

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, value: str | None) -> str | None:
        if value is not None and not is_one_folder_name(value):
            raise ValueError(NOT_ONE_FOLDER)
        return value or None

    def to_yaml(self, as_given: bool = False) -> str:
        """`as_given`: only the values set, so what the app fills in from the data is filled in again on reading."""
        return yaml.safe_dump(self.model_dump(mode="json", exclude_unset=as_given), sort_keys=False, allow_unicode=True)

    def save(self, path: Path, as_given: bool = False) -> None:
        durable.write_text(path, self.to_yaml(as_given))


# --- reading, overriding and explaining -------------------------------------------------------


def load_spec_file(path: str | Path, overrides: list[str] | None = None) -> RunSpec:
    """Read a YAML spec, apply `--set` overrides, validate; errors name file, line and field."""
    from adapter_studio.engine.data.files import path_list

    path = Path(path)
    data, text = read_spec_yaml(path)
    data = expand_shorthands(data)
    base = path.parent
    if isinstance(data.get("data"), dict) and isinstance(data["data"].get("path"), str):  # `a.jsonl, b.jsonl`
        data["data"]["path"] = path_list(data["data"]["path"], base)
    for section, key in (("model", "source"), ("data", "path"), ("data", "eval_path")):
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, list):  # data.path may list files
            data[section][key] = [_from_spec_folder(v, base, section) for v in value]
        elif value is not None:
            data[section][key] = _from_spec_folder(value, base, section)
    apply_overrides(data, overrides or [])
    overridden = frozenset(item.split("=", 1)[0].strip() for item in overrides or [])
    if "data.path" in overridden and isinstance(data["data"].get("path"), str):
        data["data"]["path"] = path_list(data["data"]["path"])
    drop_the_other_kinds_fields(data, overridden)
    return parse_spec(data, origin=str(path), text=text, overridden=overridden)


def _from_spec_folder(value: Any, base: Path, section: str) -> Any:
    """Relative paths in a spec file mean relative to the file, as a person would expect; one found from the
    current folder instead is kept. A data file in neither place is named beside the file, where it was looked
    for first (a model source found nowhere may be a hub id)."""
    if not isinstance(value, str) or not value.strip() or Path(value).is_absolute() or value[0] in "~$":
        return value
    beside = base / value
    return str(beside.resolve()) if beside.exists() or (section == "data" and not Path(value).exists()) else value


def parse_spec(
    data: dict[str, Any], origin: str = "spec", text: str | None = None, overridden: frozenset[str] = frozenset()
) -> RunSpec:
    """The spec from its mapping; a UserError naming the field (and line, given the `text`, or `--set` for the
    `overridden` fields) for anything wrong."""
    data = expand_shorthands(data)
    check_truth_values(data, origin, text, RunSpec, overridden)
    try:
        return RunSpec.model_validate(data)
    except ValidationError as e:
        raise explain(e, data, origin, text, RunSpec, overridden) from None


def method_from_dict(data: dict[str, Any]) -> MethodSpec:
    """Validate a method alone (the window's form uses this as values are typed)."""
    from adapter_studio.engine.methods import method_class

    try:
        return method_class(data.get("name", "lora")).model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UserError(
            f"method.{field}: {sentence_case(first['msg'])}", where="method", fix="change the value"
        ) from None


def objective_from_dict(data: dict[str, Any]) -> ObjectiveSpec:
    """Validate an objective alone (the window's form)."""
    from adapter_studio.engine.objectives import objective_class

    try:
        return objective_class(data.get("name", "sft")).model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UserError(
            f"objective.{field}: {sentence_case(first['msg'])}", where="objective", fix="change the value"
        ) from None
