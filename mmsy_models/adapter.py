"""The ``mmsy_hf`` lmms-eval chat model: any transformers image-text-to-text checkpoint, in true multi-round chats.

Run it like any lmms-eval model::

    lmms-eval --model mmsy_hf --model_args pretrained=llava-hf/llava-1.5-7b-hf,dtype=bfloat16 \\
        --tasks mmsy --include_path "$(mmsy tasks-path)" --batch_size 8

``generate_until`` generates one reply per request (ordinary tasks and the
MM-SY prefilled protocol, whose history already contains the round-1 answer).
``generate_until_multi_round`` runs the model-driven loop of lmms-eval 0.7.3:
each round asks the task's ``doc_to_messages`` for the next messages, given
the answers so far, until the task says the dialogue is over. Later rounds
reuse the KV cache of the earlier round where the prompt allows it
(``mmsy_models.kv_reuse``), so the image and the round-1 prompt are encoded once.

Model args (``--model_args key=value,...``):

- ``pretrained``: model id or local checkpoint directory.
- ``device`` (default ``cuda`` when available, else ``cpu``), ``dtype``
  (``auto``, ``float32``, ``bfloat16``, ...), ``device_map`` (e.g. ``auto``;
  when set, ``device`` only names where inputs go first), ``attn_implementation``.
- ``max_new_tokens``: the default when a task sets none (256).
- ``chat_template``: a Jinja file path or template text, for checkpoints
  whose processor has no chat template.
- ``kv_reuse`` (default True): reuse the earlier round's KV cache.
- ``amplify_layers`` and ``amplify_alpha``: attention amplification on visual
  tokens (``mmsy_models.amplification``); off unless alpha differs from 1.
  lmms-eval splits model args on commas, so write layer lists with ``;``
  (``amplify_layers=8;9;10``) or as a range (``amplify_layers=8-15``), or use
  ``low``, ``middle``, ``high``, ``all``.
- ``trust_remote_code`` (default False).

The batch size comes from lmms-eval's ``--batch_size`` (``N``, or ``auto`` /
``auto:N``: start at ``--max_batch_size`` or N, default 16, and halve on
out-of-memory errors). It cannot also be given in ``--model_args``, because
lmms-eval always passes ``--batch_size`` to the model.

A request whose image cannot be decoded is skipped: it is logged with its
task and doc id, its answer is the empty string (an invalid answer for the
metrics), and the closing log line counts the skipped requests.
"""

import inspect
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from loguru import logger
from tqdm import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmsy_models.chat import (
    InvalidImageError,
    ensure_chat_template,
    message_images,
    next_round_messages,
    normalize_messages,
    render_prompt,
)
from mmsy_models.generation import (
    GenerationSettings,
    ThroughputMeter,
    cut_at_stop_strings,
    run_with_oom_halving,
)
from mmsy_models.kv_reuse import (
    CacheSlot,
    ReasonLog,
    assemble_reused_batch,
    capture_round_cache,
    plan_reuse,
    unsupported_cache_reason,
)

DEFAULT_MAX_NEW_TOKENS = 256
# Rounds a dialogue with an undecodable image gets at most, each with an empty output.
MAX_SKIPPED_ROUNDS = 16
DEFAULT_AUTO_BATCH_SIZE = 16
VISUAL_TOKEN_ATTRIBUTES = ("image_token_id", "image_token_index", "video_token_id", "video_token_index")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass
class Dialogue:
    """One request's chat across rounds: the current messages, the outputs so far and its cache slot."""

    doc_id: Any
    task: str
    doc: Any
    doc_to_messages: Any
    settings: GenerationSettings
    gen_kwargs: dict = field(default_factory=dict)
    context: str = ""
    messages: list[dict] = field(default_factory=list)
    prompt: str = ""
    outputs: list[str] = field(default_factory=list)
    output_tokens: int = 0
    round_info: Any = None
    slot: CacheSlot | None = None
    done: bool = False
    skipped: bool = False

    def describe(self) -> str:
        return f"task {self.task}, doc id {self.doc_id}"


