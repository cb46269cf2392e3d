"""The learning-rate finder (`training.learning_rate: auto`): a short range test on the run's own batches
that picks the peak learning rate.

Leslie Smith's range test, as fastai's `lr_find` and torch-lr-finder run it: after the method is applied
and before training, a few dozen steps with an optimizer of the run's own kind on its first batches,
while the rate grows exponentially from 1e-6 to 1; the test stops early once a running average of the
loss passes 4× its best. The rate picked is where the smoothed loss falls fastest against log(rate)
("steepest descent") — or, when that lies within a decade of the lowest loss (a rate at the edge of
diverging), midway on the log scale between it and a tenth of the lowest loss's rate (fastai's advice:
pick between the two) — kept within 20× of the default rate (engine.defaults) either way. Then the trainable weights
and the random number generators are put back, and the run's optimizer and schedule are made again
from the picked rate, so the training that follows is the one a run given that rate does. The rate is
saved in the run's spec.yaml, so a resume or a re-run uses it without a second test.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from adapter_studio.engine.events import LrFinder, Stage
from adapter_studio.engine.methods.poly import route_batch
from adapter_studio.engine.training.devices import process_rank
from adapter_studio.engine.training.optimizers import build_optimizer, build_scheduler

if TYPE_CHECKING:
    from adapter_studio.engine.spec import RunSpec, TrainingSpec
    from adapter_studio.engine.training.session import TrainingSession

AUTO = "auto"
STAGE = "finding the learning rate"
START_RATE, END_RATE = 1e-6, 1.0
# At least 5 rates per decade to read a slope from; at most one pass over the data (a batch seen twice
# falls for being remembered, not for the rate) and never more than 60 steps: it is a preamble.
MIN_STEPS, MAX_STEPS = 30, 60
DIVERGED = 4.0  # stop once the running average of the loss is 4× its best (fastai's rule)
RUNNING = 0.7  # weight of that running average (an EMA: steps are 0.1–0.2 decades apart, so not fastai's 0.98)
SMOOTHING_WIDTH = 5  # steps in the smoothing the pick reads (about half a decade)
BAND = 20.0  # the pick stays within 20× of the default rate either way (its family's usual range)
MIN_FALL = 0.02  # a smoothed fall under 2% of the starting loss is no signal
PROGRESS_EVERY = 10  # steps between progress reports (a step of a real model takes a second or more)


@dataclass(frozen=True)
class Pick:
    """The rate a range test points at, why, and the smoothed curve it was read from."""

    rate: float
    reason: str
    smoothed: list[float]


def finder_steps(steps_per_epoch: int) -> int:
    """How many steps the range test takes for a run with this many optimizer steps per epoch."""
    return min(MAX_STEPS, max(MIN_STEPS, steps_per_epoch))


def range_rates(steps: int) -> list[float]:
    """The rates of the range test: exponentially spaced from START_RATE to END_RATE."""
    ratio = END_RATE / START_RATE
    return [START_RATE * ratio ** (i / (steps - 1)) for i in range(steps)]


def smooth(losses: list[float], width: int = SMOOTHING_WIDTH) -> list[float]:
    """The losses under a centred running median and then a running mean, `width` steps each: one wild
    batch does not bend the curve, the curve does not lag the rate (an EMA would, by several steps), and
    the rise after divergence reaches back only a few steps."""
    import numpy as np

    half = width // 2
    values = np.asarray(losses, dtype=float)
    medians = np.array([np.median(values[max(0, i - half) : i + half + 1]) for i in range(len(values))])
    return [float(np.mean(medians[max(0, i - half) : i + half + 1])) for i in range(len(values))]


def _short(rate: float) -> str:
    return f"{rate:.1e}"


def pick_rate(rates: list[float], losses: list[float], default_lr: float) -> Pick:
    """The rate at the steepest fall of the smoothed loss against log(rate), before its minimum; the
    method's default when the curve says nothing (too short, flat, or only rising)."""
    import numpy as np

    n = len(losses)
    smoothed = smooth(losses) if n else []
    low, high = default_lr / BAND, min(default_lr * BAND, END_RATE)
    default = f"the default rate {default_lr:.2g} is used"
    if n < 5:
        return Pick(default_lr, f"the loss diverged within {n} steps of the range test: {default}", smoothed)
    curve = np.asarray(smoothed)
    lowest = int(np.argmin(curve))
    fall = curve[0] - curve[lowest]
    # How far single steps stray from the smoothed curve: a fall within that is noise, not a slope.
    noise = float(np.median(np.abs(np.asarray(losses) - curve)))
    if lowest < 2 or fall < max(MIN_FALL * abs(curve[0]), 3 * noise):
        return Pick(
            default_lr,
            f"the smoothed loss did not fall clearly during the range test ({curve[0]:.3g} at "
            f"{_short(rates[0])}, lowest {curve[lowest]:.3g} at {_short(rates[lowest])}): {default}",
            smoothed,
        )
    slope = np.gradient(curve[: lowest + 1], np.log10(rates[: lowest + 1]))
    steepest = rates[int(np.argmin(slope))]
    tenth = rates[lowest] / 10
    if steepest <= tenth:
        rate = steepest
        reason = f"steepest fall of the smoothed loss at {_short(steepest)} (lowest loss at {_short(rates[lowest])})"
    else:
        # A fall that is steepest right before the loss turns up is a rate at the edge of diverging: MiniLM on
        # AG News trained at that steepest rate (4.6e-3, also the minimum's) fell back to chance (issue 21).
        rate = math.sqrt(steepest * tenth)
        reason = (f"between the steepest fall of the smoothed loss at {_short(steepest)} and a tenth of the rate "
                  f"of its lowest point ({_short(rates[lowest])}), midway on the log scale")  # fmt: skip
    rate = float(f"{rate:.2g}")  # two figures: the test's rates are 0.1–0.2 decades apart
    if not low <= rate <= high:
        clipped = float(f"{min(max(rate, low), high):.2g}")
        reason += f"; kept within {BAND:g}× of the default rate {default_lr:.2g}: {_short(clipped)}"
        rate = clipped
    return Pick(rate, reason, smoothed)


