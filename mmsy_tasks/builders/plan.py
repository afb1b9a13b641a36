"""The source-independent part of a build: selection, options and images.

A source module reads its files into ``Candidate`` questions and hands them
to ``make_plan``. The plan fixes which questions each category draws from, in
a seeded order, and checks every category's answers against its option
count before any image is read. ``BuildPlan.iter_items`` then reads images and
draws options, skipping (and counting) questions whose image is missing or
corrupt and taking the next question of the category in their place.
"""

import random
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger
from tqdm import tqdm

from mmsy_tasks.builders.errors import MalformedSourceError
from mmsy_tasks.builders.images import ImageReadError, embedded_image, read_image
from mmsy_tasks.options import YES_NO_OPTIONS, AnswerPool, draw_options, is_yes_no_answer, resolve_option_counts
from mmsy_tasks.records import Item

IMAGE_MODES = ("bytes", "pil")


@dataclass(frozen=True)
class Candidate:
    """One source question with its MM-SY category, before options are drawn."""

    item_id: str
    category: str
    question: str
    answer: str
    image_path: Path
    source_id: str


class SkipLog:
    """Counts of skipped source questions per reason; logs the first few of each reason."""

    def __init__(self, max_logged_per_reason: int = 5):
        self.counts: Counter = Counter()
        self.max_logged_per_reason = max_logged_per_reason

    def skip(self, reason: str, detail: str) -> None:
        """Count one skipped question and log it, or log once that further skips go unlogged."""
        self.counts[reason] += 1
        count = self.counts[reason]
        if count <= self.max_logged_per_reason:
            logger.warning(f"skipped question ({reason}): {detail}")
        elif count == self.max_logged_per_reason + 1:
            logger.warning(f"further questions skipped for {reason!r} are counted but not logged")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


@dataclass
class BuildPlan:
    """Everything a build decides before reading images.

    ``candidates`` lists each category's questions in selection order (a
    shuffle seeded by the build seed and the category). ``per_category`` is
    the number of items per category, or None for all of them.
    ``source_order`` maps each item id to its position in the source files.
    ``excluded`` counts questions left out by design (a question type that
    MM-SY does not use), apart from the skips of bad input.
    ``planning_skips`` are the skips found while reading the source files.
    Each ``iter_items`` call starts ``skips`` again from them, so the image
    skips of one pass are not counted twice.
    """

    source: str
    split: str
    seed: int
    per_category: int | None
    categories: tuple[str, ...]
    candidates: dict[str, list[Candidate]]
    pools: dict[str, AnswerPool]
    option_counts: dict[str, int]
    skips: SkipLog
    source_order: dict[str, int] = field(default_factory=dict)
    excluded: Counter = field(default_factory=Counter)
    planning_skips: Counter = field(default_factory=Counter)

    @property
    def target_count(self) -> int:
        """Return how many items the build yields when no image is skipped."""
        return sum(self._target(category) for category in self.categories)

    def _target(self, category: str) -> int:
        available = len(self.candidates[category])
        return available if self.per_category is None else min(self.per_category, available)

    def iter_items(self, image_mode: str = "bytes", progress: bool = False) -> Iterator[Item]:
        """Yield the items category by category, each category in source order.

        ``image_mode="bytes"`` gives each item the image file's bytes for the
        ``datasets`` Image feature. ``"pil"`` gives a decoded RGB PIL image,
        and the items that share an image file share one image object.
        """
        if image_mode not in IMAGE_MODES:
            raise ValueError(f"image mode {image_mode!r} is invalid; expected one of {', '.join(IMAGE_MODES)}")

        self.skips.counts = Counter(self.planning_skips)
        images = _ImageCache(image_mode)
        bar = tqdm(total=self.target_count, desc=f"build {self.source}", unit="item", disable=not progress)
        with bar:
            for category in self.categories:
                taken = self._take(category, images, bar)
                if len(taken) < self._target(category):
                    logger.warning(
                        f"category {category!r} has {len(taken)} items, fewer than the {self._target(category)} "
                        "requested, because questions were skipped and no others were left to replace them"
                    )
                yield from taken

    def _take(self, category: str, images: "_ImageCache", bar: tqdm) -> list[Item]:
        target = self._target(category)
        taken: list[tuple[Candidate, Item]] = []

        for candidate in self.candidates[category]:
            if len(taken) >= target:
                break
            try:
                image = images.get(candidate.image_path)
            except ImageReadError as error:
                self.skips.skip(f"{error.reason} image", f"{candidate.item_id}: {error}")
                continue
            taken.append((candidate, self._item(candidate, image)))
            bar.update(1)

        taken.sort(key=lambda pair: self.source_order[pair[0].item_id])
        return [item for _, item in taken]

    def _item(self, candidate: Candidate, image) -> Item:
        draw = draw_options(
            candidate.item_id,
            candidate.answer,
            self.pools[candidate.category],
            self.option_counts[candidate.category],
            self.seed,
        )
        return Item(
            id=candidate.item_id,
            category=candidate.category,
            question=candidate.question,
            options=list(draw.options),
            answer_idx=draw.answer_idx,
            wrong_idx=draw.wrong_idx,
            tone_templates=dict(draw.tone_templates),
            image=image,
            source=self.source,
            source_id=candidate.source_id,
        )


