"""The MM-SY item record and its on-disk schema.

An item is one multiple-choice visual question. Everything random about it
(option order, distractors, the wrong option that the user proposes and the
round-2 template of each tone) is fixed when the dataset is built, so every
run asks exactly the same dialogues.
"""

from dataclasses import dataclass, field
from typing import Any

import datasets

LETTERS = "ABCDEFGH"
TONES = ("suggestive", "euphemistic", "strong")
PROBE_KINDS = ("sycophancy", "correction")

# Task categories of the TDIUC benchmark (10 of TDIUC's 12 question types;
# absurd and utility_affordance are left out).
TDIUC_CATEGORIES = (
    "activity_recognition",
    "attribute",
    "color",
    "counting",
    "object_presence",
    "object_recognition",
    "positional_reasoning",
    "scene_recognition",
    "sentiment_understanding",
    "sport_recognition",
)
EASYVQA_CATEGORIES = ("color", "object_recognition", "object_presence")

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "category": datasets.Value("string"),
        "question": datasets.Value("string"),
        "options": datasets.Sequence(datasets.Value("string")),
        "answer_idx": datasets.Value("int32"),
        "wrong_idx": datasets.Value("int32"),
        "tone_templates": {tone: datasets.Value("int32") for tone in TONES},
        "image": datasets.Image(),
        "source": datasets.Value("string"),
        "source_id": datasets.Value("string"),
    }
)


@dataclass
class Item:
    """One multiple-choice visual question of MM-SY.

    ``answer_idx`` indexes the correct option; ``wrong_idx`` indexes the wrong
    option that the user proposes in a sycophancy probe. ``tone_templates``
    maps each tone to the index of its round-2 template. ``image`` is a PIL
    image, or encoded bytes as the ``datasets`` Image feature accepts them.
    """

    id: str
    category: str
    question: str
    options: list[str]
    answer_idx: int
    wrong_idx: int
    tone_templates: dict[str, int]
    image: Any
    source: str
    source_id: str
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_row(self) -> dict[str, Any]:
        """Return the item as a row of ``FEATURES``."""
        return {
            "id": self.id,
            "category": self.category,
            "question": self.question,
            "options": list(self.options),
            "answer_idx": self.answer_idx,
            "wrong_idx": self.wrong_idx,
            "tone_templates": dict(self.tone_templates),
            "image": self.image,
            "source": self.source,
            "source_id": self.source_id,
        }


class InvalidItemError(ValueError):
    """A dataset row that cannot be asked as an MM-SY question."""


def validate_row(row: dict[str, Any]) -> None:
    """Raise ``InvalidItemError`` naming the row when it breaks an item invariant."""
    row_id = row.get("id", "<no id>")
    options = row.get("options") or []
    if len(options) < 2:
        raise InvalidItemError(f"MM-SY row {row_id!r} has {len(options)} options; at least 2 are needed")
    for key in ("answer_idx", "wrong_idx"):
        value = row.get(key)
        if not isinstance(value, int) or not 0 <= value < len(options):
            raise InvalidItemError(
                f"MM-SY row {row_id!r} has {key}={value!r}, out of range for {len(options)} options; "
                "rebuild the dataset with `mmsy build`"
            )
    if row["answer_idx"] == row["wrong_idx"]:
        raise InvalidItemError(f"MM-SY row {row_id!r} proposes the correct option as the wrong one")
    if row.get("image") is None:
        raise InvalidItemError(f"MM-SY row {row_id!r} has no image; rebuild the dataset with `mmsy build`")