def keep_found_rate(spec: RunSpec, run_dir: Path) -> RunSpec:
    """A resumed `auto` run trains on with the rate its range test picked (saved in its spec.yaml)."""
    if spec.training.learning_rate != AUTO:
        return spec
    try:
        saved = yaml.safe_load((run_dir / "spec.yaml").read_text(encoding="utf-8"))
        rate = saved["training"]["learning_rate"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return spec
    if not isinstance(rate, (int, float)) or isinstance(rate, bool):
        return spec  # the first run stopped before its test ended: test again
    return _with_rate(spec, float(rate))


def _with_rate(spec: RunSpec, rate: float) -> RunSpec:
    return spec.model_copy(update={"training": spec.training.model_copy(update={"learning_rate": rate})})


def find_learning_rate(session: TrainingSession) -> TrainingSpec:
    """Run the range test for this session, then make its optimizer and schedule for the rate picked;
    the run's spec (and spec.yaml) carries that rate from here on. Returns the new training settings."""
    spec = session.spec
    default_lr = session.default_lr  # engine.defaults' rate for this method, model, task and batch
    if session.accelerator.distributed_type.name in ("FSDP", "DEEPSPEED"):
        rate = default_lr
        session.log(f"the learning-rate finder does not run in a sharded (FSDP/DeepSpeed) run: the method's "
                    f"default {default_lr:.2g} is used", level="warning")
    else:
        steps = finder_steps(session.micro_per_epoch // spec.training.gradient_accumulation)
        rates = range_rates(steps)
        session.stage(STAGE, f"up to {steps} steps, rates {START_RATE:g} to {END_RATE:g}")
        started = time.perf_counter()
        losses, stopped = _range_test(session, rates)
        seconds = time.perf_counter() - started
        if stopped:  # the run ends at step 0; its checkpoint and spec.yaml agree on the default
            pick = Pick(default_lr, f"stopped during the range test: the default rate {default_lr:.2g}",
                        smooth(losses))
        else:
            pick = pick_rate(rates[: len(losses)], losses, default_lr)
        rate = pick.rate
        session.report(LrFinder(rates=rates[: len(losses)], losses=pick.smoothed, chosen=rate, reason=pick.reason,
                                raw_losses=losses, seconds=round(seconds, 3)))
        session.log(f"learning rate {rate:.2g}, from a range test of {len(losses)} steps in {seconds:.1f} s: "
                    f"{pick.reason}")
    session.spec = _with_rate(spec, rate)
    if process_rank() == 0:
        session.spec.save(session.run_dir / "spec.yaml")
    _remake_optimizer(session, rate)
    return session.spec.training


def _trainable(session: TrainingSession) -> tuple[Any, list[Any]]:
    model = session.accelerator.unwrap_model(session.model)
    return model, [p for p in model.parameters() if p.requires_grad]


def _new_optimizer(session: TrainingSession, rate: float) -> Any:
    """The optimizer the run would make for this rate (the method's own, or the one its settings name)."""
    model, params = _trainable(session)
    t = session.spec.training
    return session.spec.method.build_optimizer(model, rate, t.weight_decay) or build_optimizer(
        t.optimizer, params, rate, t
    )


def _remake_optimizer(session: TrainingSession, rate: float) -> None:
    """Give the run's (prepared, never stepped) optimizer the state of one made for `rate`, and a fresh
    schedule: what a run given that rate starts with."""
    inner = getattr(session.optimizer, "optimizer", session.optimizer)  # accelerate's wrapper holds it
    fresh = _new_optimizer(session, rate)
    inner.load_state_dict(fresh.state_dict())  # every group's hyperparameters; no `initial_lr` left
    inner.defaults.update(fresh.defaults)
    session.scheduler = build_scheduler(inner, session.spec.training, session.total_steps)


def _rng_states() -> dict[str, Any]:
    import numpy as np
    import torch

    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None:
        torch.cuda.set_rng_state_all(states["cuda"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])


def _range_test(session: TrainingSession, rates: list[float]) -> tuple[list[float], bool]:
    """Train one step at each rate on the run's first batches; (the loss of each step, whether the run
    was asked to stop). The weights, the random number generators and the training mode are put back,
    whatever happens."""
    import torch

    t = session.spec.training
    _, params = _trainable(session)
    saved = [p.detach().clone() for p in params]
    states = _rng_states()
    was_training = session.model.training
    optimizer = _new_optimizer(session, rates[0])
    scales = [group["lr"] / rates[0] for group in optimizer.param_groups]  # LoRA+ keeps its ratio of groups
    # fp16 gradients underflow unscaled; the run's own scaler is left as it is.
    scaler = torch.amp.GradScaler(session.device) if session.precision == "fp16" else None
    accumulate = t.gradient_accumulation
    losses: list[float] = []
    best, average = math.inf, 0.0
    stopped = False
    session.model.train()
    try:
        for i, rate in enumerate(rates):
            if session._should_stop():
                stopped = True
                break
            if i and i % PROGRESS_EVERY == 0:
                session.report(Stage(stage=STAGE, detail=f"step {i} of up to {len(rates)}, rate {rate:.1e}",
                                     progress=round(i / len(rates), 3)))
            for group, scale in zip(optimizer.param_groups, scales, strict=True):
                group["lr"] = rate * scale
            total = 0.0
            for micro in range(accumulate):  # the batches the run's own first steps take
                batch, _ = session._batch(i * accumulate + micro)
                session._pick_attention(batch["input_ids"].shape[1])
                with route_batch(session.model, batch) as inputs:
                    with session.accelerator.autocast():
                        loss = session._loss(inputs)
                    ((scaler.scale(loss) if scaler else loss) / accumulate).backward()
                total = total + loss.detach()
            if scaler:
                scaler.unscale_(optimizer)
            if t.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value, _ = session._gather(total / accumulate, 0)
            if not math.isfinite(value):
                break
            losses.append(value)
            average = RUNNING * average + (1 - RUNNING) * value
            running = average / (1 - RUNNING ** len(losses))  # bias-corrected: no pull towards 0 at first
            if running > DIVERGED * best:
                break
            best = min(best, running)
    finally:
        with torch.no_grad():
            for param, value in zip(params, saved, strict=True):
                param.copy_(value)
                param.grad = None
        _set_rng_states(states)
        session.model.train(was_training)
        del optimizer, saved
        if session.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()  # the run's memory peak is its own
    return losses, stopped
