"""The checks a GGUF export passes before it is handed over: the run's held-out prompts answered by the
torch model, by transformers' GGUF reader and by llama.cpp (where installed), compared token for token,
with whether each answer stops at the end-of-turn token and the perplexity of the held-out answers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.export import gguf_writer, llama_cpp

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.inference.trained import TrainedModel


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

    def rows(self) -> list[list[str]]:
        """The checks as a table: a header row, then one row per reader (for the CLI, card and window)."""
        rows = [["read by", "same greedy answers", "stops at end of turn",
                 f"answer perplexity (torch: {_num(self.torch_perplexity)})", "note"]]  # fmt: skip
        for r in self.readers:
            same = "—" if r.same_answers is None else f"{r.same_answers} / {self.prompts}"
            stop = "—" if r.stopped is None else f"{r.stopped} / {self.prompts} (torch {self.torch_stopped})"
            rows.append([r.name, same, stop, f"{_num(r.perplexity)}{_ratio(r.perplexity, self)}", r.note])
        return rows

    def table(self) -> str:
        """rows() as a Markdown table, and what answers that part from the trained model's mean."""
        header, *body = self.rows()
        lines = ["| " + " | ".join(cells) + " |" for cells in [header, *body]]
        note = self.parted_note()
        return "\n".join([lines[0], "|" + "---|" * len(header), *lines[1:], *(["", note] if note else [])])

    def parted_note(self) -> str | None:
        """Where a reader's greedy answers part from the trained model's: what that does and does not say (a
        green "written and read back" beside "2 / 6" read as a broken file)."""
        parted = [r for r in self.readers if r.same_answers is not None and r.same_answers < self.prompts]
        if not parted:
            return None
        worst = min(parted, key=lambda r: r.same_answers or 0)
        apart = self.prompts - (worst.same_answers or 0)
        if worst.perplexity is None:  # the reader that tokenises the prompts itself
            return (f"{worst.name}'s greedy answers part from the trained model's on {apart} of {self.prompts} "
                    "prompts: it reads the prompts as its own tokens, and where those differ from the model's (see "
                    "below) so may the answers")  # fmt: skip
        return (f"{worst.name}'s greedy answers part from the trained model's on {apart} of {self.prompts} prompts: "
                "a greedy answer follows the first token two readings rank differently, "
                "and every rounding of the weights (f16, more so the quantized types) moves near ties; the answer "
                "perplexity, which counts every token, says how close the file is")


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _ratio(value: float | None, v: GgufVerification) -> str:
    if value is None or not v.torch_perplexity:
        return ""
    return f" ({(value / v.torch_perplexity - 1) * 100:+.2f} %)"


@dataclass
class Checks:
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
    def build(cls, trained: TrainedModel, renderer: Any, count: int) -> Checks:
        from adapter_studio.engine.evaluation.cases import as_conversations, generation_cases
        from adapter_studio.engine.inference.playground import adds_special_tokens, held_out_rows

        fmt, rows = as_conversations(*held_out_rows(trained))  # a pair's prompt and its chosen answer
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

    def _greedy(self, model: torch.nn.Module, stage: Any, who: str) -> tuple[list[list[int]], list[bool]]:
        """Each prompt's greedy answer, and whether it stopped; `stage` says how many are done (a check of
        60 prompts took minutes on a CPU under one unchanging line)."""
        from adapter_studio.engine.evaluation.generation import generate_greedy

        tok = self.trained.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else self.stop_ids[0]
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            stage(f"checking: {who} answered {done[0]} of {len(self.prompts)} held-out prompts")

        stage(f"checking: {who} answers {len(self.prompts)} held-out prompts")
        answers = generate_greedy(model, self.prompts, pad_id=pad, stop_ids=self.stop_ids,
                                  max_new_tokens=self.max_new_tokens, batch_size=8, device="cpu",
                                  tick=tick)  # fmt: skip
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
        from adapter_studio.engine.export.run_export import logits_of, probe_inputs
        from adapter_studio.engine.models.construction import model_construction
        from transformers import AutoModelForCausalLM

        expected, stopped = self._greedy(merged, stage, "the torch model")
        v = GgufVerification(len(self.prompts), sum(stopped), self._perplexity(merged))
        stage("checking: reading the GGUF back with transformers")
        with model_construction():
            reread = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name,
                                                          dtype=torch.float32).eval()  # fmt: skip
        probe = probe_inputs(self.trained)
        v.max_logit_diff = float((logits_of(reread, probe) - logits_of(merged, probe)).abs().max())
        answers, ended = self._greedy(reread, stage, "the GGUF read back")
        v.readers.append(Reader("transformers (GGUF reader)", _same(answers, expected), sum(ended),
                                self._perplexity(reread)))  # fmt: skip
        del reread
        v.readers.append(self._llama_cpp(file, None, expected, stage))
        self._own_tokens(file, v, expected, stage)
        return v

    def verify_lora(self, trained: TrainedModel, file: Path, template: str | None,
                    stage: Any) -> GgufVerification:  # fmt: skip
        expected, stopped = self._greedy(trained.model, stage, "the torch model")
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
