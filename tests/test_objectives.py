"""The preference objectives against TRL 1.16, the reference implementation, on the same batch and weights.

Each test runs TRL's own trainer code (DPOTrainer._compute_loss for DPO and IPO, KTOTrainer._compute_loss
for KTO with its mismatched KL rows, CPOTrainer's SimPO and ORPOTrainer's batch losses from
trl.experimental) on a tiny Llama with a LoRA adapter whose B matrices are random (so the policy
differs from the reference, the base with the adapter off), and compares the loss, and the gradient
of every LoRA weight, with the app's (engine.objectives) within 1e-5 in float32. The trainers are
made without their __init__ (no data sets, no Trainer machinery) and given the few settings their
loss code reads. ORPO's supervised term differs on purpose: TRL's takes the chosen sequence's prompt
tokens too, the paper's and the app's only the answer's; the odds-ratio term and its gradient are
compared exactly, and the supervised term against the model's own answer-only loss.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.conftest import write_jsonl
from tests.test_preference import preference_rows

trl = pytest.importorskip("trl", reason="trl is a test dependency (pip install -e '.[test]')")

TOL = 1e-5


class _Accelerator:
    device = torch.device("cpu")

    def unwrap_model(self, model: Any) -> Any:
        return model

    def gather_for_metrics(self, x: Any) -> Any:
        return x

    gather = gather_for_metrics


@pytest.fixture(scope="module")
def setup(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny Llama with a LoRA adapter (random B), a batch of 4 pairs from the app's own pipeline."""
    from adapter_studio.engine.data.batches import collate
    from adapter_studio.engine.data.prepare import prepare_data
    from adapter_studio.engine.spec import DataSpec
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = write_jsonl(tmp_path_factory.mktemp("pairs") / "p.jsonl", preference_rows(12, seed=5))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    data = prepare_data(DataSpec(path=str(path), eval_split=0.0), tokenizer, None, 64, 0, use_cache=False)
    batch = collate(data.train[:4], tokenizer.pad_token_id or 0, False)
    assert "prefix_ids" in batch  # so the comparisons below take the shared-prompt path (test_shared_prompts)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    base.config.use_cache = False
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    model.train()
    return {"model": model, "batch": batch, "pad": tokenizer.pad_token_id or 0}


