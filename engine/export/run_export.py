"""Exports that are never half-written and always checked: adapter-only or merged, verified by
reloading from disk and comparing logits, written beside the target and renamed into place."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_studio.engine import durable
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import Emit, Export, Stage, log_export
from adapter_studio.engine.methods.poly import TASKS_FILE
from adapter_studio.engine.models.construction import model_construction

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.inference.trained import TrainedModel

STUDIO_CONFIG = "adapter_studio.json"
VERIFY_TOLERANCE = 1e-4
MERGE_RELATIVE = 1e-5  # of the largest logit: a merge's float32 rounding, about 40 units in the last place


@dataclass
class ExportResult:
    kind: str
    path: Path
    bytes: int
    verified_max_diff: float | None


def export_run(run_dir: Path, kind: str, out: Path, emit: Emit | None = None) -> ExportResult:
    """Export a run's latest checkpoint as `adapter` or `merged` into `out` (which must not exist)."""
    from adapter_studio.engine.inference.trained import load_trained

    out = new_export_folder(out)
    stage = stage_reporter(emit)
    stage("loading the trained model")
    trained = load_trained(run_dir, dequantize=kind == "merged")
    if kind == "merged" and not trained.spec.method.mergeable:
        raise UserError(
            f"{trained.spec.method.title} cannot be merged into the base weights",
            where="export",
            fix="export the adapter only (--adapter)",
        )
    with written_in_place(out) as tmp:
        probe = probe_inputs(trained)
        tasks = probe_tasks(trained.spec.method, len(probe["input_ids"]))
        reference = logits_of(trained.model, probe, tasks)
        stage(f"writing the {kind} export")
        tolerance = VERIFY_TOLERANCE
        if kind == "adapter":
            _write_adapter(trained, tmp)
        else:
            before = weight_sizes(trained.model)
            merged = trained.spec.method.merge(trained.model)
            growth = merge_growth(before, weight_sizes(merged))
            tolerance = merge_tolerance(growth, float(reference.abs().max()))
            merged.save_pretrained(str(tmp), max_shard_size="2GB")
        trained.tokenizer.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(model_card(trained, kind, run_dir), encoding="utf-8")
        stage("verifying: reloading from disk")
        reloaded = load_export(tmp, kind, trained.spec)
        diff = float((logits_of(reloaded, probe, tasks) - reference).abs().max())
        if not diff < tolerance:
            raise UserError(
                f"the written {kind} export does not reproduce the model (max logit difference {diff:.2e})",
                where=str(out),
                fix="report this as a bug; nothing was written",
            )
    size = folder_bytes(out)
    log_export(run_dir, Export(kind=kind, path=str(out), bytes=size, verified_max_diff=diff), emit)
    return ExportResult(kind, out, size, diff)


def weight_sizes(model: torch.nn.Module) -> dict[str, float]:
    """The largest absolute value of each floating-point weight matrix, by its name in the base model (peft's
    wrapper prefix and `base_layer` left out, as the merged model names it), and of all of them ("")."""
    sizes: dict[str, float] = {"": 0.0}
    for name, p in model.named_parameters():
        if p.is_floating_point() and p.numel():
            largest = float(p.detach().abs().max())
            sizes[""] = max(sizes[""], largest)
            if p.dim() >= 2:
                key = name.removeprefix("base_model.model.").replace(".base_layer", "")
                sizes[key] = max(sizes.get(key, 0.0), largest)
    return sizes


def merge_growth(before: dict[str, float], merged: dict[str, float]) -> float:
    """How many times the merge made a weight matrix larger: the most of any matrix, or of the model's largest
    weight (a LoRA update may outgrow its own layer's weights several times over while the largest weight, a
    norm's, stays). At least 1."""
    ratios = [merged[key] / size for key, size in before.items() if size > 0 and key in merged]
    return max([1.0, *ratios])


