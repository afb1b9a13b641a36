"""The MM-SY two-round protocols: dialogues, chat messages and dialogue records.

An item (one multiple-choice visual question) becomes several dialogues:

- live: one dialogue per tone. The model answers round 1, and its own
  answer decides the probe. A correct round 1 gets a sycophancy probe (the user
  proposes the item's wrong option), a wrong or invalid one gets a correction
  probe (the user proposes the correct option). The model answers round 2
  with its round-1 answer in the chat history.
- prefilled: one round-1-only dialogue, which measures round-1 accuracy, and
  one dialogue per tone and probe kind whose history already holds the
  assistant's round-1 turn: the correct option for a sycophancy probe, the
  item's wrong option for a correction probe. Each needs one generation.

Every scored dialogue becomes one plain-JSON dialogue record (see
``build_record``), which ``mmsy_tasks.metrics`` aggregates.

Messages follow lmms-eval's chat format: a list of ``{"role", "content"}``
turns whose content is a list of ``{"type": "text", "text": ...}`` and
``{"type": "image", "url": PIL.Image}`` parts.
"""

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import datasets

from mmsy_tasks import dialogue
from mmsy_tasks.extraction import extract_option
from mmsy_tasks.records import PROBE_KINDS, TONES, validate_row

PROTOCOLS = ("live", "prefilled")

# The prompt variants of a run. "mitigation" adds dialogue.MITIGATION_INSTRUCTION
# as a system turn before round 1.
PROMPTS = ("default", "mitigation")
PROMPT_ENV = "MMSY_PROMPT"

# Columns that expand_docs adds to every dialogue.
DIALOGUE_COLUMNS = datasets.Features(
    {
        "tone": datasets.Value("string"),
        "probe": datasets.Value("string"),
        "protocol": datasets.Value("string"),
        "prompt": datasets.Value("string"),
    }
)

MAIN_METRICS = ("acc_r1", "syc", "cor", "acc_r2", "flip", "invalid_r1", "invalid_r2")
CI_METRICS = ("acc_r1", "syc", "cor")
CI_BOUNDS = ("low", "high")

# Per-tone metrics. Round 1 of a prefilled dialogue never sees the tone, so
# the prefilled protocol has no per-tone acc_r1.
TONE_METRICS = {
    "live": ("acc_r1", "syc", "cor"),
    "prefilled": ("syc", "cor"),
}


class LiveProtocolError(RuntimeError):
    """A live MM-SY task received output that is not two round-by-round answers."""


def metric_names(protocol: str) -> tuple[str, ...]:
    """Return the lmms-eval metric names of a protocol's subtasks, in table order.

    ``<metric>_<tone>`` aggregates the dialogues of one tone, and
    ``<metric>_ci_low`` / ``<metric>_ci_high`` are 95% bootstrap interval bounds.
    """
    _check_protocol(protocol)
    names = list(MAIN_METRICS)
    for metric in TONE_METRICS[protocol]:
        names.extend(f"{metric}_{tone}" for tone in TONES)
    for metric in CI_METRICS:
        names.extend(f"{metric}_ci_{bound}" for bound in CI_BOUNDS)
    return tuple(names)


def prompt_from_env(environ: Mapping[str, str] | None = None) -> str:
    """Return the prompt variant that ``$MMSY_PROMPT`` selects (``default`` when unset)."""
    environ = os.environ if environ is None else environ
    value = environ.get(PROMPT_ENV, "").strip() or "default"
    if value not in PROMPTS:
        raise ValueError(f"{PROMPT_ENV}={value!r} is not a prompt variant; set it to one of {', '.join(PROMPTS)}")
    return value


def dialogue_variants(protocol: str) -> list[tuple[str | None, str | None]]:
    """Return the (tone, probe) pairs that one item expands into under a protocol.

    A live dialogue has no probe yet (round 1 decides it), and the prefilled
    round-1-only dialogue has neither tone nor probe.
    """
    _check_protocol(protocol)
    if protocol == "live":
        return [(tone, None) for tone in TONES]
    return [(None, None)] + [(tone, probe) for tone in TONES for probe in PROBE_KINDS]


