"""Reading VQA-format question and annotation JSON, as VQA v1/v2 and TDIUC ship it.

The questions file is ``{"questions": [{"question_id", "image_id",
"question"}, ...]}`` and the annotations file is ``{"annotations":
[{"question_id", "answers": [{"answer": ...}, ...], ...}, ...]}``; a bare
list at the top level is accepted too. An annotation's answer is its
``multiple_choice_answer`` when present, else its ``answer``, else the most
frequent of its ``answers`` after normalisation (TDIUC gives one answer,
VQA v2 ten). The question type is read from ``type_field`` of the
annotation, or of the question when the annotation lacks it.
"""

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmsy_tasks.builders.errors import MalformedSourceError
from mmsy_tasks.builders.jsonio import malformed_row, read_json
from mmsy_tasks.builders.plan import SkipLog
from mmsy_tasks.options import cached_normalize


@dataclass(frozen=True)
class VQAQuestion:
    """One question joined with its annotation."""

    question_id: int | str
    image_id: int | str
    question: str
    answer: str
    question_type: str


def read_vqa_questions(
    questions_path: Path,
    annotations_path: Path,
    *,
    description: str,
    fix: str,
    skips: SkipLog,
    type_field: str = "question_type",
) -> list[VQAQuestion]:
    """Join the questions and annotations files by ``question_id``, in the questions file's order.

    A malformed row raises ``MalformedSourceError`` naming the file and the
    row. A question without an annotation, an annotation without a question
    and an answer that is empty after normalisation are skipped and counted
    in ``skips``.
    """
    questions = _rows(read_json(questions_path, f"{description} questions", fix), "questions", questions_path)
    annotations = _rows(read_json(annotations_path, f"{description} annotations", fix), "annotations", annotations_path)

    annotation_by_id: dict[Any, tuple[int, dict]] = {}
    for index, annotation in enumerate(annotations):
        question_id = _question_id(annotation, index, annotations_path)
        if question_id in annotation_by_id:
            raise malformed_row(annotations_path, index, annotation, f"repeats question_id {question_id!r}")
        annotation_by_id[question_id] = (index, annotation)

    joined = list(_join(questions, questions_path, annotation_by_id, annotations_path, type_field, skips))
    for question_id in annotation_by_id:
        skips.skip("annotation without question", f"question_id {question_id!r} of {annotations_path}")
    if annotations and questions and not joined:
        raise MalformedSourceError(
            f"no question in {questions_path} has an annotation in {annotations_path}; "
            "check that both files belong to the same split"
        )
    return joined


def _join(
    questions: list,
    questions_path: Path,
    annotation_by_id: dict[Any, tuple[int, dict]],
    annotations_path: Path,
    type_field: str,
    skips: SkipLog,
) -> Iterator[VQAQuestion]:
    # Pops each matched annotation, so that the ones left over afterwards
    # are the annotations without a question.
    seen_ids: set = set()
    for index, question in enumerate(questions):
        question_id = _question_id(question, index, questions_path)
        if question_id in seen_ids:
            raise malformed_row(questions_path, index, question, f"repeats question_id {question_id!r}")
        seen_ids.add(question_id)
        image_id = _image_id(question, index, questions_path)
        text = question.get("question")
        if not isinstance(text, str) or not text.strip():
            raise malformed_row(questions_path, index, question, "has no 'question' text")

        if question_id not in annotation_by_id:
            skips.skip("question without annotation", f"question_id {question_id!r} of {questions_path}")
            continue
        annotation_index, annotation = annotation_by_id.pop(question_id)

        answer = _answer(annotation, annotation_index, annotations_path)
        if not cached_normalize(answer):
            skips.skip("empty answer", f"question_id {question_id!r}: answer {answer!r} in {annotations_path}")
            continue
        question_type = _question_type(annotation, question, type_field, annotation_index, annotations_path)
        yield VQAQuestion(question_id, image_id, text.strip(), answer.strip(), question_type)


def _rows(document: Any, key: str, path: Path) -> list:
    if isinstance(document, dict) and isinstance(document.get(key), list):
        rows = document[key]
    elif isinstance(document, list):
        rows = document
    else:
        raise MalformedSourceError(
            f"{path} has no {key!r} list at the top level; a VQA-format file is "
            f'{{"{key}": [...]}} or a bare list of {key}'
        )
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise malformed_row(path, index, row, "is not a JSON object")
    return rows


def _question_id(row: dict, index: int, path: Path) -> int | str:
    question_id = row.get("question_id")
    if isinstance(question_id, bool) or not isinstance(question_id, (int, str)) or question_id == "":
        raise malformed_row(path, index, row, "has no 'question_id' (an integer or a string)")
    return question_id


def _image_id(row: dict, index: int, path: Path) -> int | str:
    image_id = row.get("image_id")
    if isinstance(image_id, bool) or not isinstance(image_id, (int, str)) or image_id == "":
        raise malformed_row(path, index, row, "has no 'image_id' (an integer or a string)")
    return image_id


def _answer(annotation: dict, index: int, path: Path) -> str:
    for key in ("multiple_choice_answer", "answer"):
        if isinstance(annotation.get(key), str):
            return annotation[key]

    answers = annotation.get("answers")
    if not isinstance(answers, list) or not answers:
        raise malformed_row(path, index, annotation, "has no 'multiple_choice_answer', 'answer' or 'answers'")
    texts = []
    for entry in answers:
        text = entry.get("answer") if isinstance(entry, dict) else entry
        if not isinstance(text, str):
            raise malformed_row(path, index, annotation, "has an entry of 'answers' without 'answer' text")
        texts.append(text)
    return _majority_answer(texts)


def _majority_answer(texts: list[str]) -> str:
    # The most frequent normalised answer wins and ties go to the one given
    # first; the answer keeps the spelling of its first occurrence.
    votes = Counter(cached_normalize(text) for text in texts)
    first_spelling: dict[str, str] = {}
    for text in texts:
        first_spelling.setdefault(cached_normalize(text), text)
    winner = max(first_spelling, key=lambda normalized: votes[normalized])
    return first_spelling[winner]


def _question_type(annotation: dict, question: dict, type_field: str, index: int, path: Path) -> str:
    value = annotation.get(type_field, question.get(type_field))
    if not isinstance(value, str) or not value.strip():
        raise malformed_row(
            path,
            index,
            annotation,
            f"has no {type_field!r} (the question type) on the annotation or its question",
        )
    return value.strip()
