"""Evaluation on the held-out split: loss, and accuracy or exact match where the task has them."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from adapter_studio.engine.data.batches import collate
from adapter_studio.engine.data.prepare import PreparedData
from adapter_studio.engine.methods.low_rank import task_loss_only
from adapter_studio.engine.methods.poly import answer_by_task, route_batch, routed

if TYPE_CHECKING:
    import torch


def held_out_warnings(data: PreparedData) -> list[str]:
    """What a run's evaluation will not say of itself: that it has no rows left to score, or that some of them
    are training rows again (identical rows in the file)."""
    if not len(data.eval) and any(note.startswith("held-out ") for note in data.dropped):
        return ["every held-out row was dropped: this run is not evaluated (raise data.max_length to keep them)"]
    if data.repeated:
        many = "row is also a training row" if data.repeated == 1 else "rows are also training rows"
        return [f"{data.repeated:,} held-out {many}, token for token (the file repeats them): their scores say "
                "what the model learnt by heart; remove the repeats to measure what it learnt"]
    return []


class EvaluationStopped(Exception):
    """Stop was asked for while the held-out set was scored: that evaluation is left out and the run stops
    (scoring 27,000 held-out rows held a Ctrl-C for five minutes)."""


def check_stop(stopped: Callable[[], bool] | None) -> None:
    if stopped is not None and stopped():
        raise EvaluationStopped


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    data: PreparedData,
    task: str,
    *,
    batch_size: int,
    pad_id: int,
    samples: int,
    autocast: Callable[[], AbstractContextManager[Any]],
    device: Any,
    stopped: Callable[[], bool] | None = None,
) -> dict[str, float | None]:
    import torch

    model.eval()
    total_loss, total_weight, correct = 0.0, 0, 0
    with torch.no_grad(), task_loss_only(model):
        for i in range(0, len(data.eval), batch_size):
            check_stop(stopped)
            items = data.eval[i : i + batch_size]
            batch = {k: v.to(device) for k, v in collate(items, pad_id, task == "classification").items()}
            with autocast(), route_batch(model, batch) as inputs:
                out = model(**inputs)
            if task == "classification":
                weight = len(items)
                correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
            else:
                weight = int((batch["labels"][:, 1:] != -100).sum())
            total_loss += float(out.loss) * weight
            total_weight += weight
    result: dict[str, float | None] = {"eval_loss": total_loss / max(total_weight, 1)}
    if task == "classification":
        result["accuracy"] = correct / max(len(data.eval), 1)
    elif samples and data.eval_prompts:
        check_stop(stopped)
        result["exact_match"] = exact_match(model, tokenizer, data.eval_prompts[:samples], autocast, device,
                                            tasks=data.eval_prompt_tasks[:samples] or None)
    return result


def exact_match(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: list[tuple[str, str]],
    autocast: Callable[[], AbstractContextManager[Any]],
    device: Any,
    batch_size: int = 16,
    tasks: list[int] | None = None,
) -> float:
    """Share of prompts whose greedy answer matches the expected one, as Evaluate compares them
    (metrics.answers_matched). `tasks`: each prompt's task id, for a model that routes by task (the prompts of
    one task are answered together)."""
    from adapter_studio.engine.evaluation.metrics import answers_matched

    config = getattr(model, "active_peft_config", None)
    if getattr(config, "is_prompt_learning", False):
        batch_size = 1  # peft drops position ids: a left-padded row would be answered differently
    longest = max(len(tokenizer(e)["input_ids"]) for _, e in pairs) + 8

    def answer(task: int | None, chosen: list[int]) -> list[str]:
        with routed(model, task):
            return generate_answers(model, tokenizer, [pairs[i][0] for i in chosen], autocast, device, batch_size,
                                    max_new_tokens=longest)  # fmt: skip

    answers = answer_by_task(tasks, len(pairs), answer)
    return answers_matched(answers, [e for _, e in pairs])


def generate_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[str],
    autocast: Callable[[], AbstractContextManager[Any]],
    device: Any,
    batch_size: int = 16,
    max_new_tokens: int = 64,
) -> list[str]:
    """Greedy answers, batched with left padding; generation uses the KV cache (prefix methods need it)."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            special = not getattr(tokenizer, "chat_template", None)
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=special).to(device)
            with torch.no_grad(), autocast():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            answers += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return answers