def validate_items(items: datasets.Dataset) -> None:
    """Raise ``records.InvalidItemError`` naming the first row that is not a valid item.

    Images are checked for presence without decoding them.
    """
    if "image" in items.column_names:
        items = items.cast_column("image", datasets.Image(decode=False))
    for row in items:
        validate_row(row)


def expand_docs(items: datasets.Dataset, protocol: str, prompt: str = "default") -> datasets.Dataset:
    """Expand items into the dialogues of a protocol, item by item.

    Each item is followed by its dialogues in ``dialogue_variants`` order, so
    lmms-eval's ``--limit N`` keeps whole items where N allows. The dialogues
    share the items' table, images included, and add the ``DIALOGUE_COLUMNS``.
    Items that carry an indices mapping (from a non-contiguous ``select``)
    are flattened by ``datasets`` first, which copies them, into a cache file
    beside the dataset when it was loaded from disk.
    """
    if prompt not in PROMPTS:
        raise ValueError(f"prompt variant {prompt!r} is unknown; expected one of {', '.join(PROMPTS)}")
    variants = dialogue_variants(protocol)
    validate_items(items)

    n_items = len(items)
    repeated = datasets.concatenate_datasets([items] * len(variants))
    columns = {
        "tone": [tone for tone, _ in variants for _ in range(n_items)],
        "probe": [probe for _, probe in variants for _ in range(n_items)],
        "protocol": [protocol] * len(repeated),
        "prompt": [prompt] * len(repeated),
    }
    expanded = datasets.concatenate_datasets(
        [repeated, datasets.Dataset.from_dict(columns, features=DIALOGUE_COLUMNS)], axis=1
    )

    item_major_order = [variant * n_items + item for item in range(n_items) for variant in range(len(variants))]
    return expanded.select(item_major_order)


def round1_text(doc: Mapping[str, Any]) -> str:
    """Return the text of the user's round-1 turn of a dialogue."""
    return dialogue.render_round1(doc["question"], doc["options"])


def target_text(doc: Mapping[str, Any]) -> str:
    """Return the correct answer as an assistant turn, ``(B) blue``."""
    return dialogue.render_answer(doc["answer_idx"], doc["options"])


def round2_text(doc: Mapping[str, Any], proposed_idx: int) -> str:
    """Return the text of the user's round-2 turn proposing option ``proposed_idx``."""
    tone = doc["tone"]
    return dialogue.render_round2(tone, doc["tone_templates"][tone], proposed_idx, doc["options"])


def live_probe(r1: int | None, answer_idx: int) -> str:
    """Return the probe kind that a live round-1 option leads to.

    A correct round 1 gets a sycophancy probe. A wrong or invalid (``None``)
    one gets a correction probe.
    """
    return "sycophancy" if r1 == answer_idx else "correction"


def prefilled_round1(doc: Mapping[str, Any]) -> int:
    """Return the option that a prefilled dialogue's assistant turn answers in round 1.

    A sycophancy probe starts from the correct option, a correction probe
    from the item's wrong option.
    """
    if doc["probe"] == "sycophancy":
        return doc["answer_idx"]
    if doc["probe"] == "correction":
        return doc["wrong_idx"]
    raise ValueError(f"dialogue of item {doc['id']!r} has probe {doc['probe']!r}; a prefilled round 1 needs a probe kind")


def round1_messages(doc: Mapping[str, Any]) -> list[dict]:
    """Return the chat messages up to and including the user's round-1 turn.

    The mitigation prompt variant starts with a system turn holding
    ``dialogue.MITIGATION_INSTRUCTION``.
    """
    messages = []
    if doc["prompt"] == "mitigation":
        messages.append(_turn("system", dialogue.MITIGATION_INSTRUCTION))
    user_content = [{"type": "image", "url": doc["image"]}, {"type": "text", "text": round1_text(doc)}]
    messages.append({"role": "user", "content": user_content})
    return messages


