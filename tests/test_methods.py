"""Every registered method on every kind of model, through the real engine: train, count, export, reload.

One table: each (method, model) pair either trains — 20 steps of `engine.training.run.run` lower the loss on fixed rows,
only the method's own parameters train (as many as `Started.trainable_params` says), the adapter
export reloads onto a fresh base with identical logits, and mergeable methods' merged export loads
with plain transformers — or it is refused before training with a message that says why.

Each pair trains once per module (`trained`); the tests below read that one run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import Eval, Event, Finished, Metrics, Started
from adapter_studio.engine.methods import METHODS
from adapter_studio.engine.training.run import run

MODELS = ("llama", "gpt2", "bert")
DATA = {"llama": "alpaca_jsonl", "gpt2": "alpaca_jsonl", "bert": "classification_csv"}
# Data of two tasks named in a task column, for methods that route rows by task (tests/test_poly.py for more).
TASK_DATA = {"llama": "multitask_jsonl", "gpt2": "multitask_jsonl", "bert": "multitask_csv"}


def data_for(method: str, model: str) -> str:
    return (TASK_DATA if METHODS[method].routes_by_task else DATA)[model]
STEPS = 20
FIXED_ROWS = 48  # training rows the loss is measured on before the first step and after the last


def _any(*parts: str) -> Callable[[str], bool]:
    return lambda name: any(p in name for p in parts)


def _not_embeddings(name: str) -> bool:
    return not any(e in name for e in ("embed_tokens", ".wte.", ".wpe.", ".embeddings."))


# What each method trains, by parameter name; on the classifier every method also trains the head.
TRAINS: dict[str, Callable[[str], bool]] = {
    "lora": _any(".lora_A.", ".lora_B."),
    "dora": _any(".lora_A.", ".lora_B.", ".lora_magnitude_vector."),
    "rslora": _any(".lora_A.", ".lora_B."),
    "loraplus": _any(".lora_A.", ".lora_B."),
    "adalora": _any(".lora_A.", ".lora_B.", ".lora_E."),
    "dylora": _any(".lora_A.", ".lora_B."),
    "adapter_h": _any(".adapter.down.", ".adapter.up."),
    "adapter_p": _any(".adapter.down.", ".adapter.up."),
    "parallel_adapter": _any(".adapter.down.", ".adapter.up."),
    "compacter": _any(".adapter.down.", ".adapter.up."),  # their s, t, bias and the shared rule
    "compacter_pp": _any(".adapter.down.", ".adapter.up."),
    "prompt_tuning": _any("prompt_encoder.default.embedding."),
    "p_tuning": _any("prompt_encoder.default."),
    "prefix_tuning": _any("prompt_encoder.default."),
    "p_tuning_v2": _any("prompt_encoder.default.embedding."),
    "llama_adapter": _any(".adaption_prompt", ".adaption_gate"),
    "ia3": _any(".ia3_l."),
    "bitfit": lambda name: name.endswith(".bias"),
    "last_layers": _not_embeddings,  # 2 layers: the last 2 blocks are all of them, plus norm and head
    "full": lambda name: True,
    "loha": _any(".hada_w1_a.", ".hada_w1_b.", ".hada_w2_a.", ".hada_w2_b."),
    "lokr": _any(".lokr_w1.", ".lokr_w2."),
    "vera": _any(".vera_lambda_b.", ".vera_lambda_d."),
    "oft": _any(".oft_R."),
    "hra": _any(".hra_u."),
    "fourierft": _any(".fourierft_spectrum."),
    "c3a": _any(".c3a_kernel."),
    "vblora": _any(".vblora_logits_A.", ".vblora_logits_B.", ".vblora_vector_bank."),
    "randlora": _any(".randlora_lambda.", ".randlora_gamma."),
    "miss": _any(".miss_block."),
    "delora": _any(".delora_A.", ".delora_B.", ".delora_lambda."),
    "shira": _any(".shira_weight."),
    "ln_tuning": _any(".ln_tuning_layers."),
    "road": _any(".road_theta.", ".road_alpha."),
    "psoft": _any(".psoft_R."),
    "waveft": _any(".waveft_spectrum."),
    "gralora": _any(".gralora_A.", ".gralora_B."),
    "hira": _any(".hira_A.", ".hira_B."),
    "glora": _any(".glora_A.", ".glora_B.", ".glora_C.", ".glora_D.", ".glora_E."),  # C, D, E: biases (BERT)
    "deft": _any(".deft_P.", ".deft_R."),
    "peanut": _any(".peanut_A.", ".peanut_B."),
    "pvera": _any(".pvera_lambda_b.", ".pvera_lambda_d."),
    "beft": _any(".beft_bias."),
    "supertuning": _any(".supertuning_values."),
    "mam": _any(".adapter.down.", ".adapter.up.", "prompt_encoder.default.embedding."),
    "unipelt": _any(".adapter.down.", ".adapter.up.", ".adapter.gate.", ".adapter.lora_A.", ".adapter.lora_B.",
                    "prompt_encoder.default.embedding."),
    "mixture_lora": _any(".router.", ".lora_A", ".lora_B"),
    "poly": _any(".poly_lora_A.", ".poly_lora_B.", ".poly_router."),
    "side_tuning": _any("side_network."),
    "adapter_fusion": _any(".fusion."),  # trained here only with finished runs to fuse: tests/test_fusion.py
}

# Pairs refused before training, with words the message must contain.
UNSUPPORTED: dict[tuple[str, str], tuple[str, ...]] = {
    ("bitfit", "llama"): ("BitFit", "bias", "llama model has none"),
    ("loha", "gpt2"): ("LoHa", "Conv1D", "pick LoRA"),
    ("lokr", "gpt2"): ("LoKr", "Conv1D", "pick LoRA"),
    ("oft", "gpt2"): ("OFT", "Conv1D", "pick LoRA"),
    ("poly", "gpt2"): ("Poly", "Conv1D", "pick LoRA"),
    **{(m, "gpt2"): (title, "Conv1D", "pick LoRA")
       for m, title in (("hra", "HRA"), ("c3a", "C3A"), ("miss", "MiSS"), ("delora", "DeLoRA"),
                        ("shira", "SHiRA"), ("road", "RoAd"), ("psoft", "PSOFT"), ("glora", "GLoRA"),
                        ("peanut", "PEANuT"), ("beft", "BEFT"), ("supertuning", "Super-Tuning"))},
    ("prefix_tuning", "bert"): ("Prefix Tuning", "classification"),
    ("p_tuning_v2", "bert"): ("P-Tuning v2", "classification"),
    ("llama_adapter", "bert"): ("LLaMA-Adapter", "classification"),
    ("mam", "bert"): ("MAM adapter", "classification"),
    ("unipelt", "bert"): ("UniPELT", "classification"),
    **{("adapter_fusion", m): ("AdapterFusion", "finished bottleneck-adapter runs", "none are listed") for m in MODELS},
}
# Settings a method refuses on a model it otherwise supports: (method, model, training) → words.
REFUSED_SETTINGS: list[tuple[str, str, dict[str, Any], tuple[str, ...]]] = [
    ("prefix_tuning", "llama", {"gradient_checkpointing": True}, ("Prefix Tuning", "gradient checkpointing")),
    ("p_tuning_v2", "gpt2", {"gradient_checkpointing": True}, ("P-Tuning v2", "gradient checkpointing")),
    ("mam", "llama", {"gradient_checkpointing": True}, ("MAM adapter", "gradient checkpointing")),
    ("unipelt", "gpt2", {"gradient_checkpointing": True}, ("UniPELT", "gradient checkpointing")),
    ("side_tuning", "llama", {"gradient_checkpointing": True}, ("Ladder side-tuning", "gradient checkpointing")),
]
# Measured on the same FIXED_ROWS rows before and after the 20 steps (a batch-to-batch measure moved with
# every small change of the training path). Prompt Tuning and P-Tuning act only through a few input
# embeddings, which a random 2-layer model barely attends to: 1.4–3 % lower on the decoders, every other
# method 3.5 % or more. Super-Tuning trains 1 % of q_proj's and v_proj's entries (120 on the tiny Llama): 1.6 %.
MIN_DROP = {"prompt_tuning": 0.005, "p_tuning": 0.005, "supertuning": 0.008}
DEFAULT_MIN_DROP = 0.02

PAIRS = [(m, model) for m in METHODS for model in MODELS]
SUPPORTED = [p for p in PAIRS if p not in UNSUPPORTED]
MERGEABLE = [p for p in SUPPORTED if METHODS[p[0]].mergeable]
NOT_MERGEABLE = [p for p in SUPPORTED if not METHODS[p[0]].mergeable]
PROMPT_LEARNING = [p for p in SUPPORTED if p[0] in ("prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2", "mam",
                                                   "unipelt") and p[1] != "bert"]  # fmt: skip


def ids(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{method}-{model}" for method, model in pairs]


def learning_rate(method: str, model: str) -> float:
    """The methods' default rates suit pretrained models; tiny random ones need far more to move in
    20 steps: 100× on the decoders (at most 0.3), 20× on the classifier (at most 1e-2, above which
    its freshly trained head overshoots); LoRA+ a quarter of that."""
    default = METHODS[method].default_lr
    if method == "loraplus":  # its B matrices learn 16× faster still: at 100× they overshoot on gpt2
        default /= 4
    if method == "randlora":  # at 100× (0.2) its scales overshoot: 0.6 % lower on gpt2, at 10× 4 %
        default /= 10
    return min(default * 100, 0.3) if model != "bert" else min(default * 20, 1e-2)


@dataclass
class TrainedRun:
    status: str
    error: str | None
    run_dir: Path
    events: list[Event]

    @property
    def losses(self) -> list[float]:
        return [e.loss for e in self.events if isinstance(e, Metrics)]

    @property
    def evals(self) -> list[Eval]:
        return [e for e in self.events if isinstance(e, Eval)]

    @property
    def started(self) -> Started:
        return next(e for e in self.events if isinstance(e, Started))


_RUNS: dict[tuple[str, str], TrainedRun] = {}


@pytest.fixture(scope="module")
def trained(request: pytest.FixtureRequest, make_spec: Callable[..., Any]) -> Callable[..., TrainedRun]:
    """`trained(method, model)`: the pair's one 20-step run (trained on first use)."""

    def get(method: str, model: str) -> TrainedRun:
        if (method, model) not in _RUNS:
            model_dir = request.getfixturevalue(f"tiny_{'bert_cls' if model == 'bert' else model}")
            data = request.getfixturevalue(data_for(method, model))
            spec = make_spec(model_dir, data, method, max_steps=STEPS, learning_rate=learning_rate(method, model),
                             data={"eval_path": str(fixed_rows(data))}, eval_on_start=True, eval_samples=0)
            events: list[Event] = []
            result = run(spec, events.append)
            _RUNS[method, model] = TrainedRun(result.status, result.error, result.run_dir, events)
        return _RUNS[method, model]

    return get


