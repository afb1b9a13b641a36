"""MM-SY items from a local copy of TDIUC (Kafle and Kanan, 2017).

TDIUC is not downloaded here; users bring it. The loader expects the
layout of the TDIUC release:

    ROOT/Questions/OpenEnded_mscoco_{split}2014_questions.json
    ROOT/Annotations/mscoco_{split}2014_annotations.json
    ROOT/Images/{split}2014/COCO_{split}2014_{image_id:012d}.jpg

with ``split`` val (the benchmark) or train (mitigation training). Each
annotation carries a ``question_type``, one of TDIUC's 12 labels. MM-SY uses
10 of them as its categories; absurd and utility_affordance questions are
left out and counted in the manifest as excluded.

NOTE: this layout follows the TDIUC release's documented file names and has
been tested only on fixtures written in that layout. An image stored under
another name is skipped as missing, and the skip is counted and logged.
"""

from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

from loguru import logger

from mmsy_tasks.builders.errors import MalformedSourceError
from mmsy_tasks.builders.jsonio import require_dir
from mmsy_tasks.builders.plan import BuildPlan, Candidate, SkipLog, make_plan
from mmsy_tasks.builders.vqa_format import VQAQuestion, read_vqa_questions
from mmsy_tasks.records import TDIUC_CATEGORIES, Item

SOURCE = "tdiuc"
SPLITS = ("val", "train")
DEFAULT_SPLIT = "val"
DEFAULT_PER_CATEGORY = 150
EXCLUDED_TYPES = ("absurd", "utility_affordance")

ROOT_FIX = "pass --root to the TDIUC folder that holds Questions/, Annotations/ and Images/"


def questions_path(root: Path, split: str = DEFAULT_SPLIT) -> Path:
    return Path(root) / "Questions" / f"OpenEnded_mscoco_{split}2014_questions.json"


def annotations_path(root: Path, split: str = DEFAULT_SPLIT) -> Path:
    return Path(root) / "Annotations" / f"mscoco_{split}2014_annotations.json"


def images_dir(root: Path, split: str = DEFAULT_SPLIT) -> Path:
    return Path(root) / "Images" / f"{split}2014"


def image_file_name(image_id: int, split: str = DEFAULT_SPLIT) -> str:
    return f"COCO_{split}2014_{image_id:012d}.jpg"


def plan_build(
    root: Path,
    split: str = DEFAULT_SPLIT,
    per_category: int | None = DEFAULT_PER_CATEGORY,
    seed: int = 0,
    option_counts: Mapping[str, int] | None = None,
) -> BuildPlan:
    """Read one TDIUC split under ``root`` and plan its build."""
    if split not in SPLITS:
        raise ValueError(f"TDIUC split {split!r} is invalid; expected one of {', '.join(SPLITS)}")

    root = Path(root)
    require_dir(root, "TDIUC folder", ROOT_FIX)
    require_dir(images_dir(root, split), f"TDIUC {split} images folder", ROOT_FIX)
    skips = SkipLog()
    questions = read_vqa_questions(
        questions_path(root, split),
        annotations_path(root, split),
        description=f"TDIUC {split}",
        fix=ROOT_FIX,
        skips=skips,
    )

    excluded: Counter = Counter()
    candidates = list(_candidates(questions, root, split, skips, excluded))
    if excluded:
        logger.info(f"left out TDIUC question types that MM-SY does not use: {dict(sorted(excluded.items()))}")
    return make_plan(
        source=SOURCE,
        split=split,
        seed=seed,
        per_category=per_category,
        categories=TDIUC_CATEGORIES,
        candidates=candidates,
        option_counts=option_counts,
        skips=skips,
        excluded=excluded,
    )


def _candidates(
    questions: list[VQAQuestion], root: Path, split: str, skips: SkipLog, excluded: Counter
) -> Iterator[Candidate]:
    folder = images_dir(root, split)
    for question in questions:
        if question.question_type in EXCLUDED_TYPES:
            excluded[question.question_type] += 1
            continue
        if question.question_type not in TDIUC_CATEGORIES:
            skips.skip(
                "unknown question type",
                f"question_id {question.question_id!r} has question_type {question.question_type!r}, "
                f"not one of TDIUC's labels",
            )
            continue

        yield Candidate(
            item_id=f"{SOURCE}-{split}-{question.question_id}",
            category=question.question_type,
            question=question.question,
            answer=question.answer,
            image_path=folder / image_file_name(_integer_image_id(question, questions_path(root, split)), split),
            source_id=str(question.question_id),
        )


def _integer_image_id(question: VQAQuestion, source_path: Path) -> int:
    image_id = question.image_id
    if isinstance(image_id, str) and image_id.isdigit():
        return int(image_id)
    if isinstance(image_id, int) and image_id >= 0:
        return image_id
    raise MalformedSourceError(
        f"{source_path}: question_id {question.question_id!r} has "
        f"image_id {image_id!r}, but TDIUC image files are named by a non-negative integer image_id"
    )


def iter_items(
    root: Path,
    split: str = DEFAULT_SPLIT,
    per_category: int | None = DEFAULT_PER_CATEGORY,
    seed: int = 0,
    option_counts: Mapping[str, int] | None = None,
    image_mode: str = "bytes",
    progress: bool = False,
) -> Iterator[Item]:
    """Yield the items of one TDIUC split; see ``BuildPlan.iter_items`` for ``image_mode``."""
    plan = plan_build(root, split, per_category, seed, option_counts)
    yield from plan.iter_items(image_mode=image_mode, progress=progress)
