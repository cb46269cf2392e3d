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
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_studio.engine import durable
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import Emit, EventLog, Export, Stage
from adapter_studio.engine.export import gguf_writer, llama_cpp, ollama
from adapter_studio.engine.export.run_export import _check_writable, _os_reason, model_card

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.inference.trained import TrainedModel

GGUF_CHOICES = (*gguf_writer.QUANTS, "lora")
CHECK_PROMPTS = 60  # held-out prompts answered by each model
PARAMETERS = {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.05}  # the Modelfile's sampling


@dataclass
class Reader:
    """One way of running the exported file, against the torch model's answers."""

    name: str
    same_answers: int | None = None
    stopped: int | None = None
    perplexity: float | None = None
    note: str = ""


@dataclass
class GgufVerification:
    prompts: int
    torch_stopped: int
    torch_perplexity: float | None
    readers: list[Reader] = field(default_factory=list)
    tokens_agree: int | None = None  # prompts llama.cpp tokenises exactly as transformers does
    max_logit_diff: float | None = None  # transformers' reader against torch on the probe texts

    def table(self) -> str:
        rows = ["| read by | same greedy answers | stops at end of turn | answer perplexity (torch: "
                f"{_num(self.torch_perplexity)}) | note |", "|---|---|---|---|---|"]  # fmt: skip
        for r in self.readers:
            same = "—" if r.same_answers is None else f"{r.same_answers} / {self.prompts}"
            stop = "—" if r.stopped is None else f"{r.stopped} / {self.prompts} (torch {self.torch_stopped})"
            rows.append(f"| {r.name} | {same} | {stop} | {_num(r.perplexity)}{_ratio(r.perplexity, self)} | {r.note} |")
        return "\n".join(rows)


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _ratio(value: float | None, v: GgufVerification) -> str:
    if value is None or not v.torch_perplexity:
        return ""
    return f" ({(value / v.torch_perplexity - 1) * 100:+.2f} %)"


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
    out = out.expanduser().resolve()
    if out.exists():
        raise UserError(f"{out} already exists", where="--out", fix="pick a new folder name; exports never overwrite")
    _check_writable(out.parent)
    if quant in gguf_writer.BY_LLAMA_CPP and not llama_cpp.available():
        raise UserError(f"{quant} is made by llama.cpp's quantizer. {llama_cpp.INSTALL_HINT}", where="--gguf",
                        fix="install it, or pick f16, bf16 or q8_0, which need nothing else")  # fmt: skip

    def stage(text: str) -> None:
        if emit:
            emit(Stage(stage="exporting", detail=text))

    reason = gguf_refusal(run_dir, quant)
    if reason:
        raise UserError(reason, where="GGUF export", fix="export the adapter or merged safetensors instead")
    stage("loading the trained model")
    trained = load_trained(run_dir, dequantize=True)
    name = ollama_name(run_dir.name)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        written, verification, command = _write_and_check(trained, run_dir, quant, name, tmp, prompts, stage)
        durable.fsync_tree(tmp)
        tmp.rename(out)  # never replaces: the target must not exist
        durable.fsync_path(out.parent)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if durable.os_error_code(e) is None:
            raise
        raise UserError(_os_reason(e, out), where=str(out), fix="pick another folder or free some space") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    file = out / written.name
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    event = Export(kind=f"gguf-{quant}", path=str(file), bytes=file.stat().st_size,
                   verified_max_diff=verification.max_logit_diff)  # fmt: skip
    log = EventLog(run_dir / "events.jsonl")
    log.write(event)
    log.close()
    if emit:
        emit(event)
    return GgufExportResult(out, file, quant, size, verification, command and command.replace(str(tmp), str(out)))


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
        reason = gguf_writer.lora_refusal(spec.method)
    elif reason is None and not spec.method.mergeable:
        reason = f"{spec.method.title} cannot be merged into the weights a GGUF holds"
    return reason or gguf_writer.tokenizer_refusal(load_tokenizer(source, spec.model.trust_remote_code))


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
    checks = _Checks.build(trained, renderer, prompts)
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
    eot = gguf_writer.end_of_turn_id(trained.tokenizer, template)
    stops = [trained.tokenizer.convert_ids_to_tokens(eot)] if eot is not None else []
    text = ollama.modelfile(file.name, ollama.go_template(renderer.prompt), stops, None, PARAMETERS)
    (folder / "Modelfile").write_text(text, encoding="utf-8")
    _card(trained, run_dir, folder, file, quant, verification, name)
    return file, verification, ollama.register_command(name, str(folder))


