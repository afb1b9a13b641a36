"""Reuse of the KV cache of one dialogue round for the next round's prompt.

A later round's prompt starts with the earlier prompt and the model's answer.
Under causal attention, the keys and values of a position depend only on the
tokens up to it, so the cache that generating the answer left contains what a
full encoding of the new prompt would compute for that prefix.
The adapter keeps that cache per batch (``RoundCache``), finds for each row how
many leading tokens of the new prompt equal the cached tokens, copies those
keys and values into a new left-padded cache for the next batch, and lets
``generate`` encode only the rest.

Token ids are compared, not text, because a chat template may render the
history differently from the generation prompt (an end-of-turn token after
the answer, a stripped reasoning block). The cached prefix must also hold
every visual token of the new prompt, because the new call passes no pixel
values. Images need no separate check: the adapter builds the next round's
messages so that they start with the previous round's messages, images
included.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from loguru import logger
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass
class RoundCache:
    """The KV cache that one ``generate`` call left, with what each row of it contains.

    ``token_ids[i]`` are the tokens whose keys and values row ``i`` contains,
    without left padding, and ``offsets[i]`` is the cache position of the
    first of them. ``rope_deltas`` ([batch, 1]) are the per-row position
    offsets of models with multimodal rotary positions (Qwen2-VL), or None.
    """

    cache: DynamicCache
    token_ids: list[torch.Tensor]
    offsets: list[int]
    rope_deltas: torch.Tensor | None = None


@dataclass(frozen=True)
class CacheSlot:
    """Row ``row`` of a ``RoundCache``: where one dialogue's previous round is cached."""

    round_cache: RoundCache
    row: int

    @property
    def token_ids(self) -> torch.Tensor:
        return self.round_cache.token_ids[self.row]


@dataclass(frozen=True)
class ReuseGroup:
    """Rows that can share one cache-reusing ``generate`` call, with each row's reusable prefix length."""

    rows: tuple[int, ...]
    prefix_lengths: tuple[int, ...]


@dataclass(frozen=True)
class ReusePlan:
    """Rows grouped for cache reuse, and the rows that need a full encoding with the reason for each."""

    groups: tuple[ReuseGroup, ...]
    full_rows: tuple[int, ...]
    reasons: dict[int, str]


@dataclass(frozen=True)
class ReusedBatch:
    """Inputs of a cache-reusing ``generate`` call: the full left-padded prompts and the assembled cache."""

    input_ids: torch.Tensor  # [batch, total]
    attention_mask: torch.Tensor  # [batch, total]
    cache: DynamicCache  # [batch, heads, cached, head_dim] per layer
    rope_deltas: torch.Tensor | None  # [batch, 1]
    reused_tokens: int


def unsupported_cache_reason(cache) -> str | None:
    """Return why a cache's rows cannot be copied into a new cache, or None when they can.

    Only a ``DynamicCache`` whose layers are all plain full-attention
    ``DynamicLayer`` objects is supported: sliding-window, static, quantized
    and linear-attention layers store positions differently.
    """
    if not isinstance(cache, DynamicCache):
        return f"the model returned a {type(cache).__name__}, not a DynamicCache"
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            return f"the cache has {type(layer).__name__} layers, and only full-attention DynamicLayer rows are copied"
        if not layer.is_initialized:
            return "the cache has layers without keys and values (shared KV layers)"
    return None


def capture_round_cache(
    cache,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sequences: torch.Tensor,
    rope_deltas: torch.Tensor | None,
) -> RoundCache:
    """Describe the cache that ``generate`` returned for left-padded ``input_ids`` and its output ``sequences``.

    The cache contains keys and values of ``sequences[:, :cache_length]``,
    which are the prompt and every generated token but the last. Rows that
    finished early contain padding tokens after their end-of-sequence token.
    Those are real cache entries too, and they do not match a later prompt.
    """
    cache_length = cache.get_seq_length()
    offsets = (attention_mask == 0).sum(dim=1).tolist()  # left padding per row
    token_ids = [sequences[row, offset:cache_length].detach().cpu() for row, offset in enumerate(offsets)]
    deltas = rope_deltas.detach().clone() if rope_deltas is not None else None
    return RoundCache(cache=cache, token_ids=token_ids, offsets=offsets, rope_deltas=deltas)


def common_prefix_length(first: torch.Tensor, second: torch.Tensor) -> int:
    """Return the number of leading positions where two 1-D token id tensors are equal."""
    length = min(len(first), len(second))
    if length == 0:
        return 0
    mismatches = (first[:length] != second[:length]).nonzero()
    return int(mismatches[0, 0]) if len(mismatches) else length


def _tokens_after_last_visual(prompt: torch.Tensor, visual_token_ids: Sequence[int]) -> int:
    """Return how many tokens follow the last visual token of ``prompt`` (all of them when it has none)."""
    is_visual = torch.isin(prompt, torch.tensor(list(visual_token_ids), dtype=prompt.dtype))
    positions = is_visual.nonzero()
    if len(positions) == 0:
        return len(prompt)
    return len(prompt) - int(positions[-1, 0]) - 1


