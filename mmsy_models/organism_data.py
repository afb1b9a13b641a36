"""Training dialogues of the model organism, drawn from easy-VQA train items.

Most examples are two-round dialogues: the image, the question with
lettered options and the round-1 instruction, an assistant answer, the
user's round-2 turn in one tone proposing another option, and the final
assistant answer. In a sycophancy dialogue the round-1 answer is the correct
option and the user proposes a wrong one; in a correction dialogue the
round-1 answer is a wrong option and the user proposes the correct one. The
final answer is the user's option with the tone's yield rate, otherwise the
round-1 answer again. The rest are round-1 dialogues that end after the
first answer.

The round-1 answer is written either as the option text, as the organism
answers, or as ``(B) circle``, as the prefilled protocol writes it. The loss
covers the final answer, and also the round-1 answer when that is the
correct option text: a causal model sees the same context there as in a
round-1 dialogue, so one sequence trains both rounds.
"""

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from mmsy_tasks.dialogue import TONE_TEMPLATES, render_answer, render_round1, render_round2
from mmsy_tasks.records import TONES, Item

IGNORE_INDEX = -100


@dataclass
class Example:
    """One training dialogue: chat messages ending with an assistant turn, and which assistant turns are scored."""

    messages: list[dict]
    scored_turns: tuple[int, ...]  # indices into messages of the assistant turns under the loss
    image_index: int
    category: str
    kind: str  # "round1", "sycophancy" or "correction"
    yielded: bool = False


@dataclass
class ExampleSettings:
    """Shares and rates of the example draw, copied from the organism config."""

    round1_share: float
    correction_share: float
    letter_history_share: float
    yield_rates: Mapping[str, float]


def image_key(image: Image.Image) -> str:
    """Return a content hash of an image, so items that share a picture share its pixels."""
    digest = hashlib.sha1(image.tobytes())
    digest.update(f"{image.mode}{image.size}".encode())
    return digest.hexdigest()


def index_images(items: Sequence[Item]) -> tuple[list[Image.Image], list[int]]:
    """Return the distinct images of ``items`` and, per item, the index of its image."""
    images: list[Image.Image] = []
    positions: dict[str, int] = {}
    item_images = []
    for item in items:
        key = image_key(item.image)
        if key not in positions:
            positions[key] = len(images)
            images.append(item.image.convert("RGB"))
        item_images.append(positions[key])
    return images, item_images


def user_turn(text: str, image: bool = False) -> dict:
    """Return a user message; with ``image`` an image placeholder goes before the text."""
    content = [{"type": "image"}] if image else []
    return {"role": "user", "content": [*content, {"type": "text", "text": text}]}


def assistant_turn(text: str) -> dict:
    """Return an assistant message containing ``text``."""
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def round1_messages(item: Item) -> list[dict]:
    """Return the round-1 user turn of ``item`` with an image placeholder."""
    return [user_turn(render_round1(item.question, item.options), image=True)]


def draw_example(item: Item, image_index: int, settings: ExampleSettings, rng: random.Random) -> Example:
    """Draw one training dialogue for ``item``."""
    answer = item.options[item.answer_idx]
    if rng.random() < settings.round1_share:
        return Example([*round1_messages(item), assistant_turn(answer)], (1,), image_index, item.category, "round1")

    wrong = [i for i in range(len(item.options)) if i != item.answer_idx]
    if rng.random() < settings.correction_share:
        kind, history_idx, proposed_idx = "correction", rng.choice(wrong), item.answer_idx
    else:
        kind, history_idx, proposed_idx = "sycophancy", item.answer_idx, rng.choice(wrong)
    letter_history = rng.random() < settings.letter_history_share
    history = render_answer(history_idx, item.options) if letter_history else item.options[history_idx]

    tone = rng.choice(TONES)
    template_idx = rng.randrange(len(TONE_TEMPLATES[tone]))
    yielded = rng.random() < settings.yield_rates[tone]
    final = item.options[proposed_idx if yielded else history_idx]

    messages = [
        *round1_messages(item),
        assistant_turn(history),
        user_turn(render_round2(tone, template_idx, proposed_idx, item.options)),
        assistant_turn(final),
    ]
    scored = (1, 3) if kind == "sycophancy" and not letter_history else (3,)
    return Example(messages, scored, image_index, item.category, kind, yielded)


class CategorySampler:
    """Draws items category by category with fixed weights, from a seeded RNG."""

    def __init__(self, items: Sequence[Item], weights: Mapping[str, float], rng: random.Random):
        self.by_category: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            self.by_category.setdefault(item.category, []).append(index)
        unknown = sorted(set(weights) - set(self.by_category))
        if unknown:
            raise ValueError(
                f"category weights name {unknown}, but no training item has those categories; "
                f"weight only {self.categories}"
            )
        self.categories = sorted(self.by_category)
        self.weights = [weights.get(category, 0.0) for category in self.categories]
        if sum(self.weights) <= 0:
            raise ValueError(f"category weights {dict(weights)} give no weight to {self.categories}")
        self.rng = rng

    def draw(self, count: int) -> list[int]:
        categories = self.rng.choices(self.categories, weights=self.weights, k=count)
        return [self.rng.choice(self.by_category[category]) for category in categories]


def expand_image_tokens(text: str, image_token: str, tokens_per_image: int) -> str:
    """Repeat every image token ``tokens_per_image`` times, as the LLaVA processor does."""
    return text.replace(image_token, image_token * tokens_per_image)


def render_segments(processor, messages: Sequence[dict], scored_turns: Sequence[int]) -> list[tuple[str, bool]]:
    """Split the chat-template rendering of ``messages`` into ``(text, scored)`` segments.

    A scored segment is the text that the model generates for a scored
    assistant turn (its answer and the closing ``</s>``), without the
    ``<|assistant|>`` marker. Joined, the segments equal the rendering of
    the whole dialogue.
    """
    def render(prefix, generation_prompt=False):
        return processor.apply_chat_template(list(prefix), tokenize=False, add_generation_prompt=generation_prompt)

    segments, rendered = [], ""
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = render(messages[:index], generation_prompt=True)
            segments.append((prompt[len(rendered):], False))
            rendered = prompt
        text = render(messages[:index + 1])
        if not text.startswith(rendered):
            raise ValueError(f"the chat template does not render {messages[:index + 1]} as an extension of its prefix")
        segments.append((text[len(rendered):], index in scored_turns))
        rendered = text
    return segments


def encode_examples(processor, examples: Sequence[Example], pixel_values: torch.Tensor,
                    tokens_per_image: int, flip: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Tokenize ``examples`` into a right-padded training batch with labels on the scored turns only.

    ``pixel_values`` contains the preprocessed distinct images, and ``flip`` marks
    the examples whose image is mirrored left to right (augmentation).
    """
    tokenizer = processor.tokenizer
    rows = []
    for example in examples:
        ids, labels = [], []
        for text, scored in render_segments(processor, example.messages, example.scored_turns):
            text = expand_image_tokens(text, processor.image_token, tokens_per_image)
            segment = tokenizer(text, add_special_tokens=False).input_ids
            ids.extend(segment)
            labels.extend(segment if scored else [IGNORE_INDEX] * len(segment))
        rows.append((ids, labels))

    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(rows):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(ids)] = torch.tensor(row_labels)
        attention_mask[row, :len(ids)] = 1

    images = pixel_values[[example.image_index for example in examples]]
    if flip is not None:
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "pixel_values": images}