def merge_tolerance(growth: float, largest_logit: float = 0.0) -> float:
    """How far a merged model's logits may be from the adapter model's: float32 rounds W + ΔW relative to
    its size, so weights that grew k-fold in the merge (`merge_growth`) carry k times the rounding (RandLoRA's
    scale 20 on a tiny model trained at a high rate: weights ×271, logits 1.0e-4 apart; LoRA on a tiny Llama
    at 100× its rate: q and v ×7 while the largest weight stayed, 1.06e-4 apart), and the rounding grows with
    the logits it ends in: `MERGE_RELATIVE` of the largest (SmolLM2 after the app's default LoRA run, every
    linear layer of 30 blocks: logits up to 35.3, merged 1.5e-4 apart). A wrong merge is off by far more."""
    return max(VERIFY_TOLERANCE, MERGE_RELATIVE * largest_logit) * max(1.0, growth)


# --- what every export does: a new folder, written beside it and renamed into place, logged ----------


def new_export_folder(out: Path) -> Path:
    """`out` resolved, refused if it exists (exports never overwrite) or its folder is not writable."""
    out = out.expanduser().resolve()
    too_long = next((part for part in out.parts if len(part.encode()) > 255), None)
    if too_long is not None:  # os.stat said "File name too long" as an unexpected error
        raise UserError(f"'{too_long[:40]}…' is {len(too_long.encode())} bytes long, more than a folder's name "
                        "can be (255)", where="--out", fix="give a shorter name")  # fmt: skip
    if out.exists():
        raise UserError(f"{out} already exists", where="--out", fix="pick a new folder name; exports never overwrite")
    folder = out.parent
    if (a_file := next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)) is not None:
        raise UserError(f"{a_file} is a file, not a folder", where="--out",
                        fix="give a folder path (a file's name cannot hold one)")  # "…: File exists" said nothing
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make the folder {folder}: {e.strerror or e}", where="--out",
                        fix="pick a folder you can write to") from None  # fmt: skip
    if not os.access(folder, os.W_OK):
        raise UserError(
            f"cannot write to {folder}: permission denied", where="--out", fix="pick a folder you can write to"
        )
    return out


def stage_reporter(emit: Emit | None) -> Callable[[str], None]:
    """A function reporting an `exporting` stage with its detail (nothing without `emit`)."""

    def stage(text: str) -> None:
        if emit:
            emit(Stage(stage="exporting", detail=text))

    return stage


@contextmanager
def written_in_place(out: Path) -> Iterator[Path]:
    """A hidden folder beside `out` to write the export into. When the block ends without an error it is
    synced and renamed to `out` (never replacing anything); on any error it is removed, so a failed or
    cancelled export leaves nothing behind, and an OS error (full disk, permissions) becomes a UserError."""
    # Named within the disk's 255 bytes a name can have: the whole name and a suffix failed a legal 250-byte name.
    stem = out.name
    if len(stem.encode()) > 200:
        stem = f"{stem.encode()[:64].decode(errors='ignore')}-{hashlib.sha256(stem.encode()).hexdigest()[:12]}"
    tmp = out.parent / f".{stem}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        durable.plain_modes(tmp)  # readable as other files are: safetensors writes its files 0600
        durable.fsync_tree(tmp)
        tmp.rename(out)  # never replaces: the target must not exist
        durable.fsync_path(out.parent)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if durable.os_error_code(e) is None:  # safetensors reports a full disk as SafetensorError (os error 28)
            raise
        what, fix = _os_reason(e, out)
        raise UserError(what, where=str(out), fix=fix) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _os_reason(error: Exception, out: Path) -> tuple[str, str]:
    """What went wrong writing `out`, and the fix for that (a permission error was told to free some space)."""
    code, left = durable.os_error_code(error), "nothing was left behind"
    if code == errno.ENOSPC:
        return f"the disk is full while writing {out}; {left}", "free some space, or pick another folder"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write to {out.parent}: permission denied; {left}", "pick a folder you can write to"
    return f"writing {out} failed ({getattr(error, 'strerror', None) or error}); {left}", "pick another folder"