def fixed_rows(data: Path) -> Path:
    """FIXED_ROWS rows of a JSONL or CSV training file, every third one (both tasks of the task-routed
    files), written beside it: the rows the loss is measured on before and after training."""
    subset = data.with_name(f"{data.stem}-every3rd{data.suffix}")
    if not subset.exists():
        lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
        header = lines[:1] if data.suffix == ".csv" else []
        subset.write_text("".join(header + lines[len(header) :: 3][:FIXED_ROWS]), encoding="utf-8")
    return subset


def probe_inputs(tokenizer: Any) -> dict[str, torch.Tensor]:
    enc = tokenizer(["reverse abc", "great fun, love it; then reverse dcba"], return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's logits; a model that routes by task (Poly, trained here on two tasks) reads the rows as
    tasks 0, 1, 0, … (a model without Poly layers is not touched by the routing)."""
    from adapter_studio.engine.methods.poly import routed

    with torch.no_grad(), routed(model, torch.arange(len(inputs["input_ids"])) % 2):
        return model(**inputs).logits.float()


def test_table_covers_every_method() -> None:
    assert set(TRAINS) == set(METHODS), "add each new method to TRAINS (and UNSUPPORTED where it applies)"
    assert {m for m, _ in UNSUPPORTED} <= set(METHODS)


# --- supported pairs ------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "model"), SUPPORTED, ids=ids(SUPPORTED))
def test_training_lowers_the_loss(method: str, model: str, trained: Callable[..., TrainedRun]) -> None:
    result = trained(method, model)
    assert result.status == "completed", result.error
    assert len(result.losses) == STEPS
    start, end = result.evals[0], result.evals[-1]
    assert (start.step, end.step) == (0, STEPS)
    drop = 1 - end.eval_loss / start.eval_loss
    assert drop >= MIN_DROP.get(method, DEFAULT_MIN_DROP), (
        f"loss on the same {FIXED_ROWS} rows {start.eval_loss:.4f} → {end.eval_loss:.4f} ({drop:.1%})")


@pytest.mark.parametrize(("method", "model"), SUPPORTED, ids=ids(SUPPORTED))
def test_only_the_methods_parameters_train(method: str, model: str, trained: Callable[..., TrainedRun]) -> None:
    from adapter_studio.engine.inference.trained import load_trained

    result = trained(method, model)
    rebuilt = load_trained(result.run_dir).model
    names = [n for n, p in rebuilt.named_parameters() if p.requires_grad]
    count = sum(p.numel() for p in rebuilt.parameters() if p.requires_grad)
    declared = TRAINS[method]
    head = [n for n in names if "classifier" in n]
    strays = [n for n in names if not declared(n) and n not in head]
    assert not strays, f"{method} also trains {strays[:5]}"
    assert [n for n in names if n not in head], f"{method} trains none of its own parameters"
    assert bool(head) == (model == "bert"), "the classifier's head trains, and only on the classifier"
    assert count == result.started.trainable_params
    if method == "full":
        assert count == result.started.total_params


@pytest.mark.parametrize(("method", "model"), SUPPORTED, ids=ids(SUPPORTED))
def test_adapter_export_reloads_onto_a_fresh_base(
    method: str, model: str, trained: Callable[..., TrainedRun], tmp_path: Path
) -> None:
    from adapter_studio.engine.export.run_export import export_run, load_adapter
    from adapter_studio.engine.inference.trained import load_base, load_trained

    result = trained(method, model)
    exported = export_run(result.run_dir, "adapter", tmp_path / "adapter")
    assert exported.verified_max_diff is not None and exported.verified_max_diff < 1e-4

    tuned = load_trained(result.run_dir)
    base, tokenizer, _ = load_base(tuned.spec)
    if METHODS[method].adapter_format == "peft":
        from peft import PeftModel

        reloaded = PeftModel.from_pretrained(base, str(exported.path)).eval()
    else:
        reloaded = load_adapter(base, exported.path).eval()
    inputs = probe_inputs(tokenizer)
    want = logits(tuned.model, inputs)
    got = logits(reloaded, inputs)
    assert torch.equal(got, want), f"max logit difference {(got - want).abs().max():.2e}"
    untouched, _, _ = load_base(tuned.spec)
    before = logits(untouched, inputs)
    # Soft prompts add logits for their virtual tokens in front: compare the text's own positions.
    assert (before - want[:, want.shape[1] - before.shape[1] :]).abs().max() > 1e-4, "training changed nothing"


@pytest.mark.parametrize(("method", "model"), MERGEABLE, ids=ids(MERGEABLE))
def test_merged_export_loads_with_transformers(
    method: str, model: str, trained: Callable[..., TrainedRun], tmp_path: Path
) -> None:
    from adapter_studio.engine.export.run_export import export_run, merge_growth, merge_tolerance, weight_sizes
    from adapter_studio.engine.inference.trained import load_trained
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    result = trained(method, model)
    exported = export_run(result.run_dir, "merged", tmp_path / "merged")

    auto = AutoModelForSequenceClassification if model == "bert" else AutoModelForCausalLM
    merged = auto.from_pretrained(str(exported.path), dtype=torch.float32).eval()
    assert not any("lora" in n or "adapter" in n for n, _ in merged.named_parameters())
    tuned = load_trained(result.run_dir).model
    inputs = probe_inputs(AutoTokenizer.from_pretrained(str(exported.path)))
    # Within float32's rounding of the merged weights (1e-4 unless the merge made them or the logits larger).
    growth = merge_growth(weight_sizes(tuned), weight_sizes(merged))
    tolerance = merge_tolerance(growth, float(logits(tuned, inputs).abs().max()))
    assert exported.verified_max_diff is not None and exported.verified_max_diff < tolerance
    diff = (logits(merged, inputs) - logits(tuned, inputs)).abs().max()
    assert diff < tolerance


@pytest.mark.parametrize(("method", "model"), NOT_MERGEABLE, ids=ids(NOT_MERGEABLE))
def test_merged_export_is_refused(method: str, model: str, trained: Callable[..., TrainedRun], tmp_path: Path) -> None:
    from adapter_studio.engine.export.run_export import export_run

    result = trained(method, model)
    with pytest.raises(UserError, match="cannot be merged") as refused:
        export_run(result.run_dir, "merged", tmp_path / "merged")
    assert "--adapter" in refused.value.message
    assert not (tmp_path / "merged").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("method", "model"), PROMPT_LEARNING, ids=ids(PROMPT_LEARNING))
def test_generation_with_the_cache_matches_greedy_decoding_without(
    method: str, model: str, trained: Callable[..., TrainedRun]
) -> None:
    """Virtual tokens go in once, at the prompt: `generate` with the KV cache (as evaluation and the
    Try page use it) must give what recomputing the whole sequence at every step gives.

    One prompt at a time: peft drops position ids for prompt learning, so a left-padded row's
    positions count its padding and near-tied answers may differ from the unpadded ones."""
    from contextlib import nullcontext

    from adapter_studio.engine.inference.trained import load_trained
    from adapter_studio.engine.training.evaluation import generate_answers

    tuned = load_trained(trained(method, model).run_dir)
    tokenizer, prompts, new = tuned.tokenizer, ["reverse abc", "reverse ffedcba please"], 12
    answers = generate_answers(tuned.model, tokenizer, prompts, nullcontext, "cpu", batch_size=1, max_new_tokens=new)
    for prompt, answer in zip(prompts, answers, strict=True):
        ids_ = tokenizer(prompt, return_tensors="pt")["input_ids"]
        for _ in range(new):
            next_id = logits(tuned.model, {"input_ids": ids_, "attention_mask": torch.ones_like(ids_)})[0, -1].argmax()
            ids_ = torch.cat([ids_, next_id.view(1, 1)], dim=1)
            if next_id.item() == tokenizer.eos_token_id:
                break
        expected = tokenizer.decode(ids_[0, len(tokenizer(prompt)["input_ids"]) :], skip_special_tokens=True)
        assert answer == expected


# --- refused pairs ---------------------------------------------------------------------------------


def _assert_refused(result: TrainedRun, words: tuple[str, ...]) -> None:
    assert result.status == "failed"
    assert result.error is not None and all(w in result.error for w in words), result.error
    assert "Traceback" not in result.error and "training failed" not in result.error
    finished = [e for e in result.events if isinstance(e, Finished)]
    assert len(finished) == 1 and finished[0].step == 0 and finished[0].error == result.error
    assert not any(isinstance(e, Started | Metrics) for e in result.events), "refused before training"


@pytest.mark.parametrize(("method", "model"), list(UNSUPPORTED), ids=ids(list(UNSUPPORTED)))
def test_unsupported_pair_is_refused_with_a_reason(method: str, model: str, trained: Callable[..., TrainedRun]) -> None:
    _assert_refused(trained(method, model), UNSUPPORTED[method, model])


@pytest.mark.parametrize(
    ("method", "model", "training", "words"), REFUSED_SETTINGS, ids=[f"{m}-{x}" for m, x, _, _ in REFUSED_SETTINGS]
)
def test_unsupported_setting_is_refused_with_a_reason(
    method: str, model: str, training: dict[str, Any], words: tuple[str, ...], request: pytest.FixtureRequest,
    make_spec: Callable[..., Any],
) -> None:  # fmt: skip
    model_dir = request.getfixturevalue(f"tiny_{model}")
    spec = make_spec(model_dir, request.getfixturevalue(data_for(method, model)), method, **training)
    events: list[Event] = []
    result = run(spec, events.append)
    _assert_refused(TrainedRun(result.status, result.error, result.run_dir, events), words)


@pytest.mark.parametrize("model", MODELS)
def test_adalora_held_out_loss_leaves_out_its_penalty(model: str, trained: Callable[..., TrainedRun]) -> None:
    """AdaLoRA starts as the identity, like LoRA: before the first step both held-out losses are the base
    model's (peft adds the orthogonality penalty to the model's loss, about 1.7 here at the start)."""
    assert trained("adalora", model).evals[0].eval_loss == pytest.approx(trained("lora", model).evals[0].eval_loss,
                                                                        rel=1e-5)


@pytest.mark.parametrize(
    ("method", "words"),
    [
        ({"name": "lora", "target_modules": ["q_proj", "vv_proj"]}, ("this model has no layer named vv_proj",)),
        ({"name": "ia3", "feedforward_modules": ["o_proj"]},
         ("o_proj is not among the target modules (k_proj, v_proj, down_proj)", "method.feedforward_modules")),
        ({"name": "lora", "target_modules": ["embed_tokens", "q_proj", "vv_proj"]},
         ("embed_tokens is an embedding, not a linear layer: LoRA adapts linear layers; this model has no layer "
          "named vv_proj", "pick from its linear layers: q_proj")),
        ({"name": "ln_tuning", "target_modules": ["q_proj"]},
         ("q_proj is a linear layer, not a norm layer: LayerNorm tuning adapts norm layers",)),
    ],
    ids=["a name among known ones", "ia3 feed-forward outside its default targets", "an embedding",
         "a linear layer for norm tuning"],
)
def test_a_layer_name_the_model_lacks_is_refused_not_dropped(
    method: dict[str, Any], words: tuple[str, ...], tiny_llama: Path, alpaca_jsonl: Path, make_spec: Callable[..., Any]
) -> None:
    """q_proj,vv_proj trained q_proj alone, unsaid; IA3's feed-forward layer outside its targets failed in peft."""
    events: list[Event] = []
    result = run(make_spec(tiny_llama, alpaca_jsonl, method, max_steps=1), events.append)
    _assert_refused(TrainedRun(result.status, result.error, result.run_dir, events), words)


def test_targets_may_name_a_layer_by_its_path_or_the_output_head(tiny_llama: Path, alpaca_jsonl: Path,
                                                                 make_spec: Callable[..., Any]) -> None:  # fmt: skip
    method = {"name": "lora", "target_modules": ["self_attn.q_proj", "lm_head"]}
    result = run(make_spec(tiny_llama, alpaca_jsonl, method, max_steps=1, eval_samples=0))
    assert result.status == "completed", result.error