def lora_grads(model: Any, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def ours(objective: Any, setup: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    from adapter_studio.engine.objectives.logps import pair_logps
    from adapter_studio.engine.training.fast_loss import causal_lm_parts

    model = setup["model"]
    logps = pair_logps(objective, model, causal_lm_parts(model), setup["batch"])
    return objective.pair_loss(logps).loss, logps


def assert_same(ours_loss: torch.Tensor, trl_loss: torch.Tensor, model: Any) -> None:
    assert abs(float(ours_loss) - float(trl_loss)) < TOL, (float(ours_loss), float(trl_loss))
    mine, theirs = lora_grads(model, ours_loss), lora_grads(model, trl_loss)
    assert mine.keys() == theirs.keys() and mine
    for name in mine:
        assert torch.allclose(mine[name], theirs[name], atol=TOL, rtol=1e-4), name


def fused(model: Any) -> Any:
    """The model with TRL's fused LM head (`model(..., fused_lm_head=True)`), as its trainers patch it, once."""
    from trl.trainer.utils import add_fused_lm_head

    if not getattr(model.get_base_model(), "_as_fused", False):
        add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
        model.get_base_model()._as_fused = True
    return model


def trl_dpo(setup: dict[str, Any], loss_type: str, beta: float) -> torch.Tensor:
    from trl import DPOTrainer

    model = fused(setup["model"])
    trainer = DPOTrainer.__new__(DPOTrainer)
    trainer.__dict__.update(
        model=model, ref_model=None, accelerator=_Accelerator(),
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        aux_loss_enabled=False, precompute_ref_logps=False, ld_alpha=None, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=0.0, use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    batch = setup["batch"]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": (batch["labels"] != -100).long()}  # fmt: skip
    return trainer._compute_loss(model, inputs, return_outputs=False)


def pair_batch(setup: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The batch as TRL's CPO and ORPO trainers take it: chosen_* and rejected_* halves."""
    batch, n = setup["batch"], setup["batch"]["input_ids"].shape[0] // 2
    out = {}
    for side, rows in (("chosen", slice(0, n)), ("rejected", slice(n, None))):
        out[f"{side}_input_ids"] = batch["input_ids"][rows]
        out[f"{side}_attention_mask"] = batch["attention_mask"][rows]
        out[f"{side}_labels"] = batch["labels"][rows]
    return out


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_equals_trl(setup: dict[str, Any], beta: float) -> None:
    from adapter_studio.engine.objectives import OBJECTIVES

    loss, logps = ours(OBJECTIVES["dpo"](beta=beta), setup)
    assert float((logps.chosen - logps.ref_chosen).abs().max()) > 1e-2  # the adapter changed the answers' logps
    assert_same(loss, trl_dpo(setup, "sigmoid", beta), setup["model"])


def test_dpo_label_smoothing_is_the_conservative_dpo_formula(setup: dict[str, Any]) -> None:
    """TRL 1.16's DPO has no smoothed sigmoid any more; its CPO 'sigmoid' loss (and TRL's DPO before 0.20)
    is the cDPO formula, checked here on the same log-ratios."""
    import torch.nn.functional as F
    from adapter_studio.engine.objectives import OBJECTIVES

    loss, logps = ours(OBJECTIVES["dpo"](beta=0.3, label_smoothing=0.2), setup)
    x = (logps.chosen - logps.ref_chosen) - (logps.rejected - logps.ref_rejected)
    expected = (-F.logsigmoid(0.3 * x) * 0.8 - F.logsigmoid(-0.3 * x) * 0.2).mean()
    assert abs(float(loss) - float(expected)) < TOL


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_ipo_equals_trl(setup: dict[str, Any], beta: float) -> None:
    from adapter_studio.engine.objectives import OBJECTIVES

    loss, _ = ours(OBJECTIVES["ipo"](beta=beta), setup)
    assert_same(loss, trl_dpo(setup, "ipo", beta), setup["model"])


@pytest.mark.parametrize(("beta", "gamma"), [(2.0, 0.5), (0.7, 1.2)])
def test_simpo_equals_trl(setup: dict[str, Any], beta: float, gamma: float) -> None:
    from adapter_studio.engine.objectives import OBJECTIVES
    from trl.experimental.cpo import CPOTrainer

    trainer = CPOTrainer.__new__(CPOTrainer)
    trainer.__dict__.update(
        loss_type="simpo", beta=beta, simpo_gamma=gamma, label_smoothing=0.0, alpha=0.0, cpo_alpha=0.0,
        is_encoder_decoder=False, padding_value=setup["pad"], label_pad_token_id=-100,
        pad_token_id=setup["pad"], accelerator=_Accelerator(),
        aux_loss_enabled=False,
    )  # fmt: skip
    trl_loss, _ = trainer.get_batch_loss_metrics(setup["model"], pair_batch(setup), "train")
    loss, _ = ours(OBJECTIVES["simpo"](beta=beta, gamma=gamma), setup)
    assert_same(loss, trl_loss, setup["model"])


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_orpo_odds_ratio_term_equals_trl(setup: dict[str, Any], beta: float) -> None:
    import torch.nn.functional as F
    from adapter_studio.engine.objectives import OBJECTIVES
    from trl.experimental.orpo import ORPOTrainer

    model, batch = setup["model"], setup["batch"]
    trainer = ORPOTrainer.__new__(ORPOTrainer)
    trainer.__dict__.update(
        beta=beta, is_encoder_decoder=False, padding_value=setup["pad"], label_pad_token_id=-100,
        pad_token_id=setup["pad"],
        accelerator=_Accelerator(), aux_loss_enabled=False,
    )  # fmt: skip
    trl_loss, metrics = trainer.get_batch_loss_metrics(model, pair_batch(setup), "train")
    # TRL's supervised term: next-token loss over the chosen rows' whole sequences (prompt included).
    n = batch["input_ids"].shape[0] // 2
    logits = model(input_ids=batch["input_ids"][:n], attention_mask=batch["attention_mask"][:n]).logits
    whole = batch["input_ids"][:n].masked_fill(batch["attention_mask"][:n] == 0, -100)
    trl_nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), whole[:, 1:].flatten())
    assert abs(float(trl_nll) - float(metrics["nll_loss"])) < TOL
    loss, logps = ours(OBJECTIVES["orpo"](beta=beta), setup)
    # Ours: the same loss over the answer tokens only.
    answer_nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:n, 1:].flatten())
    assert abs(float(logps.chosen_nll) - float(answer_nll)) < TOL
    assert_same(loss - logps.chosen_nll, trl_loss - trl_nll, model)


