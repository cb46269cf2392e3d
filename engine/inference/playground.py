"""Trying a trained run: the base and the tuned model answer the same prompt, side by side.

Where the base answers come from depends on the method. A peft method (LoRA, IA3, prompt and prefix
tuning, ...) leaves the base weights untouched, so the base answers come from the same model with its
adapter switched off (`disable_adapter`), which costs no extra memory. Selective methods (BitFit, last
layers, full) change the base weights themselves, and bottleneck adapters (MAM included) are injected
modules that peft's switch does not reach: those runs load a second, untouched copy of the base model.

Generation runs in a thread of its own and streams text through transformers' TextIteratorStreamer,
always with the KV cache (prefix tuning fails without it).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from adapter_studio.engine.data.examples import load_examples, split_examples
from adapter_studio.engine.data.rendering import TEMPLATED_FORMATS, ChatRenderer
from adapter_studio.engine.data.text_pairs import pair_inputs
from adapter_studio.engine.errors import UserError

if TYPE_CHECKING:
    import torch
    from adapter_studio.engine.data.shapes import Example
    from adapter_studio.engine.inference.trained import TrainedModel

Which = Literal["base", "tuned"]


class HeldOutExample(NamedTuple):
    """A held-out row: the full text the model is given, the user's message, and the answer in the data."""

    prompt: str
    message: str
    expected: str
    task: str | None = None  # the row's task, where the run routes by task (Poly)
    earlier: int = 0  # turns of its conversation before the message (in `prompt`, not in `message`)