class _ImageCache:
    """Checked images by path, so that questions sharing an image read it once."""

    def __init__(self, image_mode: str):
        self.image_mode = image_mode
        self._values: dict[str, object] = {}
        self._errors: dict[str, ImageReadError] = {}

    def get(self, path: Path):
        key = str(path)
        if key in self._errors:
            raise self._errors[key]
        if key not in self._values:
            try:
                data, image = read_image(path)
            except ImageReadError as error:
                self._errors[key] = error
                raise
            self._values[key] = image if self.image_mode == "pil" else embedded_image(data)
        return self._values[key]


def make_plan(
    *,
    source: str,
    split: str,
    seed: int,
    per_category: int | None,
    categories: Iterable[str],
    candidates: Iterable[Candidate],
    option_counts: Mapping[str, int] | None = None,
    default_option_counts: Mapping[str, int] | None = None,
    skips: SkipLog | None = None,
    excluded: Counter | None = None,
) -> BuildPlan:
    """Group candidates by category, draw each category's selection order and check its options.

    ``default_option_counts`` are a source's own defaults (easy-VQA has three
    shapes, so its object_recognition items get three options), and
    ``option_counts`` from the user override them. A category whose answers
    are all yes or no gets 2 options whatever its count. Raises
    ``TooFewAnswersError`` when another category has fewer distinct answers
    than its option count.
    """
    if per_category is not None and per_category < 1:
        raise ValueError(f"per_category={per_category} is invalid; pass a positive number or None for all")

    categories = tuple(categories)
    skips = skips or SkipLog()
    by_category, source_order = _group_by_category(candidates, categories)
    counts = resolve_option_counts(categories, {**(default_option_counts or {}), **(option_counts or {})})

    pools = {}
    for category in categories:
        answers = [candidate.answer for candidate in by_category[category]]
        pools[category] = AnswerPool.from_answers(category, answers)
        if answers and all(is_yes_no_answer(answer) for answer in answers):
            counts[category] = len(YES_NO_OPTIONS)
        elif answers:
            pools[category].check_option_count(counts[category])

    for category in categories:
        random.Random(f"{seed}:select:{category}").shuffle(by_category[category])
        _warn_if_short(category, len(by_category[category]), per_category)

    return BuildPlan(
        source=source,
        split=split,
        seed=seed,
        per_category=per_category,
        categories=categories,
        candidates=by_category,
        pools=pools,
        option_counts=counts,
        skips=skips,
        source_order=source_order,
        excluded=excluded or Counter(),
        planning_skips=Counter(skips.counts),
    )


def _group_by_category(
    candidates: Iterable[Candidate], categories: tuple[str, ...]
) -> tuple[dict[str, list[Candidate]], dict[str, int]]:
    by_category: dict[str, list[Candidate]] = {category: [] for category in categories}
    source_order: dict[str, int] = {}
    for candidate in candidates:
        if candidate.category not in by_category:
            raise ValueError(f"candidate {candidate.item_id!r} has category {candidate.category!r}, not in {categories}")
        if candidate.item_id in source_order:
            raise MalformedSourceError(
                f"question id {candidate.source_id!r} occurs twice in the source; "
                "each question needs its own id"
            )
        source_order[candidate.item_id] = len(source_order)
        by_category[candidate.category].append(candidate)
    return by_category, source_order


def _warn_if_short(category: str, available: int, per_category: int | None) -> None:
    if available == 0:
        logger.warning(f"category {category!r} has no questions in the source; the dataset will have none of it")
    elif per_category is not None and available < per_category:
        logger.warning(f"category {category!r} has {available} questions, fewer than --per-category {per_category}")