def _lora(trained: TrainedModel, run_dir: Path, folder: Path, name: str, source: Any,
          template: str | None, checks: _Checks, stage: Any) -> tuple[Path, GgufVerification, str | None]:  # fmt: skip
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
        renderer_prompt = checks.renderer.prompt
        eot = gguf_writer.end_of_turn_id(trained.tokenizer, template)
        stops = [trained.tokenizer.convert_ids_to_tokens(eot)] if eot is not None else []
        text = ollama.modelfile(str(base), ollama.go_template(renderer_prompt), stops, None, PARAMETERS)
        text = text.replace(f"FROM ./{base}", f"FROM {base}\nADAPTER ./{file.name}")
        (folder / "Modelfile").write_text(text, encoding="utf-8")
        command = ollama.register_command(name, str(folder))
    _card(trained, run_dir, folder, file, "lora", verification, name)
    return file, verification, command


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


@dataclass
class _Checks:
    """The held-out prompts and texts, and the torch model's answers to compare every reader with."""

    trained: Any
    renderer: Any
    prompt_texts: list[str]
    prompts: list[list[int]]
    texts: list[list[int]]
    starts: list[int]  # where each text's answer begins: perplexity is on the answer tokens
    stop_ids: list[int]
    max_new_tokens: int

    @classmethod
    def build(cls, trained: TrainedModel, renderer: Any, count: int) -> _Checks:
        from adapter_studio.engine.evaluation.cases import generation_cases
        from adapter_studio.engine.inference.playground import adds_special_tokens, held_out_rows

        fmt, rows = held_out_rows(trained)
        if not rows:
            raise UserError("a GGUF export is checked on the run's held-out rows, and this run held out none",
                            where="data.eval_split", fix="train with held-out rows (data.eval_split > 0)")  # fmt: skip
        cases = generation_cases(renderer, fmt, rows)[:count]
        tok = trained.tokenizer
        special = adds_special_tokens(fmt, renderer)
        prompts = [tok(c.prompt, add_special_tokens=special)["input_ids"] for c in cases]
        answers = [tok(c.expected, add_special_tokens=False)["input_ids"] for c in cases]
        eot = gguf_writer.end_of_turn_id(tok, getattr(tok, "chat_template", None))
        ends = [i for i in {eot, tok.eos_token_id} if i is not None]
        texts = [p + a + ends[:1] for p, a in zip(prompts, answers, strict=True)]
        longest = max((len(a) for a in answers), default=16)
        starts = [len(p) for p in prompts]
        return cls(trained, renderer, [c.prompt for c in cases], prompts, texts, starts, ends, min(longest + 16, 256))

    def _greedy(self, model: torch.nn.Module) -> tuple[list[list[int]], list[bool]]:
        from adapter_studio.engine.evaluation.generation import generate_greedy

        tok = self.trained.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else self.stop_ids[0]
        answers = generate_greedy(model, self.prompts, pad_id=pad, stop_ids=self.stop_ids,
                                  max_new_tokens=self.max_new_tokens, batch_size=8, device="cpu",
                                  tick=lambda _n: None)  # fmt: skip
        return answers, [len(a) < self.max_new_tokens for a in answers]

    def _perplexity(self, model: torch.nn.Module) -> float | None:
        """Perplexity of the held-out answers (and their end-of-turn token) given their prompts."""
        import torch

        nll, count = 0.0, 0
        with torch.no_grad():
            for text, start in zip(self.texts, self.starts, strict=True):
                ids = torch.tensor([text])
                logits = model(input_ids=ids).logits[0, start - 1 : -1].float()
                nll += float(torch.nn.functional.cross_entropy(logits, ids[0, start:], reduction="sum"))
                count += len(text) - start
        return math.exp(nll / count) if count else None

    def verify(self, merged: torch.nn.Module, file: Path, stage: Any) -> GgufVerification:
        import torch
        from adapter_studio.engine.export.run_export import _logits, _probe_inputs
        from adapter_studio.engine.models.construction import model_construction
        from transformers import AutoModelForCausalLM

        stage(f"checking: the torch model answers {len(self.prompts)} held-out prompts")
        expected, stopped = self._greedy(merged)
        v = GgufVerification(len(self.prompts), sum(stopped), self._perplexity(merged))
        stage("checking: reading the GGUF back with transformers")
        with model_construction():
            reread = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name,
                                                          dtype=torch.float32).eval()  # fmt: skip
        probe = _probe_inputs(self.trained)
        v.max_logit_diff = float((_logits(reread, probe) - _logits(merged, probe)).abs().max())
        answers, ended = self._greedy(reread)
        v.readers.append(Reader("transformers (GGUF reader)", _same(answers, expected), sum(ended),
                                self._perplexity(reread)))  # fmt: skip
        del reread
        v.readers.append(self._llama_cpp(file, None, expected, stage))
        self._own_tokens(file, v, expected, stage)
        return v

    def verify_lora(self, trained: TrainedModel, file: Path, template: str | None,
                    stage: Any) -> GgufVerification:  # fmt: skip
        stage(f"checking: the torch model answers {len(self.prompts)} held-out prompts")
        expected, stopped = self._greedy(trained.model)
        v = GgufVerification(len(self.prompts), sum(stopped), self._perplexity(trained.model))
        v.max_logit_diff = _lora_tensor_diff(trained.model, file)
        note = f"A and B read back; max difference {v.max_logit_diff:.1e}"
        v.readers.append(Reader("gguf reader (tensors)", note=note))
        if not llama_cpp.available():
            v.readers.append(Reader("llama.cpp", note=llama_cpp.INSTALL_HINT))
            return v
        stage("checking: the base as f16 GGUF with the adapter in llama.cpp")
        base_file = file.parent / ".base-f16.gguf"
        with trained.model.disable_adapter():
            gguf_writer.write_model(trained.model.get_base_model(), trained.tokenizer, base_file, "f16",
                                    name="base", chat_template=template)  # fmt: skip
        try:
            v.readers.append(self._llama_cpp(base_file, file, expected, stage))
        finally:
            base_file.unlink()
        return v

    def _llama_cpp(self, file: Path, lora: Path | None, expected: list[list[int]], stage: Any) -> Reader:
        if not llama_cpp.available():
            return Reader("llama.cpp", note=llama_cpp.INSTALL_HINT)
        stage("checking: running the GGUF in llama.cpp")
        run = llama_cpp.run_checks(file, self.prompts, self.texts, self.starts, self.max_new_tokens, lora)
        return Reader("llama.cpp" + (" (base f16 + adapter)" if lora else ""), _same(run.answers, expected),
                      sum(run.stopped), run.perplexity)  # fmt: skip

    def _own_tokens(self, file: Path, v: GgufVerification, expected: list[list[int]], stage: Any) -> None:
        """What a llama.cpp user gets: the prompt text tokenised by llama.cpp itself. Counts the prompts it
        tokenises exactly as transformers does, and compares the answers' text where any differ."""
        if not llama_cpp.available():
            return
        tok = self.trained.tokenizer
        add_bos = bool(self.prompts) and self.prompts[0][:1] == [tok.bos_token_id]
        theirs = llama_cpp.tokenize(file, self.prompt_texts, add_bos)
        v.tokens_agree = sum(a == b for a, b in zip(theirs, self.prompts, strict=True))
        if v.tokens_agree == len(self.prompts):
            return
        stage("checking: llama.cpp answering the prompt texts it tokenises itself")
        run = llama_cpp.run_checks(file, theirs, [], [], self.max_new_tokens)
        same = sum(_text(tok, a) == _text(tok, b) for a, b in zip(run.answers, expected, strict=True))
        note = f"llama.cpp splits {len(self.prompts) - v.tokens_agree} prompts into other tokens than training did"
        v.readers.append(Reader("llama.cpp, its own tokenisation", same, sum(run.stopped), None, note))


def _text(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def _same(answers: list[list[int]], expected: list[list[int]]) -> int:
    return sum(a == b for a, b in zip(answers, expected, strict=True))


def _lora_tensor_diff(peft_model: torch.nn.Module, file: Path) -> float:
    """The largest difference between the adapter's A/B matrices and those read back from the file."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(file))
    stored = {t.name: np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
    config = peft_model.get_base_model().config
    worst = 0.0
    for module_name, module in peft_model.get_base_model().named_modules():
        if not getattr(module, "lora_A", None) or "default" not in module.lora_A:
            continue
        target = gguf_writer.gguf_tensor_name(f"{module_name}.weight", config)
        a = module.lora_A["default"].weight.detach().float().numpy()
        b = module.lora_B["default"].weight.detach().float().numpy()
        heads = gguf_writer.rows_permuted(f"{module_name}.weight", config)
        b = gguf_writer.permute_rows(b, heads) if heads else b
        for suffix, array in ((".lora_a", a), (".lora_b", b)):
            got = stored.get(target + suffix)
            if got is None or got.shape != array.shape:
                return math.inf
            worst = max(worst, float(np.abs(got - array).max()))
    return worst
