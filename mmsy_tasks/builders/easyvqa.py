"""MM-SY items from easy-VQA, the data that the ``easy-vqa`` package ships.

easy-VQA 1.0 contains a train split (38,575 questions on 4,000 images) and a
test split (9,673 questions on 1,000 images) of 64x64 PNG images, each
showing one shape in one color. Each split folder has ``questions.json``, a
list of ``[question, answer, image_id]`` rows, and ``images/{image_id}.png``.
Its questions come in three kinds, which map to MM-SY categories:

- color: "what color is the circle?", "what is the color of the shape?"
- object_recognition: "what shape is in the image?", "what is the red shape?"
- object_presence: yes/no questions such as "is there a red shape?",
  "does the image not contain a circle?"

The test split is for evaluation. The train split is for mitigation and
model organism training, so no training item shares a question with the
benchmark.
"""

from collections.abc import Iterator, Mapping
from pathlib import Path

from mmsy_tasks.builders.errors import MalformedSourceError
from mmsy_tasks.builders.jsonio import malformed_row, read_json, require_dir
from mmsy_tasks.builders.plan import BuildPlan, Candidate, SkipLog, make_plan
from mmsy_tasks.options import is_yes_no_answer
from mmsy_tasks.records import EASYVQA_CATEGORIES, Item

SOURCE = "easyvqa"
SPLITS = ("train", "test")
DEFAULT_SPLIT = "test"
DEFAULT_PER_CATEGORY = 150

# easy-VQA has three shapes (circle, rectangle, triangle), too few for four options.
DEFAULT_OPTION_COUNTS = {"object_recognition": 3}

_YES_NO_OPENERS = frozenset({"is", "are", "does", "do"})


def default_root() -> Path:
    """Return the data folder of the installed ``easy_vqa`` package."""
    import easy_vqa

    return Path(easy_vqa.__file__).resolve().parent / "data"


def classify_question(question: str) -> str | None:
    """Return the MM-SY category of an easy-VQA question, or None for an unknown phrasing.

    A question that opens with a verb (is, does, ...) is a presence
    question. Otherwise a question naming "color" asks for the color, which
    covers "what is the color of the shape?", and one naming "shape" asks for
    the shape, which covers "what is the red shape?".
    """
    words = question.lower().rstrip("?").split()
    if not words:
        return None
    if words[0] in _YES_NO_OPENERS:
        return "object_presence"
    if words[0] != "what":
        return None
    if "color" in words:
        return "color"
    if "shape" in words:
        return "object_recognition"
    return None


def plan_build(
    split: str = DEFAULT_SPLIT,
    per_category: int | None = DEFAULT_PER_CATEGORY,
    seed: int = 0,
    root: Path | None = None,
    option_counts: Mapping[str, int] | None = None,
) -> BuildPlan:
    """Read one easy-VQA split and plan its build; ``root`` defaults to the package's data folder."""
    if split not in SPLITS:
        raise ValueError(f"easy-VQA split {split!r} is invalid; expected one of {', '.join(SPLITS)}")

    root = Path(root) if root is not None else default_root()
    fix = f"pass --root to a folder that holds train/ and test/ as the easy-vqa package ships them ({default_root()})"
    require_dir(root, "easy-VQA data folder", fix)
    split_dir = require_dir(root / split, f"easy-VQA {split} split", fix)
    images_dir = require_dir(split_dir / "images", f"easy-VQA {split} images folder", fix)
    questions_path = split_dir / "questions.json"
    rows = read_json(questions_path, f"easy-VQA {split} questions", fix)
    if not isinstance(rows, list):
        raise MalformedSourceError(
            f"{questions_path}: the top level is a JSON {type(rows).__name__}, "
            "but easy-VQA questions must be a list of [question, answer, image_id] rows"
        )

    skips = SkipLog()
    candidates = _candidates(rows, split, questions_path, images_dir, skips)
    return make_plan(
        source=SOURCE,
        split=split,
        seed=seed,
        per_category=per_category,
        categories=EASYVQA_CATEGORIES,
        candidates=candidates,
        option_counts=option_counts,
        default_option_counts=DEFAULT_OPTION_COUNTS,
        skips=skips,
    )


def _candidates(rows: list, split: str, questions_path: Path, images_dir: Path, skips: SkipLog) -> Iterator[Candidate]:
    for index, row in enumerate(rows):
        question, answer, image_id = _parse_row(row, index, questions_path)
        item_id = f"{SOURCE}-{split}-{index:05d}"

        category = classify_question(question)
        if category is None:
            skips.skip("unrecognised question", f"{item_id}: {question!r}")
            continue
        if (category == "object_presence") != is_yes_no_answer(answer):
            skips.skip("answer does not fit the question", f"{item_id}: {question!r} answered {answer!r}")
            continue

        yield Candidate(
            item_id=item_id,
            category=category,
            question=question[:1].upper() + question[1:],
            answer=answer,
            image_path=images_dir / f"{image_id}.png",
            source_id=str(index),
        )


def _parse_row(row, index: int, questions_path: Path) -> tuple[str, str, int]:
    if not isinstance(row, list) or len(row) != 3:
        raise malformed_row(questions_path, index, row, "is not a [question, answer, image_id] list")
    question, answer, image_id = row
    if not isinstance(question, str) or not question.strip():
        raise malformed_row(questions_path, index, row, "has no question text")
    if not isinstance(answer, str) or not answer.strip():
        raise malformed_row(questions_path, index, row, "has no answer text")
    if not isinstance(image_id, int) or isinstance(image_id, bool) or image_id < 0:
        raise malformed_row(questions_path, index, row, "has an image_id that is not a non-negative integer")
    return question.strip(), answer.strip(), image_id


def iter_items(
    split: str = DEFAULT_SPLIT,
    per_category: int | None = DEFAULT_PER_CATEGORY,
    seed: int = 0,
    root: Path | None = None,
    option_counts: Mapping[str, int] | None = None,
    image_mode: str = "bytes",
    progress: bool = False,
) -> Iterator[Item]:
    """Yield the items of one easy-VQA split; see ``BuildPlan.iter_items`` for ``image_mode``."""
    plan = plan_build(split, per_category, seed, root, option_counts)
    yield from plan.iter_items(image_mode=image_mode, progress=progress)


def load_items(split: str = DEFAULT_SPLIT, per_category: int | None = DEFAULT_PER_CATEGORY, seed: int = 0) -> list[Item]:
    """Return easy-VQA items with decoded RGB PIL images.

    ``per_category=None`` returns every question of the split. Items come
    ordered by category (color, object_recognition, object_presence), then
    by their position in the split's questions.json.
    """
    return list(iter_items(split, per_category, seed, image_mode="pil"))