class Playground:
    """A run's tuned model and its base, ready to answer prompts or classify texts."""

    def __init__(self, tuned: TrainedModel, base: torch.nn.Module | None, data_format: str,
                 held_out: list[Example], device: str = "cpu") -> None:  # fmt: skip
        self.tuned = tuned
        self.spec = tuned.spec
        self.tokenizer = tuned.tokenizer
        self.task = tuned.task
        self.data_format = data_format
        self.device = device
        self._base = base
        self._held_out = held_out
        self.renderer = ChatRenderer(self.tokenizer, self.spec.data.system_prompt, self.spec.data.template)
        # One lock per set of weights: the adapter switch of a shared model must not flip mid-answer.
        tuned_lock = threading.Lock()
        self._locks = {"tuned": tuned_lock, "base": tuned_lock if base is None else threading.Lock()}

    @classmethod
    def open(cls, run_dir: str | Path, checkpoint: Path | None = None, device: str = "auto") -> Playground:
        """Load the run's tuned model (latest or given checkpoint), its base, and its held-out rows."""
        from adapter_studio.engine.inference.trained import load_base, load_trained
        from adapter_studio.engine.training.devices import avoid_per_shape_attention_plans, pick_device

        run_dir = Path(run_dir)
        tuned = load_trained(run_dir, checkpoint)
        base = None if shares_base_weights(tuned) else load_base(tuned.spec)[0].eval()
        device = pick_device(device)
        if device == "cuda":
            avoid_per_shape_attention_plans()  # the attention's shape changes with every generated token
        tuned.model.to(device)
        if base is not None:
            base.to(device)
        data_format, held_out = held_out_rows(tuned)
        return cls(tuned, base, data_format, held_out, device)

    @property
    def shares_weights(self) -> bool:
        """True when the base answers come from the tuned model with its adapter switched off."""
        return self._base is None

    @property
    def base_head_is_random(self) -> bool:
        """A classifier's base has a freshly initialised head: its probabilities are chance."""
        return self.task == "classification"

    # --- generation -------------------------------------------------------------------------------

    def prompt_text(self, message: str) -> str:
        """The text the model is given for a user message, rendered the way the run trained (a preference
        run's prompts too: with the chat template)."""
        if self.data_format in TEMPLATED_FORMATS:
            return self.renderer.prompt([{"role": "user", "content": message}])
        return message

    @property
    def context_limit(self) -> int | None:
        from adapter_studio.engine.evaluation.generation import context_limit

        return context_limit(self.tuned.model)

    def prompt_tokens(self, message: str, rendered: str | None = None) -> int:
        text = rendered if rendered is not None else self.prompt_text(message)
        return len(self.tokenizer(text, add_special_tokens=self.adds_special_tokens())["input_ids"])

    def room_for_answer(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """The answer's length within the model's positions; a UserError for a prompt that fills them (a 12,000-
        token prompt to SmolLM2's 8,192 ran for minutes with nothing to show, then answered nothing)."""
        limit = self.context_limit
        if limit is None:
            return max_new_tokens
        if prompt_tokens >= limit:
            raise UserError(f"the message is {prompt_tokens:,} tokens, and this model reads {limit:,} at most",
                            where="Try", fix="shorten the message")  # fmt: skip
        return min(max_new_tokens, limit - prompt_tokens)

    def adds_special_tokens(self) -> bool:
        return adds_special_tokens(self.data_format, self.renderer)

    @property
    def tasks(self) -> list[str]:
        """The tasks a run that routes by task answers as (Poly); empty for every other run."""
        return list(getattr(self.spec.method, "tasks", [])) if self.spec.method.routes_by_task else []

    @contextmanager
    def using(self, which: Which, task: str | None = None) -> Iterator[torch.nn.Module]:
        """The model that answers as `which`, held exclusively while in use. A run that routes by task
        answers as `task` (None: its first task); the base model has no tasks."""
        if which not in ("base", "tuned"):
            raise ValueError(f"which must be 'base' or 'tuned', not {which!r}")
        with self._locks[which]:
            if which == "tuned" and self.tasks:
                from adapter_studio.engine.methods.poly import routed

                with routed(self.tuned.model, self.spec.method.task_index(task)):  # type: ignore[attr-defined]
                    yield self.tuned.model
            elif which == "tuned":
                yield self.tuned.model
            elif self._base is not None:
                yield self._base
            else:
                with self.tuned.model.disable_adapter():  # type: ignore[operator]
                    yield self.tuned.model

    def stop_token_ids(self) -> list[int]:
        configured = getattr(self.tuned.model.generation_config, "eos_token_id", None)
        ids = configured if isinstance(configured, list) else [configured]
        ids = [*ids, self.tokenizer.eos_token_id]
        return list(dict.fromkeys(i for i in ids if i is not None))

    def pad_token_id(self) -> int:
        """The id batches of prompts or answers are padded with: the tokenizer's, else the first stop id."""
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.stop_token_ids()[0]

    def stream(
        self,
        which: Which,
        prompt_text: str,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int = 128,
        stop_event: threading.Event | None = None,
        task: str | None = None,
        rendered: str | None = None,
    ) -> Iterator[str]:
        """Yield the answer of the base or tuned model to a user message as it is generated.

        Greedy when temperature is 0, otherwise sampled with temperature and top-p. Setting
        `stop_event` (or closing the iterator) ends generation after the current token. `task`: the
        task a run that routes by task answers as. `rendered`: the whole prompt as the model reads it (a
        held-out example's, earlier turns of its conversation included) instead of `prompt_text`'s.
        """
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        if self.task == "classification":
            raise UserError("this run trained a classifier, which does not generate text", where="Try",
                            fix="classify a text instead")  # fmt: skip
        if which not in ("base", "tuned"):
            raise ValueError(f"which must be 'base' or 'tuned', not {which!r}")
        stop_event = stop_event or threading.Event()
        closed = threading.Event()

        class Stop(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                halt = stop_event.is_set() or closed.is_set()
                return torch.full((input_ids.shape[0],), halt, dtype=torch.bool, device=input_ids.device)

        enc = self.tokenizer(rendered if rendered is not None else self.prompt_text(prompt_text), return_tensors="pt",
                             add_special_tokens=self.adds_special_tokens()).to(self.device)  # fmt: skip
        max_new_tokens = self.room_for_answer(enc["input_ids"].shape[1], max_new_tokens)
        streamer = _token_streamer_class()(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p}
            if temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        pad_id = self.tokenizer.pad_token_id
        stop_ids = self.stop_token_ids()
        errors: list[BaseException] = []

        def generate() -> None:
            try:
                with self.using(which, task) as model, torch.no_grad():
                    if stop_event.is_set() or closed.is_set():
                        streamer.end()
                        return
                    model.generate(
                        **enc, **sampling, max_new_tokens=max_new_tokens, use_cache=True, streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([Stop()]), eos_token_id=stop_ids,
                        pad_token_id=pad_id if pad_id is not None else stop_ids[0],
                    )  # fmt: skip
            except BaseException as e:  # handed to the reader below, never lost in this thread
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=generate, name=f"playground-{which}", daemon=True)
        thread.start()
        try:
            for chunk in streamer:
                if chunk:
                    yield chunk
        finally:
            closed.set()
            thread.join()
        if errors:
            raise errors[0]

    # --- held-out rows ----------------------------------------------------------------------------

    @property
    def held_out_count(self) -> int:
        """How many rows the run held out."""
        return len(self._held_out)

    def held_out_examples(self, n: int = 20) -> list[HeldOutExample]:
        """Up to n rows the run did not train on: (full prompt text, user message, expected answer)."""
        from adapter_studio.engine.data.preference import as_conversation

        out: list[HeldOutExample] = []
        chat = self.data_format in TEMPLATED_FORMATS
        for e in filter(None, map(as_conversation, self._held_out)):  # a pair: its chosen answer is expected
            if len(out) >= n:
                break
            if chat:
                if len(e.messages) < 2 or e.messages[-1]["role"] != "assistant":
                    continue
                users = [m["content"] for m in e.messages[:-1] if m["role"] == "user"]
                if not users:
                    continue
                prompt = self.renderer.prompt(e.messages[:-1])
                earlier = sum(m["role"] != "system" for m in e.messages[:-2])
                out.append(HeldOutExample(prompt, users[-1], e.messages[-1]["content"].strip(), e.task, earlier))
            elif self.data_format == "prompt_completion":
                out.append(HeldOutExample(e.prompt, e.prompt, e.completion.strip(), e.task))
            elif self.data_format == "classification":
                shown = e.text if e.text_pair is None else f"{e.text}\n\n{e.text_pair}"
                out.append(HeldOutExample(shown, e.text, str(e.label), e.task))
            else:  # plain text: the first half prompts, the rest is what the data goes on to say
                half = len(e.text) // 2
                out.append(HeldOutExample(e.text[:half], e.text[:half], e.text[half:].strip()))
        return out

    def held_out_pair(self, index: int) -> str | None:
        """The second text of held-out row `index` in a text-pair classification run, else None."""
        if self.data_format != "classification" or index >= len(self._held_out):
            return None
        return self._held_out[index].text_pair

    # --- classification ---------------------------------------------------------------------------

    def classify(self, text: str, text_pair: str | None = None, task: str | None = None) -> dict[str, dict[str, float]]:
        """Label probabilities (softmax) of the base and the tuned classifier for one text (`task`: the
        task a run that routes by task answers as)."""
        import torch

        if self.task != "classification":
            raise UserError("this run trained a text generator, not a classifier", where="Try",
                            fix="generate an answer instead")  # fmt: skip
        max_length = self.spec.data.max_length or 512
        text, text_pair = pair_inputs(self.tokenizer, text, text_pair)
        enc = self.tokenizer(text, text_pair, truncation=True, max_length=max_length,
                             return_tensors="pt").to(self.device)  # fmt: skip
        id2label = self.tuned.model.config.id2label
        result: dict[str, dict[str, float]] = {}
        for which in ("base", "tuned"):
            with self.using(which, task) as model, torch.no_grad():  # type: ignore[arg-type]
                probs = model(**enc).logits.float().softmax(-1)[0].tolist()
            result[which] = {str(id2label.get(i, i)): p for i, p in enumerate(probs)}
        return result


@functools.cache
def _token_streamer_class() -> type:
    """TextIteratorStreamer handing on every token (built on first use: importing transformers is slow)."""
    from transformers import TextIteratorStreamer

    class TokenStreamer(TextIteratorStreamer):
        """The stock streamer holds text back until a space follows punctuation; this one only waits
        while the text ends in a character split across tokens."""

        def put(self, value: torch.Tensor) -> None:
            if value.dim() > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            if text.endswith("\ufffd"):
                return
            self.on_finalized_text(text[self.print_len :])
            if text.endswith("\n"):  # start over, keeping the newline as context (as the stock streamer does)
                self.token_cache = self.token_cache[-1:]
                text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            self.print_len = len(text)

    return TokenStreamer


def adds_special_tokens(data_format: str, renderer: ChatRenderer) -> bool:
    """Whether a prompt is tokenised with the tokenizer's own BOS/EOS: the choice data preparation made
    for the training rows (a chat template writes its special tokens itself)."""
    if data_format in TEMPLATED_FORMATS:
        return not renderer.use_chat_template
    return data_format == "prompt_completion"


def shares_base_weights(tuned: TrainedModel) -> bool:
    """True when switching the adapter off gives the base model exactly (peft methods, not MAM)."""
    return (tuned.spec.method.adapter_format == "peft" and not tuned.spec.method.changes_base
            and callable(getattr(tuned.model, "disable_adapter", None)))  # fmt: skip


def held_out_rows(tuned: TrainedModel) -> tuple[str, list[Example]]:
    """The data format and the rows the run evaluated on: its eval file, or the same seeded split."""
    spec = tuned.spec
    fmt, _, examples, _ = load_examples(spec.data, spec.data.path)
    if spec.data.eval_path:
        _, _, held, _ = load_examples(spec.data.model_copy(update={"format": fmt}), spec.data.eval_path)
        return fmt, held
    if spec.data.max_rows:
        examples = examples[: spec.data.max_rows]
    return fmt, split_examples(examples, spec.data.eval_split, spec.training.seed, fmt)[1]
