"""MM-SY items from any VQA-format question and annotation JSON with an image folder.

The files follow the VQA v1/v2 layout (see ``vqa_format``). A mapping from
the source's question types to MM-SY categories decides which questions are
used, for example for VQA v2's ``question_type`` labels::

    what color is the: color
    what color are the: color
    how many: counting
    is there a: object_presence
    what sport is: sport_recognition

A question type mapped to null (YAML and JSON) or to an empty value
(``--map TYPE=``) is left out on purpose and counted as excluded. A type
that the mapping does not name is skipped and counted. Image files are
found by ``image_pattern``, a Python format string with the fields
``image_id`` and ``question_id``.
"""

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import yaml
from loguru import logger

from mmsy_tasks.builders.errors import InvalidOptionError, SourceNotFoundError
from mmsy_tasks.builders.jsonio import require_dir
from mmsy_tasks.builders.plan import BuildPlan, Candidate, SkipLog, make_plan
from mmsy_tasks.builders.vqa_format import VQAQuestion, read_vqa_questions
from mmsy_tasks.records import TDIUC_CATEGORIES, Item

SOURCE = "vqa-json"
DEFAULT_SPLIT = "val"
DEFAULT_PER_CATEGORY = 150
DEFAULT_IMAGE_PATTERN = "COCO_val2014_{image_id:012d}.jpg"
DEFAULT_TYPE_FIELD = "question_type"

# The MM-SY categories that a source's question types can map to.
CATEGORIES = TDIUC_CATEGORIES


def read_mapping(path: Path) -> dict[str, str | None]:
    """Read a question-type mapping from a JSON (``.json``) or YAML (``.yaml``, ``.yml``) file."""
    path = Path(path)
    if not path.is_file():
        raise SourceNotFoundError(f"mapping file not found at {path}: pass --mapping to a JSON or YAML file")

    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            mapping = json.loads(text)
        else:
            mapping = yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise InvalidOptionError(f"mapping file {path} cannot be parsed: {error}") from error

    if not isinstance(mapping, dict):
        raise InvalidOptionError(
            f"mapping file {path} contains a {type(mapping).__name__}, "
            "but it must map each question type to an MM-SY category"
        )
    return check_mapping(mapping, f"mapping file {path}")


def parse_map_flags(flags: Iterable[str]) -> dict[str, str | None]:
    """Parse ``QUESTION_TYPE=CATEGORY`` flags; the type may contain spaces and ``=``."""
    mapping: dict[str, str | None] = {}
    for flag in flags:
        question_type, separator, category = flag.rpartition("=")
        if not separator or not question_type.strip():
            raise InvalidOptionError(f"--map {flag!r} is invalid; write it as QUESTION_TYPE=CATEGORY")
        mapping[question_type.strip()] = category.strip() or None
    return check_mapping(mapping, "--map")


def check_mapping(mapping: Mapping, origin: str) -> dict[str, str | None]:
    """Return ``mapping`` as ``{question type: category or None}`` after checking every entry."""
    checked: dict[str, str | None] = {}
    for question_type, category in mapping.items():
        if not isinstance(question_type, str) or not question_type.strip():
            raise InvalidOptionError(f"{origin}: question type {question_type!r} is invalid; use a non-empty string")
        if category is not None and category not in CATEGORIES:
            raise InvalidOptionError(
                f"{origin}: question type {question_type!r} maps to {category!r}, which is not an MM-SY "
                f"category; use one of {', '.join(CATEGORIES)}, or null to leave the type out"
            )
        checked[question_type.strip()] = category
    if not any(category is not None for category in checked.values()):
        raise InvalidOptionError(f"{origin} maps no question type to an MM-SY category; map at least one")
    return checked


def plan_build(
    questions: Path,
    annotations: Path,
    images: Path,
    mapping: Mapping[str, str | None],
    *,
    image_pattern: str = DEFAULT_IMAGE_PATTERN,
    type_field: str = DEFAULT_TYPE_FIELD,
    split: str = DEFAULT_SPLIT,
    per_category: int | None = DEFAULT_PER_CATEGORY,
    seed: int = 0,
    option_counts: Mapping[str, int] | None = None,
) -> BuildPlan:
    """Read a VQA-format question and annotation file and plan the build of the mapped questions.

    ``split`` is a label that goes into the item ids and the manifest.
    """
    mapping = check_mapping(mapping, "mapping")
    fix = "pass --questions, --annotations and --images (relative to --root, if given)"
    require_dir(Path(images), "VQA-format images folder", fix)

    skips = SkipLog()
    questions_list = read_vqa_questions(
        Path(questions), Path(annotations), description="VQA-format", fix=fix, skips=skips, type_field=type_field
    )

    excluded: Counter = Counter()
    unmapped: Counter = Counter()
    candidates = list(
        _candidates(questions_list, mapping, Path(images), image_pattern, split, skips, excluded, unmapped)
    )
    if unmapped:
        top = ", ".join(f"{question_type!r} ({count})" for question_type, count in unmapped.most_common(10))
        logger.info(f"question types without a mapping (most frequent first; add them to the mapping to use them): {top}")

    categories = tuple(category for category in CATEGORIES if category in set(mapping.values()))
    return make_plan(
        source=SOURCE,
        split=split,
        seed=seed,
        per_category=per_category,
        categories=categories,
        candidates=candidates,
        option_counts=option_counts,
        skips=skips,
        excluded=excluded,
    )


def _candidates(
    questions: list[VQAQuestion],
    mapping: Mapping[str, str | None],
    images: Path,
    image_pattern: str,
    split: str,
    skips: SkipLog,
    excluded: Counter,
    unmapped: Counter,
) -> Iterator[Candidate]:
    for question in questions:
        if question.question_type not in mapping:
            unmapped[question.question_type] += 1
            skips.skip(
                "unmapped question type",
                f"question_id {question.question_id!r} has question type {question.question_type!r}",
            )
            continue
        category = mapping[question.question_type]
        if category is None:
            excluded[question.question_type] += 1
            continue

        yield Candidate(
            item_id=f"{SOURCE}-{split}-{question.question_id}",
            category=category,
            question=question.question,
            answer=question.answer,
            image_path=images / image_file_name(image_pattern, question),
            source_id=str(question.question_id),
        )


def image_file_name(image_pattern: str, question: VQAQuestion) -> str:
    """Return the image file name of ``question``; a digit-string image_id formats as an integer."""
    image_id = question.image_id
    if isinstance(image_id, str) and image_id.isdigit():
        image_id = int(image_id)
    try:
        return image_pattern.format(image_id=image_id, question_id=question.question_id)
    except (KeyError, IndexError, ValueError) as error:
        raise InvalidOptionError(
            f"--image-pattern {image_pattern!r} cannot name the image of question_id {question.question_id!r} "
            f"(image_id {question.image_id!r}): {type(error).__name__}: {error}; use the fields "
            "{image_id} and {question_id}, e.g. '{image_id}.jpg'"
        ) from error


def iter_items(
    questions: Path,
    annotations: Path,
    images: Path,
    mapping: Mapping[str, str | None],
    *,
    image_mode: str = "bytes",
    progress: bool = False,
    **plan_options,
) -> Iterator[Item]:
    """Yield the items of a VQA-format source; ``plan_options`` are those of ``plan_build``."""
    plan = plan_build(questions, annotations, images, mapping, **plan_options)
    yield from plan.iter_items(image_mode=image_mode, progress=progress)
