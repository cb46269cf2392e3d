"""GGUF export: the writer on tiny Llama and Qwen2 models read back through transformers' GGUF reader
(tensors, metadata, tokenizer, chat template), the whole export of a trained run with its checks,
Modelfile and refusals. llama.cpp itself runs in the slow test where `llama-cpp-python` is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.export import gguf_writer, llama_cpp, ollama
from adapter_studio.engine.export.run_gguf import export_gguf, ollama_name
from adapter_studio.engine.training.run import run

from tests.conftest import CHATML, CHATML_ROLES, CHATML_SPECIALS, _decoder_config, _save, reversal_pairs

# Largest logit difference after a round trip through each type, on these tiny random models.
TOLERANCE = {"f16": 5e-3, "bf16": 5e-2, "q8_0": 5e-2}


def bpe_tokenizer() -> Any:
    """A byte-level BPE (GPT-2's split, with merges) learnt on the reversal task, ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    texts = [f"{q} {a}\nreverse the letters of" for q, a in reversal_pairs(300, seed=5)]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=CHATML_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **CHATML_ROLES)
    tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def bpe_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = bpe_tokenizer()
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[
        request.param
    ]
    torch.manual_seed(0)
    model = model_cls(_decoder_config(config_cls, tokenizer, vocab_size=len(tokenizer)))
    return _save(tmp_path_factory.mktemp(f"bpe-{request.param}"), model, tokenizer)


def _load(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("quant", ["f16", "bf16", "q8_0"])
def test_the_writer_round_trips_through_transformers_reader(bpe_model: Path, tmp_path: Path, quant: str) -> None:
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = _load(bpe_model)
    path = tmp_path / f"m-{quant}.gguf"
    gguf_writer.write_model(model, tokenizer, path, quant, name="tiny", chat_template=CHATML)

    fields = gguf.GGUFReader(str(path)).fields
    arch = fields["general.architecture"].contents()
    assert arch == model.config.model_type
    assert fields[f"{arch}.attention.head_count_kv"].contents() == 2
    assert fields["tokenizer.ggml.tokens"].contents() == [tokenizer.convert_ids_to_tokens(i)
                                                          for i in range(len(tokenizer))]  # fmt: skip
    # transformers gives a qwen2 folder Qwen's own split, which llama.cpp knows as "qwen2"
    assert fields["tokenizer.ggml.pre"].contents() == {"llama": "gpt-2", "qwen2": "qwen2"}[arch]
    assert fields["tokenizer.chat_template"].contents() == CHATML
    assert fields["tokenizer.ggml.eot_token_id"].contents() == tokenizer.convert_tokens_to_ids("<|im_end|>")

    reread = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32)
    read_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    text = "<|im_start|>user\nreverse abc<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert read_tokenizer(text)["input_ids"] == ids[0].tolist()
    assert read_tokenizer.chat_template == CHATML
    with torch.no_grad():
        diff = float((reread(input_ids=ids).logits - model(input_ids=ids).logits).abs().max())
    assert diff < TOLERANCE[quant]


def test_llama_rows_are_permuted_as_llama_cpp_expects_and_back() -> None:
    rows = torch.arange(4 * 8 * 3, dtype=torch.float32).reshape(4 * 8, 3).numpy()
    permuted = gguf_writer.permute_rows(rows, heads=4)
    assert sorted(map(tuple, permuted)) == sorted(map(tuple, rows))  # the same rows, reordered
    # within a head of 8 rows, llama.cpp wants the two rotary halves interleaved: 0 4 1 5 2 6 3 7
    assert permuted[:8, 0].tolist() == [rows[i, 0] for i in (0, 4, 1, 5, 2, 6, 3, 7)]


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory: pytest.TempPathFactory, make_spec: Any, messages_jsonl: Path) -> Path:
    """A LoRA run of a few steps on a tiny byte-level-BPE Llama with ChatML chat data."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = bpe_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(_decoder_config(LlamaConfig, tokenizer, vocab_size=len(tokenizer)))
    folder = _save(tmp_path_factory.mktemp("bpe-run-model"), model, tokenizer)
    spec = make_spec(folder, messages_jsonl, {"name": "lora", "target_modules": ["q_proj", "k_proj", "v_proj"]},
                     max_steps=3, save_every=3, data={"eval_split": 0.1})  # fmt: skip
    result = run(spec)
    assert result.status == "completed"
    return result.run_dir


def test_a_run_exports_as_gguf_checked_with_a_modelfile(bpe_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "gguf"
    stages: list[str] = []
    result = export_gguf(bpe_run, "f16", out, emit=lambda e: stages.append(getattr(e, "detail", "")), prompts=8)
    assert result.file == out / f"{ollama_name(bpe_run.name)}-f16.gguf"
    assert sorted(p.name for p in out.iterdir()) == sorted(["Modelfile", "README.md", "verification.json",
                                                            result.file.name])  # fmt: skip
    v = result.verification
    assert v.prompts == 8
    reader = v.readers[0]
    assert reader.name.startswith("transformers")
    assert reader.same_answers == 8
    assert reader.stopped == v.torch_stopped
    assert abs(reader.perplexity / v.torch_perplexity - 1) < 0.01
    assert v.max_logit_diff < TOLERANCE["f16"]
    modelfile = (out / "Modelfile").read_text()
    assert f"FROM ./{result.file.name}" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "{{ .Prompt }}" in modelfile
    card = (out / "README.md").read_text()
    assert "| transformers (GGUF reader) | 8 / 8 |" in card
    assert any("reading the GGUF back" in s for s in stages)
    for who in ("the torch model", "the GGUF read back"):  # minutes on a CPU: each batch of answers is said
        assert f"checking: {who} answered 8 of 8 held-out prompts" in stages, stages
    assert not list(tmp_path.glob(".gguf.partial-*"))
    events = (bpe_run / "events.jsonl").read_text()
    assert '"kind": "gguf-f16"' in events


def test_the_command_line_exports_gguf_and_refuses_in_one_line(bpe_run: Path, tmp_path: Path) -> None:
    from test_cli import clis_at_once

    done, refused = clis_at_once(["export", str(bpe_run), "--gguf", "q8_0", "--out", str(tmp_path / "q8")],
                                 ["export", str(bpe_run), "--gguf", "q3", "--out", str(tmp_path / "q3")])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| transformers (GGUF reader) |" in done.stdout
    assert "Ollama: " in done.stdout and "ollama create" in done.stdout
    assert (tmp_path / "q8" / f"{ollama_name(bpe_run.name)}-q8_0.gguf").is_file()
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "unknown GGUF type" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_lora_adapter_exports_in_llama_cpps_adapter_format(bpe_run: Path, tmp_path: Path) -> None:
    import gguf

    result = export_gguf(bpe_run, "lora", tmp_path / "lora", prompts=4)
    fields = gguf.GGUFReader(str(result.file)).fields
    assert fields["general.type"].contents() == "adapter"
    assert fields["adapter.type"].contents() == "lora"
    assert fields["adapter.lora.alpha"].contents() == 16.0
    names = [t.name for t in gguf.GGUFReader(str(result.file)).tensors]
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.1.attn_v.weight.lora_b" in names
    assert len(names) == 2 * 3 * 2  # A and B, three projections, two layers
    assert result.verification.max_logit_diff < 1e-3  # f16 copies of A and B
    assert not (result.folder / "Modelfile").exists()  # Ollama needs the base as GGUF: this base is a folder


@pytest.mark.parametrize(
    ("case", "quant", "words"),
    [
        ("gpt2 model", "f16", "Llama family"),
        ("dora adapter", "lora", "plain LoRA"),
        ("unknown type", "q3_xs", "unknown GGUF type"),
        ("k-quant without llama.cpp", "q4_k_m", "pip install llama-cpp-python"),
        ("existing folder", "f16", "already exists"),
        ("character tokenizer", "f16", "byte-level BPE"),
    ],
)
def test_what_cannot_be_written_is_refused_with_the_reason(
    case: str, quant: str, words: str, tmp_path: Path, make_spec: Any, tiny_gpt2: Path, tiny_llama: Path,
    alpaca_jsonl: Path, bpe_run: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    run_dir = bpe_run
    if case == "gpt2 model":
        run_dir = run(make_spec(tiny_gpt2, alpaca_jsonl, "lora", max_steps=1, save_every=1)).run_dir
    elif case == "dora adapter":
        run_dir = run(make_spec(tiny_llama, alpaca_jsonl, "dora", max_steps=1, save_every=1)).run_dir
    elif case == "character tokenizer":
        run_dir = run(make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=1, save_every=1)).run_dir
    monkeypatch.setattr(llama_cpp, "available", lambda: False)
    out = tmp_path / "out"
    if case == "existing folder":
        out.mkdir()
    with pytest.raises(UserError, match=words):
        export_gguf(run_dir, quant, out, prompts=2)
    assert list(tmp_path.iterdir()) == ([out] if case == "existing folder" else [])


def test_the_ollama_template_is_the_chat_template_rendered_with_markers() -> None:
    tokenizer = bpe_tokenizer()

    def render(messages: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    template = ollama.go_template(render)
    assert template == (
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n<|im_start|>user\n{{ .Prompt }}<|im_end|>\n"
        "<|im_start|>assistant\n{{ else }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"
        "{{ end }}{{ .Response }}"
    )
    assert ollama.go_template(lambda m: "{{literal}} " + m[-1]["content"]) == (
        '{{ "{{" }}literal{{ "}}" }} {{ .Prompt }}{{ .Response }}'
    )
    assert ollama_name("LoRA run 2026/12 #3") == "lora-run-2026-12-3"


def test_a_plain_template_run_carries_its_prompt_format_as_the_chat_template() -> None:
    from jinja2 import Template

    tokenizer = bpe_tokenizer()
    jinja = gguf_writer.chat_template_for(tokenizer, "Q: {instruction}\nA: ", "Be brief.")
    text = Template(jinja).render(messages=[{"role": "user", "content": "reverse abc"}])
    assert text == "Be brief.\n\nQ: reverse abc\nA: "


@pytest.mark.slow
@pytest.mark.heavy  # trains the demo and runs llama.cpp: `make test-all`, where llama-cpp-python is installed
def test_the_demo_run_in_llama_cpp_answers_as_the_torch_model(tmp_path: Path) -> None:
    """The embedded SmolLM2, a few LoRA steps on the demo data, exported as f16 and q8_0 and run in
    llama.cpp: the same greedy answers, stopping at <|im_end|>, perplexity within 1 %."""
    pytest.importorskip("llama_cpp")
    from adapter_studio.engine.spec import load_spec_file

    spec = load_spec_file(Path("resources/demo/walkthrough.yaml"))
    training = spec.training.model_copy(update={"max_steps": 6, "save_every": 6})
    spec = spec.model_copy(update={"output_dir": str(tmp_path / "runs"), "training": training})
    result = run(spec)
    assert result.status == "completed"
    # q8_0 flips the near-ties of a 6-step model: 18 / 20 here (the demo's 150-step run: 59 / 60, README).
    for quant, least in (("f16", 20), ("q8_0", 18)):
        export = export_gguf(result.run_dir, quant, tmp_path / quant, prompts=20)
        v = export.verification
        cpp = next(r for r in v.readers if r.name == "llama.cpp")
        assert cpp.same_answers >= least, v.table()
        assert cpp.stopped == v.torch_stopped == 20, v.table()
        assert abs(cpp.perplexity / v.torch_perplexity - 1) < 0.01, v.table()
        assert v.tokens_agree == 20


def test_answers_that_part_from_the_trained_models_are_explained() -> None:
    """A green 'written and read back' beside 'same greedy answers 2 / 6' read as a broken file (a DPO run)."""
    from adapter_studio.engine.export.gguf_checks import GgufVerification, Reader

    same = GgufVerification(prompts=6, torch_stopped=6, torch_perplexity=2.0, readers=[Reader("llama.cpp", 6, 6, 2.01)])
    assert same.parted_note() is None and "part from" not in same.table()
    parted = GgufVerification(prompts=6, torch_stopped=6, torch_perplexity=2.0,
                              readers=[Reader("transformers", 5, 6, 2.0), Reader("llama.cpp", 2, 6, 2.02)])  # fmt: skip
    note = parted.parted_note()
    assert note is not None and note.startswith("llama.cpp's greedy answers part from the trained model's on 4 of 6")
    assert parted.table().endswith(note)
    own_tokens = GgufVerification(prompts=6, torch_stopped=6, torch_perplexity=2.0,
                                  readers=[Reader("llama.cpp, its own tokenisation", 3, 6, None)])  # fmt: skip
    assert "reads the prompts as its own tokens" in (own_tokens.parted_note() or "")  # no rounding, no perplexity