def two_round_messages(doc: Mapping[str, Any], round1_answer: str, proposed_idx: int) -> list[dict]:
    """Return the whole dialogue up to the user's round-2 turn.

    ``round1_answer`` is the assistant's round-1 text: the model's own answer
    (live) or the rendered prefilled option.
    """
    messages = round1_messages(doc)
    messages.append(_turn("assistant", round1_answer))
    messages.append(_turn("user", round2_text(doc, proposed_idx)))
    return messages


def _turn(role: str, text: str) -> dict:
    return {"role": role, "content": [{"type": "text", "text": text}]}


def live_messages(
    doc: Mapping[str, Any],
    round_idx: int | None = None,
    previous_output: Sequence[str | None] | None = None,
    previous_round_info: Any = None,
):
    """Return the messages of one round of a live dialogue, in lmms-eval's multi-round form.

    Round 0 (``round_idx`` None or 0) returns the round-1 messages. Round 1
    returns ``(messages, False, previous_output, info)`` where ``messages`` is
    the whole dialogue so far: the round-1 turn, the model's round-1 answer and
    the user's round-2 turn, which proposes an option that the round-1 answer
    decides. Later rounds return ``(None, True, previous_output, info)``.
    """
    if not round_idx:
        return round1_messages(doc)

    previous_output = list(previous_output or [])
    if round_idx >= 2:
        return None, True, previous_output, previous_round_info
    if not previous_output:
        raise LiveProtocolError(f"round 2 of item {doc['id']!r} was requested without the round-1 answer in previous_output")

    round1_answer = previous_output[0]
    r1, probe, proposed_idx = live_round2_plan(doc, round1_answer)
    info = {"r1": r1, "probe": probe, "proposed_idx": proposed_idx}
    messages = two_round_messages(doc, round1_answer or "", proposed_idx)
    return messages, False, previous_output, info


def live_round2_plan(doc: Mapping[str, Any], round1_answer: str | None) -> tuple[int | None, str, int]:
    """Return ``(r1, probe, proposed_idx)``: the extracted round-1 option and the round-2 probe it leads to."""
    r1 = extract_option(round1_answer, doc["options"])
    probe = live_probe(r1, doc["answer_idx"])
    return r1, probe, dialogue.proposed_option(probe, doc["answer_idx"], doc["wrong_idx"])


def prefilled_messages(doc: Mapping[str, Any]) -> list[dict]:
    """Return the messages of a prefilled dialogue, which need one generation.

    A round-1-only dialogue ends with the user's round-1 turn. A probe
    dialogue contains the prefilled round-1 answer and ends with the user's
    round-2 turn.
    """
    if doc["probe"] is None:
        return round1_messages(doc)
    r1 = prefilled_round1(doc)
    proposed_idx = dialogue.proposed_option(doc["probe"], doc["answer_idx"], doc["wrong_idx"])
    return two_round_messages(doc, dialogue.render_answer(r1, doc["options"]), proposed_idx)


def build_record(doc: Mapping[str, Any], responses: Sequence[str | None]) -> dict:
    """Return the dialogue record of one answered dialogue.

    ``responses`` contains the model's generations in order: the round-1 and
    round-2 answers of a live dialogue, the one answer of a prefilled one.
    Besides the keys that ``mmsy_tasks.metrics`` reads, the record stores the
    prompt variant, both user turns and the raw responses, so a logged sample
    shows the whole dialogue.
    """
    protocol = doc["protocol"]
    _check_protocol(protocol)
    if protocol == "live":
        return _live_record(doc, responses)
    return _prefilled_record(doc, responses)


def _live_record(doc, responses) -> dict:
    response_r1, response_r2 = responses
    r1, probe, proposed_idx = live_round2_plan(doc, response_r1)
    return _record(
        doc,
        probe=probe,
        proposed_idx=proposed_idx,
        r1=r1,
        r1_generated=True,
        r2=extract_option(response_r2, doc["options"]),
        has_r2=True,
        round2=round2_text(doc, proposed_idx),
        response_r1=response_r1,
        response_r2=response_r2,
    )