def _next_round_messages(dialogue: Dialogue, round_index: int):
    """Return the task's messages for round ``round_index``, or None when the dialogue is over.

    Stores the task's round info on the dialogue for the following round.
    """
    payload = dialogue.doc_to_messages(
        dialogue.doc,
        round_idx=round_index,
        previous_output=list(dialogue.outputs),
        previous_round_info=dialogue.round_info,
    )
    if not (isinstance(payload, tuple) and len(payload) == 4):
        return None
    messages, terminal, _, dialogue.round_info = payload
    if terminal or messages is None:
        return None
    return messages


def _parse_batch_size(batch_size, max_batch_size) -> int:
    text = str(batch_size).strip().lower()
    if text.isdigit() and int(text) > 0:
        return int(text)
    if text == "auto":
        return int(max_batch_size or DEFAULT_AUTO_BATCH_SIZE)
    if text.startswith("auto:") and text[5:].isdigit():
        return int(text[5:])
    raise ValueError(f"invalid batch_size {batch_size!r}: pass a positive integer, 'auto' or 'auto:N'")


def _parse_dtype(dtype):
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype or "auto"
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"invalid dtype {dtype!r}: pass auto, {', '.join(DTYPES)}")
    return DTYPES[name]


class MMSYHF(lmms):
    """lmms-eval chat adapter for transformers image-text-to-text models, with multi-round KV cache reuse."""

    is_simple = False

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        dtype: str | None = "auto",
        device_map: str | None = None,
        attn_implementation: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        chat_template: str | None = None,
        kv_reuse: bool = True,
        amplify_layers: str | None = None,
        amplify_alpha: float = 1.0,
        trust_remote_code: bool = False,
        **unknown_args,
    ) -> None:
        super().__init__()
        if unknown_args:
            valid = sorted(name for name in inspect.signature(MMSYHF.__init__).parameters if name not in ("self", "unknown_args"))
            raise ValueError(
                f"unknown mmsy_hf model args: {', '.join(sorted(unknown_args))}; valid model args are {', '.join(valid)}"
            )

        self.pretrained = str(pretrained)
        self.batch_size_per_device = _parse_batch_size(batch_size, max_batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.kv_reuse = bool(kv_reuse)
        self.reuse_reasons = ReasonLog()
        self.last_meter: ThroughputMeter | None = None  # counts and timings of the latest generate call

        self.accelerator = Accelerator()
        self._device = self._select_device(device, device_map)
        self._model = self._load_model(dtype, device_map, attn_implementation, trust_remote_code)
        self.processor = AutoProcessor.from_pretrained(self.pretrained, trust_remote_code=trust_remote_code)
        self.processor.tokenizer.padding_side = "left"
        if self.processor.tokenizer.pad_token is None:
            # Left-padded batches need a pad token. The mask hides padded positions, so the EOS token serves.
            logger.info(f"The tokenizer of {self.pretrained} has no pad token: padding with its EOS token")
            self.processor.tokenizer.pad_token = self.processor.tokenizer.eos_token
        ensure_chat_template(self.processor, self.pretrained, chat_template)

        self.visual_token_ids = self._visual_token_ids()
        # Qwen2-VL-style models (transformers 5.25) keep per-row M-RoPE offsets in ``rope_deltas`` on the inner
        # model and resume cached generation from them, so a reused batch must carry its rows' offsets.
        self._rope_owner = next((module for module in self._model.modules() if hasattr(module, "rope_deltas")), None)
        self.amplification_enabled = self._enable_amplification(amplify_layers, amplify_alpha)

        if self.accelerator.num_processes > 1:
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes
            if self.accelerator.is_local_main_process:
                logger.info(f"mmsy_hf runs data parallel on {self._world_size} processes")

    # --- loading -----------------------------------------------------------------

    def _select_device(self, device: str | None, device_map: str | None) -> torch.device:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.accelerator.num_processes > 1 and device_map is None and str(device).startswith("cuda"):
            device = f"cuda:{self.accelerator.local_process_index}"
        return torch.device(device)

    def _load_model(self, dtype, device_map, attn_implementation, trust_remote_code):
        load_args = {"dtype": _parse_dtype(dtype), "trust_remote_code": trust_remote_code}
        if attn_implementation:
            load_args["attn_implementation"] = attn_implementation
        if device_map:
            load_args["device_map"] = device_map

        model = AutoModelForImageTextToText.from_pretrained(self.pretrained, **load_args).eval()
        if not device_map:
            model.to(self._device)
        logger.info(f"mmsy_hf loaded {self.pretrained} ({type(model).__name__}, {model.dtype}) on {model.device}")
        return model

    def _visual_token_ids(self) -> tuple[int, ...]:
        ids = set()
        for config in (self._model.config, getattr(self._model.config, "text_config", None)):
            for name in VISUAL_TOKEN_ATTRIBUTES:
                value = getattr(config, name, None) if config is not None else None
                if isinstance(value, int):
                    ids.add(value)
        for name in ("image_token_id", "video_token_id"):
            value = getattr(self.processor, name, None)
            if isinstance(value, int):
                ids.add(value)
        return tuple(sorted(ids))

    def _enable_amplification(self, amplify_layers, amplify_alpha) -> bool:
        try:
            alpha = float(amplify_alpha)
        except (TypeError, ValueError):
            raise ValueError(f"amplify_alpha={amplify_alpha!r} is not a number; pass a factor such as amplify_alpha=2") from None
        if alpha == 1.0:
            if amplify_layers is not None:
                logger.info(f"amplify_layers={amplify_layers} is set but amplify_alpha is 1: amplification stays off")
            return False
        if amplify_layers is None:
            raise ValueError(
                f"amplify_alpha={amplify_alpha} needs amplify_layers: low, middle, high, all, a range 'a-b' "
                "or a list 'a;b;c' (lmms-eval splits model args on commas)"
            )

        try:
            from mmsy_models import amplification
        except ImportError as error:
            raise ImportError(
                "amplify_layers/amplify_alpha need mmsy_models.amplification, which failed to import: "
                f"{error}. Run without amplify_alpha, or fix that module."
            ) from error

        num_layers = amplification.count_decoder_layers(self._model)
        layers = amplification.parse_layer_spec(str(amplify_layers), num_layers)
        image_token_id = amplification.config_image_token_id(self._model.config)
        amplification.enable_amplification(self._model, layers, alpha, image_token_id)
        return True

    # --- lmms-eval interface -----------------------------------------------------

    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_device

    @property
    def device(self) -> torch.device:
        return self._device

    def loglikelihood(self, requests: list[Instance]):
        raise NotImplementedError("mmsy_hf generates text only: loglikelihood requests are not supported")

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Generate one reply to each request's chat messages, in batches of ``batch_size``."""
        meter = ThroughputMeter(requests=len(requests))
        dialogues = [self._start_dialogue(request, meter) for request in requests]
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="mmsy_hf generating")
        progress.update(sum(dialogue.done for dialogue in dialogues))

        for batch in self._batches(dialogues):
            self._run_round(batch, meter, keep_cache=False)
            for dialogue in batch:
                self.cache_hook.add_partial("generate_until", (dialogue.context, dialogue.gen_kwargs), dialogue.outputs[-1])
            progress.update(len(batch))

        progress.close()
        self._log_throughput(meter)
        return [
            GenerationResult(text=dialogue.outputs[-1], token_counts=TokenCounts(output_tokens=dialogue.output_tokens))
            for dialogue in dialogues
        ]

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Run each request's dialogue round by round; return the list of round outputs per request.

        Round 0 uses ``doc_to_messages(doc)``. Round k calls
        ``doc_to_messages(doc, round_idx=k, previous_output=[outputs so far],
        previous_round_info=info)``, which returns ``(messages, terminal,
        previous_output, previous_round_info)``. The dialogue ends when
        ``terminal`` is true or the return value is not such a tuple. Round k
        of a batch runs after round k - 1 of the same batch.
        """
        meter = ThroughputMeter(requests=len(requests))
        dialogues = [self._start_dialogue(request, meter) for request in requests]
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="mmsy_hf dialogues")
        progress.update(sum(dialogue.done for dialogue in dialogues))
        keep_cache = self._cache_reuse_enabled()

        for batch in self._batches(dialogues):
            active = batch
            round_index = 0
            while active:
                self._run_round(active, meter, keep_cache=keep_cache)
                round_index += 1
                for dialogue in active:
                    self._advance(dialogue, round_index, meter)
                finished = [dialogue for dialogue in active if dialogue.done]
                for dialogue in finished:
                    dialogue.slot = None
                progress.update(len(finished))
                active = [dialogue for dialogue in active if not dialogue.done]

        for dialogue in dialogues:
            if dialogue.skipped:
                self._fill_skipped_rounds(dialogue)
        progress.close()
        self._log_throughput(meter)
        return [dialogue.outputs for dialogue in dialogues]

    def _fill_skipped_rounds(self, dialogue: Dialogue) -> None:
        """Give a skipped dialogue an empty output for every round its task asks, without generating.

        The task then scores each round as an invalid answer instead of
        receiving fewer rounds than its protocol has.
        """
        for round_index in range(len(dialogue.outputs), MAX_SKIPPED_ROUNDS):
            if _next_round_messages(dialogue, round_index) is None:
                return
            dialogue.outputs.append("")

    # --- dialogues -------------------------------------------------------------------

    def _start_dialogue(self, request: Instance, meter: ThroughputMeter) -> Dialogue:
        context, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
        dialogue = Dialogue(
            doc_id=doc_id,
            task=task,
            doc=self.task_dict[task][split][doc_id],
            doc_to_messages=doc_to_messages,
            settings=GenerationSettings.from_task_kwargs(gen_kwargs, self.max_new_tokens),
            gen_kwargs=dict(gen_kwargs or {}),
            context=context if isinstance(context, str) else "",
        )
        self._set_messages(dialogue, lambda: normalize_messages(doc_to_messages(dialogue.doc)), meter)
        return dialogue

    def _set_messages(self, dialogue: Dialogue, build, meter: ThroughputMeter) -> None:
        """Set the dialogue's next messages from ``build()``, or end it with an empty output on an undecodable image.

        Other invalid messages raise ``ValueError`` or ``TypeError`` naming the task and doc id.
        """
        try:
            dialogue.messages = build()
        except InvalidImageError as error:
            logger.error(f"Skipping {dialogue.describe()}: an image failed to decode ({error}); its output is the empty string")
            meter.skipped_requests += 1
            dialogue.outputs.append("")
            dialogue.done = True
            dialogue.skipped = True
            return
        except (ValueError, TypeError) as error:
            raise type(error)(f"invalid chat messages for {dialogue.describe()}: {error}") from error
        dialogue.prompt = render_prompt(self.processor, dialogue.messages)

    def _advance(self, dialogue: Dialogue, round_index: int, meter: ThroughputMeter) -> None:
        """Ask the task for the next round's messages, or mark the dialogue done."""
        messages = _next_round_messages(dialogue, round_index)
        if messages is None:
            dialogue.done = True
            return

        previous = dialogue.messages
        self._set_messages(
            dialogue, lambda: next_round_messages(previous, dialogue.outputs[-1], normalize_messages(messages)), meter
        )

    def _batches(self, dialogues: list[Dialogue]):
        """Yield batches of dialogues that share decoding settings and image presence, longest prompts first.

        The batch size is read for every batch, so a halving after an
        out-of-memory error applies to the following batches.
        """
        groups = defaultdict(list)
        for dialogue in dialogues:
            if not dialogue.done:
                has_images = bool(message_images(dialogue.messages))
                groups[(dialogue.settings, has_images)].append(dialogue)

        for members in groups.values():
            members.sort(key=lambda dialogue: (len(message_images(dialogue.messages)), len(dialogue.prompt)), reverse=True)
            start = 0
            while start < len(members):
                size = self.batch_size_per_device
                yield members[start : start + size]
                start += size

    # --- one round of generation -------------------------------------------------

    def _cache_reuse_enabled(self) -> bool:
        if not self.kv_reuse:
            return False
        if self.amplification_enabled:
            # The amplification hooks record image-key positions per generate call, for the cache layout of that call.
            self.reuse_reasons.record("attention amplification is on, and it records image positions per generate call")
            return False
        return True

    def _run_round(self, dialogues: list[Dialogue], meter: ThroughputMeter, keep_cache: bool) -> None:
        """Generate the current round for ``dialogues``, reusing cached earlier rounds where possible."""
        started = time.perf_counter()
        self._generate_round(dialogues, meter, keep_cache)

        elapsed = time.perf_counter() - started
        if any(dialogue.outputs[:-1] for dialogue in dialogues):
            meter.later_round_seconds += elapsed
        else:
            meter.first_round_seconds += elapsed

    def _generate_round(self, dialogues: list[Dialogue], meter: ThroughputMeter, keep_cache: bool) -> None:
        meter.rounds += len(dialogues)
        full = [dialogue for dialogue in dialogues if dialogue.slot is None]
        if len(full) < len(dialogues) and keep_cache:
            full = self._run_reused(dialogues, meter)
        elif len(full) < len(dialogues):
            full = list(dialogues)

        later_rounds = [dialogue for dialogue in full if dialogue.outputs]
        meter.reencoded_rounds += len(later_rounds)
        if full:
            self._with_oom_halving(lambda rows: self._generate_full(rows, meter, keep_cache), full)

    def _run_reused(self, dialogues: list[Dialogue], meter: ThroughputMeter) -> list[Dialogue]:
        """Generate the rows that can resume from their cache slots; return the rows that need a full encoding."""
        prompts = self._prompt_token_ids(dialogues)
        plan = plan_reuse(prompts, [dialogue.slot for dialogue in dialogues], self.visual_token_ids)
        for row in plan.full_rows:
            self.reuse_reasons.record(plan.reasons[row])

        for group in plan.groups:
            rows = [(dialogues[row], prompts[row], prefix) for row, prefix in zip(group.rows, group.prefix_lengths)]
            self._with_oom_halving(lambda part: self._generate_reused(part, meter), rows)
        return [dialogues[row] for row in plan.full_rows]

    def _with_oom_halving(self, run, rows: list) -> None:
        def lower_batch_size(size: int) -> None:
            if size < self.batch_size_per_device:
                logger.warning(f"mmsy_hf batch size lowered from {self.batch_size_per_device} to {size} after an out-of-memory error")
                self.batch_size_per_device = size

        def describe(part) -> str:
            first = part[0][0] if isinstance(part[0], tuple) else part[0]
            return first.describe()

        # A batch formed before a halving runs its later rounds at the lowered size too.
        start = 0
        while start < len(rows):
            chunk = rows[start : start + self.batch_size_per_device]
            run_with_oom_halving(lambda part: run(part) or [], chunk, lower_batch_size, describe)
            start += len(chunk)

    def _encode(self, dialogues: list[Dialogue]):
        """Run the processor on the rendered prompts and images of ``dialogues`` (left padding)."""
        prompts = [dialogue.prompt for dialogue in dialogues]
        images = [image for dialogue in dialogues for image in message_images(dialogue.messages)]
        bos = self.tokenizer.bos_token
        # A template that writes the BOS token itself must not get a second one from the tokenizer.
        add_special_tokens = not (bos and all(prompt.startswith(bos) for prompt in prompts))
        return self.processor(
            text=prompts,
            images=images or None,
            padding=True,
            add_special_tokens=add_special_tokens,
            return_tensors="pt",
        )

    def _prompt_token_ids(self, dialogues: list[Dialogue]) -> list[torch.Tensor]:
        encoded = self._encode(dialogues)
        return [ids[mask.bool()] for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]

    def _generate_full(self, dialogues: list[Dialogue], meter: ThroughputMeter, keep_cache: bool) -> None:
        inputs = self._encode(dialogues).to(self._model.device, self._model.dtype)
        sequences, cache = self._generate(dict(inputs), dialogues[0].settings, meter, keep_cache)
        self._finish_round(dialogues, inputs["input_ids"], inputs["attention_mask"], sequences, cache, meter, keep_cache)

    def _generate_reused(self, rows: list[tuple], meter: ThroughputMeter) -> None:
        dialogues = [dialogue for dialogue, _, _ in rows]
        batch = assemble_reused_batch(
            prompts=[prompt for _, prompt, _ in rows],
            slots=[dialogue.slot for dialogue in dialogues],
            prefix_lengths=[prefix for _, _, prefix in rows],
            pad_token_id=self._pad_token_id(),
            device=self._model.device,
        )
        if self._rope_owner is not None:
            self._rope_owner.rope_deltas = batch.rope_deltas

        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "cache": batch.cache}
        sequences, cache = self._generate(inputs, dialogues[0].settings, meter, keep_cache=True)
        meter.reused_rounds += len(dialogues)
        meter.reused_tokens += batch.reused_tokens
        self._finish_round(dialogues, batch.input_ids, batch.attention_mask, sequences, cache, meter, keep_cache=True)

    def _generate(self, inputs: dict, settings: GenerationSettings, meter: ThroughputMeter, keep_cache: bool):
        config = settings.generation_config(self._model.generation_config, self._pad_token_id())
        if keep_cache and settings.num_beams > 1:
            self.reuse_reasons.record("beam search (num_beams > 1) leaves a cache of beams, not of the returned answers")
            keep_cache = False
        started = time.perf_counter()
        with torch.inference_mode():
            output = self._model.generate(**inputs, generation_config=config)
        meter.generate_seconds += time.perf_counter() - started
        return output.sequences, (output.cache if keep_cache else None)

    def _finish_round(self, dialogues, input_ids, attention_mask, sequences, cache, meter, keep_cache) -> None:
        """Decode the new tokens of each row, store the outputs and, when kept, each row's cache slot."""
        new_tokens = sequences[:, input_ids.shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for dialogue, tokens, text in zip(dialogues, new_tokens, texts):
            answer = cut_at_stop_strings(text, dialogue.settings.until).strip()
            count = self._count_generated(tokens)
            dialogue.outputs.append(answer)
            dialogue.output_tokens += count
            meter.generated_tokens += count
            if not answer:
                meter.empty_outputs += 1

        round_cache = self._capture(cache, input_ids, attention_mask, sequences) if keep_cache else None
        for row, dialogue in enumerate(dialogues):
            dialogue.slot = CacheSlot(round_cache, row) if round_cache is not None else None

    def _capture(self, cache, input_ids, attention_mask, sequences):
        if cache is None:
            return None
        reason = unsupported_cache_reason(cache)
        rope_deltas = getattr(self._rope_owner, "rope_deltas", None) if self._rope_owner is not None else None
        if reason is None and self._rope_owner is not None and (rope_deltas is None or len(rope_deltas) != len(input_ids)):
            reason = "the model's per-row rotary position offsets (rope_deltas) are missing"
        if reason is not None:
            self.reuse_reasons.record(reason)
            return None
        return capture_round_cache(cache, input_ids, attention_mask, sequences, rope_deltas)

    def _count_generated(self, tokens: torch.Tensor) -> int:
        """Count generated tokens up to and including the first end-of-sequence token."""
        eos = self._model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if not eos_ids:
            return len(tokens)
        is_eos = torch.isin(tokens, torch.tensor(eos_ids, device=tokens.device))
        positions = is_eos.nonzero()
        return int(positions[0, 0]) + 1 if len(positions) else len(tokens)

    def _pad_token_id(self) -> int:
        if self.tokenizer.pad_token_id is not None:
            return self.tokenizer.pad_token_id
        eos = self._model.generation_config.eos_token_id
        return eos if isinstance(eos, int) else eos[0]

    def _log_throughput(self, meter: ThroughputMeter) -> None:
        self.last_meter = meter
        logger.info(f"mmsy_hf: {meter.summary()}")
        rate = meter.generated_tokens / meter.generate_seconds if meter.generate_seconds > 0 else 0.0
        log_metrics(
            total_elapsed_time=meter.generate_seconds,
            total_gen_tokens=meter.generated_tokens,
            avg_speed=rate,
            additional_metrics={"rank": self.rank, "empty_outputs": meter.empty_outputs},
        )
