"""A run exported as GGUF (merged weights in f16 / bf16 / q8_0 / K-quants, or its LoRA adapter in
llama.cpp's format), with an Ollama Modelfile, then checked before it is handed over: read back with
transformers' GGUF reader (always) and run in llama.cpp (where installed), on the run's held-out
prompts — greedy answers compared with the torch model's, whether each answer stops at the end-of-turn
token, and the perplexity of the held-out answers. Written to a hidden folder and renamed into place, like
the other exports; the checks land in `verification.json` and the model card.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import Emit, Export, log_export
from adapter_studio.engine.export import gguf_writer, llama_cpp, ollama
from adapter_studio.engine.export.gguf_checks import Checks, GgufVerification
from adapter_studio.engine.export.run_export import (
    folder_bytes,
    model_card,
    new_export_folder,
    stage_reporter,
    written_in_place,
)

if TYPE_CHECKING:
    from adapter_studio.engine.inference.trained import TrainedModel

GGUF_CHOICES = (*gguf_writer.QUANTS, "lora")
CHECK_PROMPTS = 60  # held-out prompts answered by each model
PARAMETERS = {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.05}  # the Modelfile's sampling


@dataclass
class GgufExportResult:
    folder: Path
    file: Path
    quant: str
    bytes: int
    verification: GgufVerification
    ollama_command: str | None


def export_gguf(run_dir: Path, quant: str, out: Path, emit: Emit | None = None,
                prompts: int = CHECK_PROMPTS) -> GgufExportResult:  # fmt: skip
    """Write the run as `out/<name>-<quant>.gguf` (+ Modelfile, model card, verification.json)."""
    from adapter_studio.engine.inference.trained import load_trained

    quant = quant.lower()
    if quant not in GGUF_CHOICES:
        raise UserError(f"unknown GGUF type {quant!r}", where="--gguf", fix=f"pick one of: {', '.join(GGUF_CHOICES)}")
    out = new_export_folder(out)
    if quant in gguf_writer.BY_LLAMA_CPP and not llama_cpp.available():
        raise UserError(f"{quant} is made by llama.cpp's quantizer. {llama_cpp.INSTALL_HINT}", where="--gguf",
                        fix="install it, or pick f16, bf16 or q8_0, which need nothing else")  # fmt: skip
    reason = gguf_refusal(run_dir, quant)
    if reason:
        raise UserError(reason, where="GGUF export", fix="export the adapter or merged safetensors instead")
    stage = stage_reporter(emit)
    stage("loading the trained model")
    trained = load_trained(run_dir, dequantize=True)
    name = ollama_name(run_dir.name)
    with written_in_place(out) as tmp:
        written, verification, command = _write_and_check(trained, run_dir, quant, name, tmp, prompts, stage)
    file = out / written.name
    log_export(run_dir, Export(kind=f"gguf-{quant}", path=str(file), bytes=file.stat().st_size,
                               verified_max_diff=verification.max_logit_diff), emit)  # fmt: skip
    return GgufExportResult(out, file, quant, folder_bytes(out), verification,
                            command and command.replace(str(tmp), str(out)))  # fmt: skip


def gguf_refusal(run_dir: Path, quant: str = "q8_0") -> str | None:
    """Why this run cannot be exported as GGUF `quant`, or None; reads the config and tokenizer only."""
    from adapter_studio.engine.inference.trained import run_spec
    from adapter_studio.engine.models.loading import default_task, load_config, load_tokenizer, resolve_source

    spec = run_spec(run_dir)
    source = resolve_source(spec.model.source)
    config = load_config(source, spec.model.trust_remote_code)
    task = spec.model.task if spec.model.task != "auto" else default_task(config)
    reason = gguf_writer.refusal(config, task)
    if reason is None and quant == "lora":
        reason = lora_refusal(spec.method)
    elif reason is None:
        reason = merge_refusal(spec.method)
    return reason or gguf_writer.tokenizer_refusal(load_tokenizer(source, spec.model.trust_remote_code))


def merge_refusal(method: Any) -> str | None:
    """Why a method's training cannot go into a GGUF's merged weights, or None."""
    return None if method.mergeable else f"{method.title} cannot be merged into the weights a GGUF holds"


def ollama_name(text: str) -> str:
    """A name Ollama accepts (lowercase letters, digits, '-', '_', '.')."""
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.") or "adapter-studio-model"


def _write_and_check(trained: TrainedModel, run_dir: Path, quant: str, name: str, folder: Path, prompts: int,
                     stage: Any) -> tuple[Path, GgufVerification, str | None]:  # fmt: skip
    from adapter_studio.engine.data.rendering import ChatRenderer
    from adapter_studio.engine.models.loading import resolve_source

    spec = trained.spec
    renderer = ChatRenderer(trained.tokenizer, spec.data.system_prompt, spec.data.template)
    template = gguf_writer.chat_template_for(trained.tokenizer, None if renderer.use_chat_template else
                                             spec.data.template, spec.data.system_prompt)  # fmt: skip
    source = resolve_source(spec.model.source)
    checks = Checks.build(trained, renderer, prompts)
    if quant == "lora":
        return _lora(trained, run_dir, folder, name, source, template, checks, stage)
    stage("merging the adapter into the weights")
    merged = spec.method.merge(trained.model).eval()
    file = folder / f"{name}-{quant}.gguf"
    first = folder / f".{name}-f16.gguf" if quant in gguf_writer.BY_LLAMA_CPP else file
    stage(f"writing {first.name.lstrip('.')}")
    gguf_writer.write_model(merged, trained.tokenizer, first, "f16" if first != file else quant, name=name,
                            chat_template=template)  # fmt: skip
    if first != file:
        stage(f"quantizing to {quant} with llama.cpp")
        llama_cpp.quantize(first, file, quant)
        first.unlink()
    verification = checks.verify(merged, file, stage)
    text = ollama.modelfile(f"./{file.name}", ollama.go_template(renderer.prompt), _stops(trained, template),
                            PARAMETERS)  # fmt: skip
    (folder / "Modelfile").write_text(text, encoding="utf-8")
    _card(trained, run_dir, folder, file, quant, verification, name)
    return file, verification, ollama.register_command(name, str(folder))


def _lora(trained: TrainedModel, run_dir: Path, folder: Path, name: str, source: Any,
          template: str | None, checks: Checks, stage: Any) -> tuple[Path, GgufVerification, str | None]:  # fmt: skip
    method = trained.spec.method
    alpha = float(method.alpha) * (math.sqrt(method.r) if getattr(method, "use_rslora", False)
                                   or method.name == "rslora" else 1.0)  # llama.cpp scales by alpha / r  # fmt: skip
    file = folder / f"{name}-lora-f16.gguf"
    stage(f"writing {file.name}")
    gguf_writer.write_lora(trained.model, file, alpha=alpha, name=name)
    verification = checks.verify_lora(trained, file, template, stage)
    command = None
    if source.kind == "gguf":  # Ollama needs the base as GGUF: the base the run started from
        base = Path(source.path) / str(source.gguf_file)
        text = ollama.modelfile(str(base), ollama.go_template(checks.renderer.prompt), _stops(trained, template),
                                PARAMETERS, adapter=f"./{file.name}")  # fmt: skip
        (folder / "Modelfile").write_text(text, encoding="utf-8")
        command = ollama.register_command(name, str(folder))
    _card(trained, run_dir, folder, file, "lora", verification, name)
    return file, verification, command


def _stops(trained: TrainedModel, template: str | None) -> list[str]:
    """The Modelfile's stop: the token that ends the assistant's turn in the exported chat template."""
    eot = gguf_writer.end_of_turn_id(trained.tokenizer, template)
    return [trained.tokenizer.convert_ids_to_tokens(eot)] if eot is not None else []


def _card(trained: TrainedModel, run_dir: Path, folder: Path, file: Path, quant: str,
          verification: GgufVerification, name: str) -> None:  # fmt: skip
    card = model_card(trained, "merged" if quant != "lora" else "adapter", run_dir)
    card += (
        f"\n## GGUF ({quant})\n\n`{file.name}`, checked after writing on {verification.prompts} held-out prompts "
        "(greedy answers compared with the torch model; perplexity of the held-out answers given their prompts):\n\n"
        f"{verification.table()}\n"
    )
    if verification.tokens_agree is not None:
        agree = f"{verification.tokens_agree} / {verification.prompts}"
        card += f"\nllama.cpp tokenises {agree} prompts exactly as transformers does.\n"
    if (folder / "Modelfile").exists():
        card += f"\nOllama: `ollama create {name} -f Modelfile && ollama run {name}` in this folder.\n"
    (folder / "README.md").write_text(card, encoding="utf-8")
    (folder / "verification.json").write_text(json.dumps(asdict(verification), indent=1), encoding="utf-8")


def lora_refusal(method: Any) -> str | None:
    """Why a run's adapter cannot be a llama.cpp LoRA file, or None."""
    if method.adapter_format != "peft" or method.name not in ("lora", "rslora", "loraplus"):
        return (f"llama.cpp's adapter files hold plain LoRA; {method.title} is not one "
                "(export the merged model as GGUF instead)")  # fmt: skip
    if method.changes_base:
        return (f"this {method.title} run started from a rewritten base ({method.init}); llama.cpp would add the "
                "adapter to the original weights (export the merged model as GGUF instead)")  # fmt: skip
    if getattr(method, "init", None) == "loftq":
        return ("this LoftQ adapter belongs to the 4-bit weights it started from; llama.cpp would add it to the "
                "original weights (export the merged model as GGUF instead)")  # fmt: skip
    targets = set(getattr(method, "target_modules", None) or [])
    outside = sorted(t for t in targets if t not in gguf_writer.LORA_MODULES)
    if outside:
        return f"llama.cpp's adapter files cover the attention and MLP projections, not {', '.join(outside)}"
    return None