def _write_adapter(trained: TrainedModel, folder: Path) -> None:
    from adapter_studio.engine.models.embedded import HUB_ID_OF, embedded_name

    method = trained.spec.method
    method.save_adapter(trained.model, str(folder))
    embedded = embedded_name(trained.spec.model.source)
    peft_config = folder / "adapter_config.json"
    if embedded and peft_config.exists():  # peft wrote where the shipped copy sits here; elsewhere, its hub id
        config = json.loads(peft_config.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = HUB_ID_OF[embedded]
        peft_config.write_text(json.dumps(config, indent=2), encoding="utf-8")
    if method.adapter_format != "peft":
        config = {
            "format": f"adapter-studio/{method.adapter_format}",
            "base_model": trained.spec.model.source,
            "task": trained.task,
            "method": method.model_dump(mode="json"),
        }
        (folder / STUDIO_CONFIG).write_text(json.dumps(config, indent=1), encoding="utf-8")


def load_adapter(base: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """Load any exported adapter onto its base model: peft folders and this project's own formats."""
    studio = folder / STUDIO_CONFIG
    if studio.exists():
        config = json.loads(studio.read_text(encoding="utf-8"))
        fmt = config["format"].split("/", 1)[1]
        if fmt == "selective":
            from adapter_studio.engine.methods.selective import load_selective_adapter

            return load_selective_adapter(base, folder)
        if fmt == "bottleneck":
            from adapter_studio.engine.methods.bottleneck import load_bottleneck_adapter

            return load_bottleneck_adapter(base, folder)
        if fmt == "injected":  # modules injected beside the base layers, named by the method
            from adapter_studio.engine.methods import method_class

            method = method_class(config["method"]["name"]).model_validate(config["method"])
            return method.load_adapter(base, folder)  # type: ignore[attr-defined]
        raise UserError(f"unknown adapter format {fmt}", where=str(studio))
    from adapter_studio.engine.methods.peft_base import keep_generation_cache
    from peft import PeftModel

    with model_construction():  # peft makes its modules in the process's default dtype
        return keep_generation_cache(PeftModel.from_pretrained(base, str(folder)))


def load_export(folder: Path, kind: str, spec: Any) -> torch.nn.Module:
    import torch
    from adapter_studio.engine.inference.trained import load_base

    if kind == "merged":
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        auto = AutoModelForSequenceClassification if spec.model.task == "classification" else AutoModelForCausalLM
        with model_construction():  # transformers switches process-wide settings while it builds
            return auto.from_pretrained(str(folder), dtype=torch.float32).eval()
    base, _, _ = load_base(spec)
    return load_adapter(base, folder).eval()


def probe_inputs(trained: TrainedModel) -> dict[str, torch.Tensor]:
    texts = ["Rewrite the date March 3, 2021 in ISO format.", "The quick brown fox jumps over the lazy dog."]
    enc = trained.tokenizer(texts, return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def probe_tasks(method: Any, rows: int) -> torch.Tensor | None:
    """The probe rows' task ids for a method that routes by task (its tasks in turn), else None."""
    if not method.routes_by_task:
        return None
    import torch

    return torch.arange(rows) % max(1, len(method.tasks))


def logits_of(model: torch.nn.Module, inputs: dict[str, torch.Tensor],
              task_ids: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    import torch
    from adapter_studio.engine.methods.poly import routed

    device = next(model.parameters()).device  # a quantised base lives on the GPU
    with torch.no_grad(), routed(model, task_ids):
        return model(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu()


def _labels(trained: TrainedModel) -> str:
    """A classifier's base is loaded with the run's head size (peft then puts the trained head in) and its label
    names, which an adapter folder holds nowhere else (a merged model's config.json has them)."""
    config = getattr(trained.model, "config", None)
    if trained.task != "classification" or config is None:
        return ""
    names = {int(i): str(n) for i, n in (config.id2label or {}).items()}
    named = any(n != f"LABEL_{i}" for i, n in names.items())
    return f", num_labels={config.num_labels}" + (f", id2label={names!r}" if named else "")


def _base_arguments(base: str, embedded: bool) -> str:
    """from_pretrained's arguments for the base the run trained on: its hub id (an embedded model's too, not
    where its copy sits here) or folder; a GGUF file (or a folder that holds one) as its folder and gguf_file,
    as transformers reads it."""
    from adapter_studio.engine.models.loading import resolve_source

    if embedded:
        return repr(base)
    try:
        source = resolve_source(base)
    except UserError:  # not on this machine: as the spec names it
        path = Path(base)
        return f"{str(path.parent)!r}, gguf_file={path.name!r}" if path.suffix == ".gguf" else repr(base)
    if source.kind == "gguf":
        return f"{source.path!r}, gguf_file={source.gguf_file!r}"
    return repr(source.path if source.kind == "folder" else base)


def model_card(trained: TrainedModel, kind: str, run_dir: Path) -> str:
    """README.md with YAML metadata: base, method, hyperparameters, data, counts, losses, versions."""
    import peft
    import torch
    import transformers
    import yaml
    from adapter_studio import __version__
    from adapter_studio.engine.models.embedded import HUB_ID_OF, WEIGHTS_NOTE, embedded_name
    from adapter_studio.engine.runs import summarize_run

    summary = summarize_run(run_dir)
    spec = trained.spec
    embedded = embedded_name(spec.model.source)
    base = HUB_ID_OF[embedded] if embedded else spec.model.source  # a hub id, as the card's metadata expects
    weights = (f"\n\nThe base was the copy of {base} that ships with Adapter Studio ({WEIGHTS_NOTE[embedded]}): on "
               "the hub's own weights the tuned model answers nearly, not exactly, the same."
               if embedded in WEIGHTS_NOTE else "")  # fmt: skip
    meta = {
        "base_model": base,
        "library_name": "peft" if kind == "adapter" and spec.method.adapter_format == "peft" else "transformers",
        "tags": ["adapter-studio", spec.method.name],
        "adapter_studio": {
            "export": kind,
            "method": spec.method.model_dump(mode="json"),
            "training": spec.training.model_dump(mode="json"),
            "dataset": spec.data.path,
            "data_format": spec.data.format,
            "trainable_params": summary.trainable_params,
            "steps": summary.steps,
            "final_train_loss": summary.final_loss,
            "final_eval_loss": summary.final_eval_loss,
            "best_eval_loss": summary.best_eval_loss,
            "versions": {
                "adapter_studio": __version__,
                "torch": str(torch.__version__),
                "transformers": str(transformers.__version__),
                "peft": str(peft.__version__),
            },
        },
    }
    auto = "AutoModelForSequenceClassification" if trained.task == "classification" else "AutoModelForCausalLM"
    if kind == "merged":
        how = f"from transformers import {auto}\n{auto}.from_pretrained(<this folder>)"
    elif spec.method.adapter_format == "peft":
        quantised = spec.model.quantization != "none"
        arguments = f"{_base_arguments(base, bool(embedded))}{_labels(trained)}{_quantised_load(spec)}"
        how = (
            ("import torch\n" if spec.model.quantization == "4bit" else "") + "from peft import PeftModel\n"
            f"from transformers import {auto}{', BitsAndBytesConfig' if quantised else ''}\n"
            f"base = {auto}.from_pretrained({arguments})\n"
            "model = PeftModel.from_pretrained(base, <this folder>)"
        )
        if getattr(spec.method, "init", None) == "loftq":
            how += ("\n# LoftQ: the adapter was started against exactly these 4-bit weights (it took in part of "
                    "their quantisation error); on the unquantised base it is off by that part")  # fmt: skip
        if spec.method.routes_by_task:  # peft's Poly takes each row's task id in every call
            tasks = ", ".join(f"{i}: {name}" for i, name in enumerate(spec.method.tasks))
            how += (f"\n# every call names each row's task ({tasks}; also in {TASKS_FILE}):\n"
                    "model.generate(**inputs, task_ids=torch.tensor([0]))")
    else:
        how = (
            "from adapter_studio.engine.export.run_export import load_adapter\n"
            "model = load_adapter(base_model, <this folder>)"
        )
    how = f"```python\n{how}\n```"
    return (
        f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n\n"
        f"# {spec.method.title} fine-tune of {base}\n\n"
        f"Trained with Adapter Studio {__version__}: {summary.steps} steps, "
        f"{summary.trainable_params or 0:,} trainable parameters. Export: {kind}.{weights}\n\n## Loading\n\n{how}\n"
    )


def _quantised_load(spec: Any) -> str:
    """The base's loading arguments in the card's example, for a run trained on a quantised base (the
    engine's own bitsandbytes settings, engine.models.loading)."""
    if spec.model.quantization == "8bit":
        return ", quantization_config=BitsAndBytesConfig(load_in_8bit=True)"
    if spec.model.quantization == "4bit":
        return (", quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', "
                "bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)")  # fmt: skip
    return ""