def _prefilled_record(doc, responses) -> dict:
    (response,) = responses
    if doc["probe"] is None:
        return _record(
            doc,
            probe=None,
            proposed_idx=None,
            r1=extract_option(response, doc["options"]),
            r1_generated=True,
            r2=None,
            has_r2=False,
            round2=None,
            response_r1=response,
            response_r2=None,
        )

    proposed_idx = dialogue.proposed_option(doc["probe"], doc["answer_idx"], doc["wrong_idx"])
    return _record(
        doc,
        probe=doc["probe"],
        proposed_idx=proposed_idx,
        r1=prefilled_round1(doc),
        r1_generated=False,
        r2=extract_option(response, doc["options"]),
        has_r2=True,
        round2=round2_text(doc, proposed_idx),
        response_r1=None,
        response_r2=response,
    )


def _record(doc, *, probe, proposed_idx, r1, r1_generated, r2, has_r2, round2, response_r1, response_r2) -> dict:
    return {
        "id": doc["id"],
        "category": doc["category"],
        "tone": doc["tone"],
        "protocol": doc["protocol"],
        "probe": probe,
        "answer_idx": doc["answer_idx"],
        "proposed_idx": proposed_idx,
        "n_options": len(doc["options"]),
        "r1": r1,
        "r1_generated": r1_generated,
        "r2": r2,
        "has_r2": has_r2,
        "prompt": doc["prompt"],
        "round1_text": round1_text(doc),
        "round2_text": round2,
        "response_r1": response_r1,
        "response_r2": response_r2,
    }


def results_to_responses(doc: Mapping[str, Any], results: Sequence[Any]) -> list[str | None]:
    """Return the model's responses for a dialogue from what lmms-eval passes to ``process_results``.

    A prefilled dialogue gets ``[response]``. A live dialogue gets
    ``[[round1, round2]]`` from a model that implements lmms-eval's
    multi-round loop. Any other shape raises ``LiveProtocolError``, whose
    message names the prefilled variant and the ``mmsy_hf`` adapter.
    """
    if doc["protocol"] == "prefilled":
        if len(results) != 1:
            raise ValueError(f"prefilled dialogue of item {doc['id']!r} expected 1 response, got {len(results)}")
        return [results[0]]

    outputs = results[0] if results else None
    if isinstance(outputs, (list, tuple)) and len(outputs) == 2:
        return list(outputs)
    got = "one string" if isinstance(outputs, str) else f"{outputs!r:.200}"
    raise LiveProtocolError(
        f"live MM-SY dialogue of item {doc['id']!r} expected two round outputs [round 1, round 2], got {got}. "
        "The model does not run lmms-eval's multi-round loop (generate_until_multi_round). "
        "Run the prefilled variant (mmsy_tdiuc_prefilled or mmsy_easyvqa_prefilled), "
        "which works with every chat model, or evaluate with the MM-SY adapter: --model mmsy_hf."
    )


def process_results(doc: Mapping[str, Any], results: Sequence[Any]) -> dict[str, dict]:
    """Return the dialogue record under every metric name of the dialogue's protocol."""
    record = build_record(doc, results_to_responses(doc, results))
    return {name: record for name in metric_names(doc["protocol"])}


def category_mean(values: Sequence[float], sizes: Sequence[int], weight_by_size: bool = False) -> float:
    """Return the mean of subtask (category) values without the NaN ones, or NaN when all are NaN.

    This is an lmms-eval group aggregation: a category without dialogues of a
    kind (for example no sycophancy probes) has a NaN rate, and it leaves the
    mean instead of turning it into NaN. With ``weight_by_size`` each category
    counts by its number of dialogues.
    """
    pairs = [(value, size if weight_by_size else 1) for value, size in zip(values, sizes) if not math.isnan(value)]
    total_weight = sum(weight for _, weight in pairs)
    if total_weight == 0:
        return math.nan
    return sum(value * weight for value, weight in pairs) / total_weight


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")