def test_summed_answer_logps_equal_trls(setup: dict[str, Any]) -> None:
    """With and without projecting only the answer positions (training.fast_loss), as TRL's get_batch_logps."""
    from adapter_studio.engine.objectives.logps import row_logps
    from adapter_studio.engine.training.fast_loss import causal_lm_parts
    from trl.experimental.orpo import ORPOTrainer

    model, batch = setup["model"], setup["batch"]
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = ORPOTrainer.get_batch_logps(logits, batch["labels"])
        fast, counts = row_logps(model, causal_lm_parts(model), batch)
        slow, _ = row_logps(model, None, batch)
    assert torch.allclose(fast, expected, atol=TOL) and torch.allclose(slow, expected, atol=TOL)
    assert counts.tolist() == (batch["labels"][:, 1:] != -100).sum(1).float().tolist()


@pytest.mark.parametrize(("beta", "weights"), [(0.1, (1.0, 1.0)), (0.5, (1.33, 0.8))])
def test_kto_equals_trl(setup: dict[str, Any], tiny_llama: Path, tmp_path: Path, beta: float,
                        weights: tuple[float, float]) -> None:  # fmt: skip
    from adapter_studio.engine.data.batches import collate
    from adapter_studio.engine.data.prepare import prepare_data
    from adapter_studio.engine.objectives import OBJECTIVES
    from adapter_studio.engine.spec import DataSpec
    from transformers import AutoTokenizer
    from trl import KTOTrainer

    from tests.test_preference import kto_rows

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    path = write_jsonl(tmp_path / "kto.jsonl", kto_rows(12, seed=6))
    data = prepare_data(DataSpec(path=str(path), eval_split=0.0), tokenizer, None, 64, 0, use_cache=False)
    batch = collate(data.train[:5], setup["pad"], False)  # 3 desirable, 2 undesirable
    assert batch["desirable"].tolist() == [True, False, True, False, True]
    ours_setup = {**setup, "batch": batch}
    objective = OBJECTIVES["kto"](beta=beta, desirable_weight=weights[0], undesirable_weight=weights[1])
    loss, logps = ours(objective, ours_setup)
    assert float((logps.chosen - logps.ref_chosen).abs().max()) > 1e-2
    model = fused(setup["model"])
    trainer = KTOTrainer.__new__(KTOTrainer)
    trainer.__dict__.update(
        model=model, ref_model=None, accelerator=_Accelerator(),
        args=SimpleNamespace(gradient_checkpointing_kwargs=None), aux_loss_enabled=False,
        precompute_ref_logps=False, calculate_KL=True, loss_type="kto", beta=beta,
        desirable_weight=weights[0], undesirable_weight=weights[1],
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    n = batch["input_ids"].shape[0] // 2
    completion = (batch["labels"] != -100).long()
    inputs = {
        "input_ids": batch["input_ids"][:n], "attention_mask": batch["attention_mask"][:n],
        "completion_mask": completion[:n], "KL_input_ids": batch["input_ids"][n:],
        "KL_attention_mask": batch["attention_mask"][n:], "KL_completion_mask": completion[n:],
        "label": batch["desirable"],
    }  # fmt: skip
    trl_loss = trainer._compute_loss(model, inputs, return_outputs=False)
    assert_same(loss, trl_loss, model)


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({}, ""),  # a supervised run: nothing to add
        ({"reward_margin": 0.25, "preference_accuracy": 0.75}, " margin 0.250 pref_acc 0.750"),
        ({"reward_margin": 0.25, "preference_accuracy": None}, " margin 0.250"),  # KTO: no pairs to rank
    ],
)
def test_progress_line_of_each_objective(fields: dict[str, Any], text: str) -> None:
    """The CLI prints this on every step and evaluation; KTO's missing accuracy once failed its runs."""
    from adapter_studio.engine.events import Eval, Metrics
    from adapter_studio.engine.objectives.training import progress_text

    metrics = Metrics(step=1, epoch=0.1, loss=0.5, lr=1e-4, grad_norm=1.0, tokens_per_s=10.0, tokens_seen=10,
                      memory_bytes=1, **fields)  # fmt: skip
    assert progress_text(metrics) == text
    assert progress_text(Eval(step=1, eval_loss=0.5, **fields)) == text
