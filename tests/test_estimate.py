"""The cost estimate (adapter_studio.engine.estimate.costs) against real models built with the same method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from adapter_studio.engine.defaults import fill_method
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.estimate.costs import estimate
from adapter_studio.engine.estimate.memory import MEMORY_PARTS
from adapter_studio.engine.estimate.sizes import safetensors_bytes
from adapter_studio.engine.estimate.table import estimate_table, format_table
from adapter_studio.engine.methods import METHODS, MethodContext
from adapter_studio.engine.methods.base import MethodSpec, trainable_count
from adapter_studio.engine.models.info import describe_model
from adapter_studio.engine.models.loading import MODEL_CONFIGS
from adapter_studio.engine.spec import TrainingSpec
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
)

CONFIGS = {
    "llama": (lambda: LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=256, max_position_embeddings=128), "causal_lm"),
    "gpt2": (lambda: GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=128,
                                bos_token_id=0, eos_token_id=0), "causal_lm"),
    "bert": (lambda: BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                vocab_size=256, max_position_embeddings=128), "classification"),
}
CASES = [(model, method) for model in CONFIGS for method in METHODS]
TRAINING = TrainingSpec(max_steps=10)


def build_real(model: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    make, task = CONFIGS[model]
    torch.manual_seed(0)
    if task == "classification":
        config = make()
        config.num_labels = 2
        return AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    return AutoModelForCausalLM.from_config(make(), dtype=dtype)


def training_dtype(method: MethodSpec) -> torch.dtype:
    """The dtype a CPU run loads its base in (bf16 for a frozen base where the CPU computes in bf16)."""
    from adapter_studio.engine.models.loading import trains_in_base_dtype, weights_dtype
    from adapter_studio.engine.training.devices import pick_precision

    precision = pick_precision(TRAINING.precision, "cpu")
    return weights_dtype("auto", "cpu", trains_in_base_dtype(method), precision)


def one_step(model: torch.nn.Module, spec, task: str) -> torch.optim.Optimizer:
    """A real forward, backward and optimizer step, as the training loop does it (a model that routes by
    task reads both rows as its first task; routing does nothing to any other model)."""
    from adapter_studio.engine.methods.poly import routed

    ids = torch.randint(3, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1]) if task == "classification" else ids
    model.train()
    with routed(model, 0):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        out.loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = spec.build_optimizer(model, 1e-3, 0.0) or torch.optim.AdamW(trainable, lr=1e-3)
    optimizer.step()
    return optimizer


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize(("model_name", "method_name"), CASES, ids=[f"{m}-{n}" for m, n in CASES])
def test_estimate_matches_the_real_model(model_name: str, method_name: str, tmp_path: Path) -> None:
    make, task = CONFIGS[model_name]
    cls = METHODS[method_name]
    row = estimate(make(), cls(), TRAINING, task=task, device="cpu")

    real = build_real(model_name, training_dtype(cls()))
    info = describe_model(real)
    spec = fill_method(cls(), info)  # as a run fills it (engine.defaults)
    try:
        spec.check(info, TRAINING)
        applied = spec.apply(real, MethodContext(info=info, training=TRAINING, total_steps=10))
        if trainable_count(applied) == 0:
            raise UserError("nothing to train")
        optimizer = one_step(applied, spec, task)
    except (UserError, ValueError) as e:  # the method cannot work here: the estimate must say so
        assert "error" in row, f"the real model failed ({e}) but the estimate did not"
        assert "memory_bytes" not in row
        return
    assert "error" not in row, row["error"]

    params = list(applied.parameters())
    assert row["trainable_params"] == trainable_count(applied)
    assert row["total_params"] == sum(p.numel() for p in params)
    memory = row["memory_bytes"]
    assert memory["weights"] == tensor_bytes(params) + tensor_bytes(applied.buffers())
    assert memory["gradients"] == tensor_bytes(p.grad for p in params if p.requires_grad)
    states = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    assert memory["optimizer"] == tensor_bytes(states)
    assert memory["total"] == sum(memory[k] for k in MEMORY_PARTS)
    assert memory["activations"] > 0

    spec.save_adapter(applied, str(tmp_path))
    written = sum(f.stat().st_size for f in tmp_path.glob("*.safetensors"))
    assert row["adapter_bytes"] == written


def test_lora_on_llama_3_1_8b_is_exact() -> None:
    rows = estimate_table("llama-3.1-8b", "lora", ["method.r=8", "method.target_modules=[q_proj,v_proj]"])
    assert rows[0]["trainable_params"] == 3_407_872
    assert rows[0]["total_params"] == 8_030_261_248 + 3_407_872
    assert rows[0]["adapter_bytes"] > 3_407_872 * 4  # float32 tensors plus the header


def test_unsupported_pairs_get_an_error() -> None:
    rows = {r["method"]: r for r in estimate_table("llama-3.1-8b", "bitfit,lora", [])}
    assert "bias" in rows["bitfit"]["error"]
    assert "trainable_params" not in rows["bitfit"]
    assert "error" not in rows["lora"]
    bert = {r["method"]: r for r in estimate_table("bert-base", "llama_adapter,mam,lora", [])}
    assert "error" in bert["llama_adapter"] and "error" in bert["mam"]
    assert "error" not in bert["lora"]


def test_overrides_apply_to_the_methods_that_have_the_field() -> None:
    rows = {r["method"]: r for r in estimate_table("smollm2-135m", "lora,ia3", ["method.r=16"])}
    assert rows["lora"]["trainable_params"] == 2 * 2_442_240  # r 8 on every linear layer of the blocks: 2,442,240
    base = {r["method"]: r for r in estimate_table("smollm2-135m", "ia3", [])}
    assert rows["ia3"]["trainable_params"] == base["ia3"]["trainable_params"]


def test_training_and_data_overrides_change_memory() -> None:
    small = estimate_table("smollm2-135m", "lora", ["training.batch_size=1", "data.max_length=128"])[0]
    big = estimate_table("smollm2-135m", "lora", ["training.batch_size=8", "data.max_length=128"])[0]
    assert big["memory_bytes"]["activations"] > 3 * small["memory_bytes"]["activations"]
    assert big["memory_bytes"]["weights"] == small["memory_bytes"]["weights"]
    assert small["assumptions"]["batch_size"] == 1 and small["assumptions"]["seq_len"] == 128


@pytest.mark.parametrize(
    ("objective", "rows", "copy_for"),
    [("sft", 4, ()), ("dpo", 8, ("full",)), ("ipo", 8, ("full",)), ("orpo", 8, ()), ("simpo", 8, ()),
     ("kto", 8, ("full",))],
)  # fmt: skip
def test_a_preference_step_holds_two_rows_a_pair_and_a_frozen_copy_where_the_method_changes_the_base(
    objective: str, rows: int, copy_for: tuple[str, ...]
) -> None:
    """DPO's 4 pairs are 8 rows (KTO's answers each come with a mismatched one); full fine-tuning with an
    objective that compares with the model before training keeps a frozen copy of it (LoRA switches its
    adapter off); ORPO and SimPO need no reference. benchmarks/preference_memory.py measures the rows."""
    settings = ["data.max_length=128", "training.gradient_checkpointing=off"]
    sft = {r["method"]: r for r in estimate_table("smollm2-135m", "lora,full", [*settings, "training.batch_size=4"])}
    same_rows = {r["method"]: r for r in estimate_table("smollm2-135m", "lora,full",
                                                        [*settings, f"training.batch_size={rows}"])}  # fmt: skip
    found = {r["method"]: r for r in estimate_table(
        "smollm2-135m", "lora,full", [*settings, "training.batch_size=4", f"objective.name={objective}"])}  # fmt: skip
    for method in ("lora", "full"):
        row, plain = found[method], sft[method]
        assert row["assumptions"]["rows_per_step"] == rows and row["assumptions"]["batch_size"] == 4
        # as many rows as a supervised step of 2·B, and the answers' float32 logits kept where a supervised
        # step's loss goes a chunk at a time (LoRA's; full fine-tuning keeps them either way)
        same = same_rows[method]["memory_bytes"]["activations"]
        chunked = rows > 4 and method == "lora"
        assert row["memory_bytes"]["activations"] > same if chunked else row["memory_bytes"]["activations"] == same
        copy = row["assumptions"]["reference_copy_bytes"]
        assert (copy > 0) == (method in copy_for)
        assert row["memory_bytes"]["weights"] == plain["memory_bytes"]["weights"] + copy
    if "full" in copy_for:  # the copy is the model's weights once more
        assert found["full"]["assumptions"]["reference_copy_bytes"] == sft["full"]["memory_bytes"]["weights"]


def test_unknown_keys_are_named() -> None:
    with pytest.raises(UserError, match=r"method\.rank"):
        estimate_table("smollm2-135m", "lora", ["method.rank=8"])
    with pytest.raises(UserError, match=r"training\.batchsize"):
        estimate_table("smollm2-135m", "lora", ["training.batchsize=8"])
    with pytest.raises(UserError, match="unknown method"):
        estimate_table("smollm2-135m", "lorra", [])


def test_a_value_one_method_rejects_is_that_rows_error() -> None:
    rows = {r["method"]: r for r in estimate_table("smollm2-135m", "lora,vera", ["method.r=2048"])}
    assert "method.r" in rows["lora"]["error"]  # LoRA allows at most 1024
    assert "error" not in rows["vera"]


def test_quantized_base_and_checkpointing() -> None:
    plain = estimate_table("llama-3.2-1b", "lora,full", ["model.device=cuda"])
    nf4 = {r["method"]: r for r in estimate_table("llama-3.2-1b", "lora,full", ["model.quantization=4bit"])}
    assert nf4["lora"]["memory_bytes"]["weights"] < 0.6 * plain[0]["memory_bytes"]["weights"]
    assert "4bit" in nf4["full"]["error"]
    ckpt = estimate_table("llama-3.2-1b", "lora,prefix_tuning", ["training.gradient_checkpointing=true"])
    assert ckpt[0]["memory_bytes"]["activations"] < 0.5 * estimate_table("llama-3.2-1b", "lora", [])[0][
        "memory_bytes"]["activations"]
    assert "checkpointing" in ckpt[1]["error"]


def _memory(method: str, *overrides: str) -> dict[str, int]:
    return estimate_table("llama-3.2-1b", method, ["model.device=cuda", *overrides])[0]["memory_bytes"]


@pytest.mark.parametrize(
    ("strategy", "sharded"),
    [("ddp", ()), ("deepspeed", ("gradients", "optimizer")), ("fsdp", ("gradients", "optimizer", "weights"))],
)
def test_several_gpus_change_each_ones_memory_by_strategy(strategy: str, sharded: tuple[str, ...]) -> None:
    one = _memory("full")  # full fine-tuning: a float32 base, so only the sharding differs under FSDP
    four = _memory("full", "training.devices=4", f"training.distributed={strategy}")
    for part in ("weights", "gradients", "optimizer"):
        expected = one[part] / 4 if part in sharded else one[part]
        assert four[part] == pytest.approx(expected, abs=1), part
    assert four["activations"] == one["activations"]  # the batch size is per device
    if strategy != "deepspeed":
        assert four["temporary"] > one["temporary"]  # DDP's gradient buckets, FSDP's gathered block


def test_fsdp_keeps_a_lora_base_in_float32_and_cpu_processes_share_the_machine() -> None:
    bf16 = _memory("lora")
    fsdp = _memory("lora", "training.devices=2", "training.distributed=fsdp")
    assert fsdp["weights"] == pytest.approx(bf16["weights"], rel=0.01)  # twice the bytes, half on each GPU
    cpu = {d: estimate_table("smollm2-135m", "lora", ["model.device=cpu", f"training.devices={d}"])[0]
           for d in (1, 2)}  # fmt: skip
    assert cpu[2]["memory_bytes"]["weights"] == cpu[1]["memory_bytes"]["weights"]
    assert cpu[2]["assumptions"]["devices"] == 2


def test_cached_model_is_left_untouched() -> None:
    first = estimate_table("smollm2-135m", "bitfit,last_layers,lora,full", [])
    again = estimate_table("smollm2-135m", "lora,full,last_layers", [])
    by_name = {r["method"]: r for r in first}
    for row in again:
        assert row == by_name[row["method"]]


def test_safetensors_size_is_exact(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {"b.weight": torch.zeros(3, 5), "a": torch.zeros(1000, dtype=torch.bfloat16), "s": torch.zeros(())}
    for metadata in (None, {"format": "pt"}):
        save_file(tensors, str(tmp_path / "x.safetensors"), metadata=metadata)
        assert safetensors_bytes(tensors, metadata) == (tmp_path / "x.safetensors").stat().st_size


def test_format_table_and_json() -> None:
    rows = estimate_table("smollm2-135m", "lora,bitfit", [])
    text = format_table(rows)
    assert "lora" in text and "2,442,240" in text and "bitfit" in text and "not available" in text
    json.dumps(rows)  # the CLI's --json output
    assert set(MEMORY_PARTS) <= set(rows[0]["memory_bytes"])


def test_the_in_context_baseline_costs_an_inference_pass_with_its_cache(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    rows = {r["method"]: r for r in estimate_table(str(tiny_llama), "lora,in_context,features",
                                                   ["data.max_length=16", "training.precision=float32"])}  # fmt: skip
    row = rows["in_context"]
    assert (row["trainable_params"], row["adapter_bytes"], row["baseline"]) == (0, 0, True)
    memory, assumed = row["memory_bytes"], row["assumptions"]
    assert memory["gradients"] == memory["optimizer"] == 0 and memory["total"] == sum(
        memory[k] for k in MEMORY_PARTS)
    assert assumed["seq_len"] == 5 * 16 and assumed["in_context_k"] == 4  # 4 rows before each prompt, and the prompt
    # The key/value cache it counts is what the model really keeps for a prompt of that length.
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    ids = torch.zeros(assumed["batch_size"], assumed["seq_len"], dtype=torch.long)
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    kept = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert memory["activations"] == kept
    assert memory["weights"] == sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())
    assert rows["lora"]["trainable_params"] > 0  # the methods' rows are unchanged beside it
    assert "baseline for a classifier" in rows["features"]["error"]
    assert "in_context (In-context examples (no training)): nothing trains" in format_table(list(rows.values()))


def test_the_feature_baseline_learns_outside_the_model(tiny_bert_cls: Path) -> None:
    row = estimate_table(str(tiny_bert_cls), "features", [])[0]
    assert row["trainable_params"] == 2 * (64 + 1) and row["adapter_bytes"] == 0  # 2 labels × (hidden + bias)
    assert row["memory_bytes"]["activations"] == 0 and "logistic regression on 64 frozen features" in row["note"]


@pytest.mark.parametrize(
    ("method", "training", "projected", "chunked"),
    [
        ("lora", {}, 0.25, True),  # the engine projects only the labelled quarter, a chunk at a time (fast_loss)
        ("full", {}, 0.25, False),  # the head trains: its logits and their gradient over every labelled token
        ("prompt_tuning", {}, 1.0, False),  # virtual tokens live in peft's wrapper: the model's own loss
        ("lora", {"devices": 2}, 1.0, False),  # several processes: DDP needs the whole model's forward
    ],
)
def test_the_head_costs_only_the_positions_the_engine_projects(method: str, training: dict, projected: float,
                                                               chunked: bool) -> None:
    from adapter_studio.engine.training.fast_loss import chunk_rows
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(MODEL_CONFIGS / "llama-3.1-8b")
    spec = TrainingSpec(batch_size=2, **training)
    tokens, vocab, hidden, c = 2 * 512, config.vocab_size, config.hidden_size, 2
    row = estimate(config, METHODS[method](), spec, task="causal_lm", device="cuda", seq_len=512, labelled_share=0.25)
    every = estimate(config, METHODS[method](), spec, task="causal_lm", device="cuda", seq_len=512)  # share unknown
    less = {part: every["memory_bytes"][part] - row["memory_bytes"][part] for part in ("temporary", "activations")}
    skipped = tokens * (1 - projected)  # positions not projected
    if chunked:  # kept: the hidden states' gradient; alive: one chunk's float32 logits and log-probabilities
        rows = chunk_rows(vocab, "cuda")
        assert less["activations"] == pytest.approx(skipped * hidden * c, abs=8)
        chunks = min(tokens, rows) - min(tokens * projected, rows)  # positions of the largest chunk not projected
        assert less["temporary"] == pytest.approx(chunks * vocab * 8, abs=8)
    else:
        assert less["temporary"] == pytest.approx(skipped * vocab * (c + 8), abs=8)  # logits, float32 gradients
        assert less["activations"] == pytest.approx(skipped * vocab * 4, abs=8)  # the float32 log-softmax


def test_a_checkpointed_step_peaks_in_the_head_or_in_a_recompute_not_both() -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(MODEL_CONFIGS / "llama-3.1-8b")
    lora = METHODS["lora"](target_modules=["q_proj", "v_proj"])
    memory = {
        share: estimate(config, lora, TrainingSpec(batch_size=1, gradient_checkpointing=True), task="causal_lm",
                        device="cuda", seq_len=2048, labelled_share=share)["memory_bytes"]
        for share in (1.0, 0.01)
    }
    # Every position projected: the head's chunk (1,046 positions × 128,256 × 8 bytes of float32 logits and
    # log-probabilities) outweighs one block's recompute, which is then not added; almost none projected: the
    # recompute is the peak and no logits are alive.
    assert memory[1.0]["temporary"] > 0
    assert memory[0.01]["temporary"] == 0
    inputs = 32 * 2048 * 4096 * 2  # each block's input, bf16
    assert inputs < memory[0.01]["activations"] < inputs + 2 * 2**30


@pytest.mark.parametrize(
    ("method", "memory", "chosen", "fits"),
    [
        ("lora", "between", True, True),  # fits only with it: on
        ("lora", "plenty", False, True),  # fits without: off
        ("lora", "scarce", True, False),  # fits neither way: on, the closest
        ("prefix_tuning", "between", False, False),  # cannot checkpoint: stays off and does not fit
    ],
)
def test_auto_checkpointing_is_on_only_where_the_step_does_not_fit_without(method: str, memory: str, chosen: bool,
                                                                          fits: bool) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(MODEL_CONFIGS / "llama-3.2-1b")

    def total(setting: str, memory: int | None = None) -> dict:
        return estimate(config, METHODS[method](), TrainingSpec(batch_size=8, gradient_checkpointing=setting),
                        task="causal_lm", device="cuda", seq_len=1024, device_memory=memory)  # fmt: skip

    plain = total("off")["memory_bytes"]["total"]
    lighter = total("on")["memory_bytes"]["total"] if method != "prefix_tuning" else plain // 2
    available = {"between": (plain + lighter) // 2, "plenty": 2 * plain, "scarce": lighter // 2}[memory]
    row = total("auto", available)
    assert row["assumptions"]["gradient_checkpointing"] is chosen and row["assumptions"]["checkpointing_chosen"]
    assert row["fits"] is fits
    assert row["memory_bytes"]["total"] == (lighter if chosen else plain)


def test_loras_dropout_mask_is_a_byte_per_input_on_a_cpu_run() -> None:
    """A CPU run draws LoRA's dropout masks as bools (training.bits_dropout): the estimate's difference
    between dropout and none is a byte per input element, as the bool tensors autograd keeps in a real forward
    (the estimate was 4 bytes, a float32 mask, and ~0.9 GiB too high for the Llama-3.2-1B shape)."""
    from adapter_studio.engine.training.speed import SpeedOptions

    lora = {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    training = TrainingSpec(batch_size=2, precision="bf16")
    config, task = CONFIGS["llama"][0](), CONFIGS["llama"][1]

    def activations(dropout: float) -> int:
        row = estimate(config, METHODS["lora"](dropout=dropout, **lora), training, task=task, device="cpu",
                       weight_dtype="bfloat16", seq_len=64)  # fmt: skip
        return row["memory_bytes"]["activations"]

    model = build_real("llama", torch.bfloat16)
    info = describe_model(model)
    spec = fill_method(METHODS["lora"](dropout=0.05, **lora), info)
    model = spec.apply(model, MethodContext(info=info, training=training, total_steps=10))
    SpeedOptions().speed_up_lora_layers(model, "cpu", "bf16")
    masks: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        if t.dtype == torch.bool and t.dim() == 3:  # [rows, tokens, features]: not the attention mask
            masks[t.untyped_storage().data_ptr()] = t.numel()
        return t

    ids = torch.randint(3, 256, (2, 64), generator=torch.Generator().manual_seed(1))
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids).loss.backward()
    width = 6 * 64 + 128  # q, k, v, o, gate, up read 64 features; down the intermediate 128
    first = 3 * 64  # the first block's q, k, v read the frozen embeddings: no gradient, so no mask is kept
    assert sum(masks.values()) == 2 * 64 * (2 * width - first)  # rows × tokens × inputs of both blocks
    assert activations(0.05) - activations(0.0) == 2 * 64 * 2 * width  # (the estimate counts those three too)


def test_a_cpu_run_counts_the_heap_the_allocator_keeps() -> None:
    from adapter_studio.engine.estimate.memory import CPU_HEAP_KEPT, CPU_PROCESS_BYTES, CUDA_CONTEXT_BYTES

    config, task = CONFIGS["llama"][0](), CONFIGS["llama"][1]
    memory = {device: estimate(config, METHODS["lora"](), TrainingSpec(batch_size=2), task=task, device=device,
                               seq_len=64)["memory_bytes"] for device in ("cpu", "cuda")}  # fmt: skip
    cpu = memory["cpu"]
    assert cpu["overhead"] == CPU_PROCESS_BYTES + int(CPU_HEAP_KEPT * cpu["activations"])
    assert memory["cuda"]["overhead"] == CUDA_CONTEXT_BYTES  # torch's caching allocator: counted in its context
