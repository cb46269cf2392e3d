"""Quantised bases (QLoRA: 4-bit NF4 / 8-bit through bitsandbytes) and 8-bit AdamW, on whichever device the
machine has: bitsandbytes quantises on CUDA GPUs and, from 0.49, on CPUs, so CI runs these on its CPU."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from adapter_studio.engine.events import Log, Metrics, Started
from adapter_studio.engine.training.run import run


def train(spec: Any, **kwargs: Any) -> tuple[Any, list[Any]]:
    events: list[Any] = []
    result = run(spec, events.append, **kwargs)
    return result, events


def quantized(spec: Any, kind: str) -> Any:
    return spec.model_copy(update={"model": spec.model.model_copy(update={"quantization": kind})})


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_qlora_trains_and_merges_into_a_dequantised_base(kind, tiny_llama, alpaca_jsonl, make_spec, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from adapter_studio.engine.export.run_export import export_run

    spec = make_spec(tiny_llama, alpaca_jsonl, "lora", precision="auto", learning_rate=0.01, max_steps=20)
    spec = quantized(spec, kind)
    result, events = train(spec)
    assert result.status == "completed", result.error
    metrics = [e for e in events if isinstance(e, Metrics)]
    assert metrics[-1].loss < metrics[0].loss
    said = {"4bit": "its weights in 4-bit NF4", "8bit": "its weights in 8 bits"}[kind]  # the log says what loaded
    assert any(isinstance(e, Log) and e.message.startswith("loaded ") and said in e.message for e in events)
    _, plain_events = train(make_spec(tiny_llama, alpaca_jsonl, "lora", max_steps=1))
    started, plain = (next(e for e in ev if isinstance(e, Started)) for ev in (events, plain_events))
    assert (started.total_params, started.trainable_params) == (plain.total_params, plain.trainable_params)
    adapter = export_run(result.run_dir, "adapter", tmp_path / "adapter")
    assert (adapter.path / "adapter_config.json").exists()
    merged = export_run(result.run_dir, "merged", tmp_path / "merged")
    config = json.loads((merged.path / "config.json").read_text())
    assert "quantization_config" not in config  # merged weights are plain, loadable without bitsandbytes
    assert merged.verified_max_diff is not None


def test_a_4bit_run_answers_on_the_try_page_beside_its_base(tiny_llama, alpaca_jsonl, make_spec) -> None:  # type: ignore[no-untyped-def]
    """The Try page's playground opens a QLoRA run on its 4-bit base: the adapter switched off is that base,
    and both answer (greedy, with the KV cache through bitsandbytes' layers)."""
    from adapter_studio.engine.inference.playground import Playground

    spec = make_spec(tiny_llama, alpaca_jsonl, "lora", learning_rate=0.01, max_steps=8)
    result, _ = train(quantized(spec, "4bit"))
    assert result.status == "completed", result.error
    from adapter_studio.engine.models.loading import load_model
    from adapter_studio.engine.spec import ModelSpec
    from test_playground import reference_answer

    playground = Playground.open(result.run_dir, device="cpu")
    assert playground.shares_weights
    answers = {which: "".join(playground.stream(which, "reverse abc", max_new_tokens=6))  # type: ignore[arg-type]
               for which in ("base", "tuned")}  # fmt: skip
    base, _, _ = load_model(ModelSpec(source=str(tiny_llama), quantization="4bit"), "causal_lm", dtype=torch.float32)
    assert answers["base"] == reference_answer(base.eval(), playground, "reverse abc", max_new_tokens=6)
    with playground.using("tuned") as tuned:
        assert answers["tuned"] == reference_answer(tuned, playground, "reverse abc", max_new_tokens=6)


def test_a_4bit_base_holds_packed_weights(tiny_llama) -> None:  # type: ignore[no-untyped-def]
    """The point of a quantised base: its frozen weights take a quarter of float32's bytes or less."""
    import bitsandbytes as bnb
    from adapter_studio.engine.models.loading import load_model
    from adapter_studio.engine.spec import ModelSpec

    full, _, _ = load_model(ModelSpec(source=str(tiny_llama)), "causal_lm", dtype=torch.float32)
    packed, _, _ = load_model(ModelSpec(source=str(tiny_llama), quantization="4bit"), "causal_lm")
    linear = [m for m in packed.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear) == 2 * 7  # every projection of both blocks; embeddings and the head stay as they are
    q_proj = full.model.layers[0].self_attn.q_proj.weight
    packed_q = packed.model.layers[0].self_attn.q_proj.weight
    assert packed_q.numel() * packed_q.element_size() <= q_proj.numel() * q_proj.element_size() / 4
    # ...yet it is the same model: its parameters are counted as they are, not as they are stored
    from adapter_studio.engine.models.info import describe_model

    assert describe_model(packed).total_params == describe_model(full).total_params


def test_adamw_8bit_trains_and_resumes_where_it_stopped(tiny_llama, alpaca_jsonl, make_spec) -> None:  # type: ignore[no-untyped-def]
    """bitsandbytes keeps its 8-bit moments one level down in the optimizer state: the checkpoint keeps
    them, and a resumed run ends where one run straight through ends."""
    settings = {"precision": "auto", "learning_rate": 0.01, "optimizer": "adamw_8bit", "max_steps": 10, "seed": 3,
                "save_every": 5}  # fmt: skip
    straight, straight_events = train(make_spec(tiny_llama, alpaca_jsonl, "lora", **settings))
    assert straight.status == "completed", straight.error
    stop, first_events = threading.Event(), []

    def emit(event: Any) -> None:
        first_events.append(event)
        if isinstance(event, Metrics) and event.step == 5:
            stop.set()

    cancelled = run(make_spec(tiny_llama, alpaca_jsonl, "lora", **settings), emit, stop)
    assert cancelled.status == "cancelled" and cancelled.step == 5
    resumed, resumed_events = train(None, resume_dir=cancelled.run_dir)
    assert resumed.status == "completed", resumed.error
    assert next(e for e in resumed_events if isinstance(e, Started)).resumed_from_step == 5
    last = [e.loss for e in straight_events if isinstance(e, Metrics)][-1]
    assert [e.loss for e in resumed_events if isinstance(e, Metrics)][-1] == pytest.approx(last, abs=1e-3)


def test_gradient_checkpointing_with_a_4bit_base(tiny_llama, alpaca_jsonl, make_spec) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec(tiny_llama, alpaca_jsonl, "lora", precision="auto", gradient_checkpointing=True, max_steps=5)
    result, _ = train(quantized(spec, "4bit"))
    assert result.status == "completed", result.error


@pytest.mark.parametrize("method", ["full", "last_layers"])
def test_training_the_packed_weights_is_refused_in_words(method, tiny_llama, alpaca_jsonl, make_spec) -> None:  # type: ignore[no-untyped-def]
    result, _ = train(quantized(make_spec(tiny_llama, alpaca_jsonl, method, max_steps=2), "4bit"))
    assert result.status == "failed", result.status
    assert "trains base weights, which cannot train while quantised to 4bit" in (result.error or ""), result.error
    assert "model.quantization" in (result.error or "") and "Tensor" not in (result.error or "")


def test_quantised_bases_train_on_cuda_and_cpu_not_on_mps() -> None:
    from adapter_studio.engine.models.loading import quantization_problem

    assert quantization_problem("4bit", "cpu") is None
    problem = quantization_problem("8bit", "mps")
    assert problem is not None and "not on mps" in str(problem) and problem.where == "model.quantization"


# --- LoftQ: LoRA started for the 4-bit base ---------------------------------------------------------


def _lora_on_4bit(model_dir: Any, init: str) -> tuple[Any, Any, list[str]]:
    """The tiny model in 4-bit with LoRA r8 on every projection, started as `init`; (model, the unquantised
    model, the log lines the start wrote)."""
    from adapter_studio.engine.methods import METHODS, MethodContext
    from adapter_studio.engine.models.info import describe_model
    from adapter_studio.engine.models.loading import load_model
    from adapter_studio.engine.spec import ModelSpec, TrainingSpec

    full, _, _ = load_model(ModelSpec(source=str(model_dir)), "causal_lm", dtype=torch.float32)
    base, _, _ = load_model(ModelSpec(source=str(model_dir), quantization="4bit"), "causal_lm")
    info = describe_model(base)
    every = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    method = METHODS["lora"](init=init, target_modules=every).fill_defaults(info)
    said: list[str] = []
    ctx = MethodContext(info=info, training=TrainingSpec(), total_steps=10, weights_folder=Path(model_dir),
                        log=said.append)  # fmt: skip
    return method.apply(base, ctx), full.eval(), said


def test_loftq_starts_nearer_the_unquantised_model_than_qlora(tiny_llama) -> None:  # type: ignore[no-untyped-def]
    ids = torch.tensor([[5, 9, 14, 3, 22, 7, 11, 30]])
    gaps = {}
    for init in ("default", "loftq"):
        model, full, said = _lora_on_4bit(tiny_llama, init)
        with torch.no_grad():
            gaps[init] = float((model(input_ids=ids).logits.float() - full(input_ids=ids).logits).abs().mean())
        if init == "loftq":
            assert len(said) == 1 and said[0].startswith("LoftQ started 14 LoRA layers"), said
            assert "removed)" in said[0]
    assert gaps["loftq"] < 0.8 * gaps["default"], gaps


def test_loftq_start_takes_the_top_singular_part_of_the_quantisation_error(tiny_llama) -> None:  # type: ignore[no-untyped-def]
    from adapter_studio.engine.methods.loftq import loftq_start, original_weights
    from bitsandbytes.functional import dequantize_4bit

    model, _, _ = _lora_on_4bit(tiny_llama, "default")
    started = loftq_start(model, original_weights(Path(tiny_llama)))
    assert started.layers == 14 and 0 < started.left < started.error
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    w = original_weights(Path(tiny_llama))("model.layers.1.mlp.down_proj.weight")
    error = w - dequantize_4bit(layer.base_layer.weight.data, layer.base_layer.weight.quant_state).float()
    update = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    best = torch.linalg.svd(error, full_matrices=False)
    top = best.U[:, :8] @ torch.diag(best.S[:8]) @ best.Vh[:8]
    assert torch.allclose(update, top, atol=1e-5)


def test_a_loftq_run_merges_into_its_4bit_weights(tiny_llama, alpaca_jsonl, make_spec, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The adapter belongs to the 4-bit base: the merged export is the 4-bit weights, dequantised, plus the
    update — not the update added to the original weights (that would count the error it took in twice)."""
    from adapter_studio.engine.events import Log
    from adapter_studio.engine.export.run_export import export_run
    from adapter_studio.engine.inference.trained import load_trained
    from adapter_studio.engine.methods.loftq import original_weights
    from bitsandbytes.functional import dequantize_4bit
    from safetensors.torch import load_file

    spec = make_spec(tiny_llama, alpaca_jsonl, {"name": "lora", "init": "loftq"}, learning_rate=0.01)
    result, events = train(quantized(spec, "4bit"))
    assert result.status == "completed", result.error
    assert any(isinstance(e, Log) and e.message.startswith("LoftQ started 14 LoRA layers") for e in events)
    adapter = export_run(result.run_dir, "adapter", tmp_path / "adapter")
    assert json.loads((adapter.path / "adapter_config.json").read_text())["init_lora_weights"] is True
    card = (adapter.path / "README.md").read_text()  # says to load it onto that base, and how
    assert "import torch\n" in card and "from transformers import AutoModelForCausalLM, BitsAndBytesConfig" in card
    assert "bnb_4bit_quant_type='nf4'" in card and "# LoftQ: the adapter was started against" in card
    merged = export_run(result.run_dir, "merged", tmp_path / "merged")
    assert merged.verified_max_diff is not None and merged.verified_max_diff < 1e-3

    layer = load_trained(Path(result.run_dir)).model.base_model.model.model.layers[0].self_attn.q_proj
    update = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    packed = layer.base_layer.weight
    name = "model.layers.0.self_attn.q_proj.weight"
    written = load_file(str(merged.path / "model.safetensors"))[name]
    assert torch.allclose(written, dequantize_4bit(packed.data, packed.quant_state).float() + update, atol=1e-5)
    assert not torch.allclose(written, original_weights(Path(tiny_llama))(name) + update, atol=1e-3)


def test_loftq_starts_a_4bit_classifier(tiny_bert_cls, classification_csv, make_spec, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from adapter_studio.engine.events import Log
    from adapter_studio.engine.export.run_export import export_run

    spec = make_spec(tiny_bert_cls, classification_csv, {"name": "lora", "init": "loftq"}, max_steps=4,
                     data={"format": "classification"})  # fmt: skip
    result, events = train(quantized(spec, "4bit"))
    assert result.status == "completed", result.error
    assert any(isinstance(e, Log) and e.message.startswith("LoftQ started") for e in events)
    assert export_run(result.run_dir, "merged", tmp_path / "merged").verified_max_diff is not None


@pytest.mark.parametrize(
    ("quantization", "objective", "said"),
    [
        ("none", "sft", "LoftQ starts LoRA for a 4-bit base; this run's base is not quantised"),
        ("8bit", "sft", "LoftQ starts LoRA for a 4-bit base; this run's base is 8-bit"),
        ("4bit", "dpo", "DPO compares with the model as training starts"),
    ],
)
def test_loftq_is_refused_before_anything_loads(quantization, objective, said, tiny_llama, alpaca_jsonl,
                                                make_spec, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from adapter_studio.engine.spec import parse_spec

    data = alpaca_jsonl
    if objective == "dpo":  # pairs: DPO on alpaca rows is refused first, before the run folder
        data = tmp_path / "pairs.jsonl"
        data.write_text("".join(json.dumps({"prompt": f"reverse {w}", "chosen": w[::-1], "rejected": w}) + "\n"
                                for w in ("abc", "defg", "hij", "klmn", "opq", "rstu")))  # fmt: skip
    spec = make_spec(tiny_llama, data, {"name": "lora", "init": "loftq"}, max_steps=2)
    spec = parse_spec({**spec.model_dump(), "objective": {"name": objective}})
    result, events = train(quantized(spec, quantization))
    assert result.status == "failed" and said in (result.error or ""), result.error
    assert "method.init" in (result.error or "")
    assert not any(getattr(e, "stage", None) == "loading model" for e in events)


@pytest.mark.slow
def test_qlora_with_loftq_trains_smollm2_through_the_cli(tmp_path: Path) -> None:
    """The embedded SmolLM2 (a GGUF file) on a 4-bit base with LoftQ's start, from the command line: LoftQ
    reads the original weights from the GGUF's float32 conversion, the log says what the start removed, and
    the merged export verifies."""
    from test_cli import cli

    demo = Path(__file__).resolve().parent.parent / "resources" / "demo" / "train.jsonl"
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({
        "model": {"source": "embedded:smollm2-135m-instruct", "quantization": "4bit"},
        "data": {"path": str(demo), "max_length": 96, "max_rows": 40},
        "method": {"name": "lora", "init": "loftq"}, "output_dir": str(tmp_path / "runs"),
        "training": {"max_steps": 3, "batch_size": 4, "eval_samples": 0, "save_every": 3},
    }))  # fmt: skip
    done = cli("train", str(spec), timeout=900)
    assert done.returncode == 0 and "finished completed at step 3" in done.stdout, done.stdout[-2000:] + done.stderr
    assert "LoftQ started 210 LoRA layers" in done.stdout, done.stdout[-3000:]  # 30 blocks × 7 projections
    run_dir = next((tmp_path / "runs").iterdir())
    exported = cli("export", str(run_dir), "--merged", "--out", str(tmp_path / "merged"), timeout=600)
    assert exported.returncode == 0, exported.stderr


@pytest.mark.gui
def test_from_the_window_a_4bit_base_trains_with_loftq(window, qtbot, tiny_llama, alpaca_jsonl) -> None:  # type: ignore[no-untyped-def]
    """A new user's path: 4bit in the Model page's Loading box (it says what it saves), LoftQ in LoRA's
    form, Start; the log says what LoftQ's start removed, and the run's spec keeps both."""
    from adapter_studio.engine.inference.trained import run_spec
    from adapter_studio.engine.spec import TrainingSpec
    from test_gui import choose

    choose(window, qtbot, tiny_llama, alpaca_jsonl)
    model_page = window.pages["model"]
    qtbot.waitUntil(lambda: model_page.quantization_problems is not None, timeout=60_000)
    model_page.loading_form.widgets["quantization"].setCurrentText("4bit")
    assert "less memory" in model_page.quantization_note.text()
    window.go_to("method")
    method_page = window.pages["method"]
    method_page.select("lora")
    method_page.form.widgets["init"].setCurrentText("loftq")
    assert window.state.method.init == "loftq"
    window.state.training = TrainingSpec(max_steps=4, batch_size=4, save_every=4, eval_samples=0, precision="float32")
    window.go_to("train")
    window.train_page.start()
    qtbot.waitUntil(lambda: not window.train_page.controller.running, timeout=120_000)
    assert window.train_page.last_status == "completed", window.train_page.last_error
    assert "LoftQ started 14 LoRA layers" in window.train_page.log.toPlainText()
    saved = run_spec(window.state.current_run)
    assert saved.model.quantization == "4bit" and saved.method.init == "loftq"