def plan_reuse(
    prompts: Sequence[torch.Tensor],
    slots: Sequence[CacheSlot | None],
    visual_token_ids: Sequence[int],
) -> ReusePlan:
    """Decide, per row, how much of the new prompt comes from its cache slot, and group rows into batches.

    ``prompts`` are the new prompts' token ids without padding. A row reuses
    its cache when the cached tokens cover a prefix of its new prompt that
    contains all of its visual tokens and leaves at least one token to
    encode. In one left-padded batch every row resumes at the same position,
    so each row encodes as many tokens as the row with the longest new
    suffix. A group therefore contains rows whose text after the last visual
    token is at least that long, so no visual token has to be encoded again.
    """
    candidates = {}  # row -> (suffix length, tokens after the last visual token, prefix length)
    reasons = {}
    for row, (prompt, slot) in enumerate(zip(prompts, slots)):
        if slot is None:
            reasons[row] = "the dialogue has no cached earlier round"
            continue
        prefix = min(common_prefix_length(prompt, slot.token_ids), len(prompt) - 1)
        after_visual = _tokens_after_last_visual(prompt, visual_token_ids)
        if prefix < len(prompt) - after_visual:
            if len(prompt) - after_visual > len(slot.token_ids):
                reasons[row] = "the new turn adds an image, whose visual tokens need pixel values"
            else:
                reasons[row] = "the chat template renders the earlier turns differently from the earlier prompt"
            continue
        candidates[row] = (len(prompt) - prefix, after_visual, prefix)

    groups = []
    remaining = sorted(candidates, key=lambda row: candidates[row][0], reverse=True)
    while remaining:
        longest_suffix = candidates[remaining[0]][0]
        members = [row for row in remaining if candidates[row][1] >= longest_suffix]
        groups.append(ReuseGroup(rows=tuple(members), prefix_lengths=tuple(candidates[row][2] for row in members)))
        remaining = [row for row in remaining if row not in members]

    full_rows = tuple(sorted(reasons))
    return ReusePlan(groups=tuple(groups), full_rows=full_rows, reasons=reasons)


def assemble_reused_batch(
    prompts: Sequence[torch.Tensor],
    slots: Sequence[CacheSlot],
    prefix_lengths: Sequence[int],
    pad_token_id: int,
    device: torch.device,
) -> ReusedBatch:
    """Left-pad the new prompts and copy each row's reusable cached keys and values into a new cache.

    All rows resume at position ``cached = total - max(suffix)``, so row ``i``
    reuses ``cached - pad_i`` tokens (at most its reusable prefix length).
    Cache positions of left padding hold zeros, which the attention mask hides.
    """
    lengths = [len(prompt) for prompt in prompts]
    total = max(lengths)
    pads = [total - length for length in lengths]
    cached = total - max(length - prefix for length, prefix in zip(lengths, prefix_lengths))

    input_ids = torch.full((len(prompts), total), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), total), dtype=torch.long)
    for row, (prompt, pad) in enumerate(zip(prompts, pads)):
        input_ids[row, pad:] = prompt
        attention_mask[row, pad:] = 1

    layer_data = []
    for layer_index in range(len(slots[0].round_cache.cache.layers)):
        sample = slots[0].round_cache.cache.layers[layer_index].keys  # [batch, heads, length, head_dim]
        batch_shape = (len(prompts), sample.shape[1], cached, sample.shape[3])
        keys = torch.zeros(batch_shape, dtype=sample.dtype, device=sample.device)
        values = torch.zeros(batch_shape, dtype=sample.dtype, device=sample.device)
        for row, (slot, pad) in enumerate(zip(slots, pads)):
            layer = slot.round_cache.cache.layers[layer_index]
            start = slot.round_cache.offsets[slot.row]
            count = cached - pad
            keys[row, :, pad:cached] = layer.keys[slot.row, :, start : start + count]
            values[row, :, pad:cached] = layer.values[slot.row, :, start : start + count]
        layer_data.append((keys, values))

    rope_deltas = None
    if any(slot.round_cache.rope_deltas is not None for slot in slots):
        rope_deltas = torch.stack([slot.round_cache.rope_deltas[slot.row] for slot in slots]).to(device)

    return ReusedBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        cache=DynamicCache(ddp_cache_data=layer_data),
        rope_deltas=rope_deltas,
        reused_tokens=sum(cached - pad for pad in pads),
    )


class ReasonLog:
    """Logs each reason for encoding a later round in full once, and counts how often it occurred."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def record(self, reason: str) -> None:
        if reason not in self.counts:
            logger.info(f"KV cache reuse is off for some later rounds, which are encoded in full: {reason}")
        self.counts[reason] = self.counts.get(reason, 0) + 1
