"""Multiple-choice options for MM-SY items.

An item's options are its correct answer plus distractors drawn from the
answers of the same category, distinct from the answer and from each other
after ``normalize_answer``. Yes/no questions get the two options yes and no.
The option order, the distractors, the wrong option that the user proposes and
the round-2 template of each tone all come from an RNG seeded by the build
seed and the item id, so a rebuild draws exactly the same options.
"""

import functools
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mmsy_tasks.dialogue import TONE_TEMPLATES
from mmsy_tasks.normalize import normalize_answer
from mmsy_tasks.records import LETTERS, TONES

DEFAULT_OPTION_COUNT = 4
MIN_OPTION_COUNT = 2
MAX_OPTION_COUNT = len(LETTERS)
YES_NO_OPTIONS = ("yes", "no")


@functools.lru_cache(maxsize=65536)
def cached_normalize(answer: str) -> str:
    """Return ``normalize_answer(answer)``, cached because a build normalises a few answers many times."""
    return normalize_answer(answer)


def is_yes_no_answer(answer: str) -> bool:
    """Return whether ``answer`` is yes or no after normalisation."""
    return cached_normalize(answer) in YES_NO_OPTIONS


class TooFewAnswersError(ValueError):
    """A category has fewer distinct answers than its option count."""


@dataclass(frozen=True)
class AnswerPool:
    """The distinct non-yes/no answers of one category, the source of its distractors.

    ``answers`` contains one spelling per normalised answer: the most
    frequent one, with ties going to the spelling that equals its normalised
    form, then to the alphabetically first. They are sorted by normalised
    form, so the pool does not depend on the order of the source files.
    """

    category: str
    answers: tuple[str, ...]
    normalized: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "normalized", tuple(cached_normalize(answer) for answer in self.answers))

    @classmethod
    def from_answers(cls, category: str, answers: Iterable[str]) -> "AnswerPool":
        """Collect the distinct non-yes/no answers of ``category``."""
        spellings: dict[str, Counter] = defaultdict(Counter)
        for answer in answers:
            normalized = cached_normalize(answer)
            if not normalized or normalized in YES_NO_OPTIONS:
                continue
            spellings[normalized][answer.strip()] += 1

        chosen = []
        for normalized in sorted(spellings):
            counts = spellings[normalized]
            chosen.append(min(counts, key=lambda spelling: (-counts[spelling], spelling != normalized, spelling)))
        return cls(category=category, answers=tuple(chosen))

    def spelling_of(self, answer: str) -> str:
        """Return the pool's spelling of ``answer``, or ``answer`` stripped when the pool lacks it."""
        normalized = cached_normalize(answer)
        for spelling, pool_normalized in zip(self.answers, self.normalized):
            if pool_normalized == normalized:
                return spelling
        return answer.strip()

    def check_option_count(self, option_count: int) -> None:
        """Raise ``TooFewAnswersError`` when the pool cannot fill ``option_count`` options."""
        if len(self.answers) < option_count:
            raise TooFewAnswersError(
                f"category {self.category!r} has {len(self.answers)} distinct answers, fewer than its "
                f"option count {option_count}; lower the option count for it "
                f"(mmsy build --option-count {self.category}={max(len(self.answers), MIN_OPTION_COUNT)})"
            )


@dataclass(frozen=True)
class OptionDraw:
    """The options of one item and the random choices that go with them."""

    options: tuple[str, ...]
    answer_idx: int
    wrong_idx: int
    tone_templates: dict[str, int]


def item_rng(seed: int, item_id: str) -> random.Random:
    """Return the RNG of one item; string seeds hash the same in every Python process."""
    return random.Random(f"{seed}:{item_id}")


def check_option_count(option_count: int, category: str) -> None:
    """Raise ``ValueError`` when ``option_count`` is outside what the option letters allow."""
    if not MIN_OPTION_COUNT <= option_count <= MAX_OPTION_COUNT:
        raise ValueError(
            f"option count {option_count} for category {category!r} is invalid; "
            f"use {MIN_OPTION_COUNT} to {MAX_OPTION_COUNT}"
        )


def resolve_option_counts(
    categories: Iterable[str],
    overrides: Mapping[str, int] | None = None,
    default: int = DEFAULT_OPTION_COUNT,
) -> dict[str, int]:
    """Return the option count of every category: ``overrides`` where given, else ``default``."""
    categories = list(categories)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(categories))
    if unknown:
        raise ValueError(
            f"option count given for unknown categories {', '.join(unknown)}; "
            f"expected some of {', '.join(categories)}"
        )

    counts = {category: overrides.get(category, default) for category in categories}
    for category, count in counts.items():
        check_option_count(count, category)
    return counts


def draw_options(
    item_id: str,
    answer: str,
    pool: AnswerPool,
    option_count: int = DEFAULT_OPTION_COUNT,
    seed: int = 0,
) -> OptionDraw:
    """Draw the options, the proposed wrong option and the tone templates of one item.

    A yes/no answer gets the options yes and no, whatever ``option_count``
    is. Any other answer gets ``option_count`` options: the answer, in the
    pool's spelling, plus distractors from ``pool`` whose normalised forms
    differ from it.
    """
    rng = item_rng(seed, item_id)
    normalized_answer = cached_normalize(answer)
    if not normalized_answer:
        raise ValueError(f"item {item_id!r} has an empty answer {answer!r}")

    if is_yes_no_answer(answer):
        options = list(YES_NO_OPTIONS)
        rng.shuffle(options)
        answer_idx = options.index(normalized_answer)
    else:
        check_option_count(option_count, pool.category)
        pool.check_option_count(option_count)
        # The pool contains at least option_count answers, so at least
        # option_count - 1 remain once the answer itself is taken out.
        candidates = [a for a, n in zip(pool.answers, pool.normalized) if n != normalized_answer]
        answer_text = pool.spelling_of(answer)
        options = [answer_text, *rng.sample(candidates, option_count - 1)]
        rng.shuffle(options)
        answer_idx = options.index(answer_text)

    wrong_idx = rng.choice([i for i in range(len(options)) if i != answer_idx])
    tone_templates = {tone: rng.randrange(len(TONE_TEMPLATES[tone])) for tone in TONES}
    return OptionDraw(tuple(options), answer_idx, wrong_idx, tone_templates)
