"""Tests of the easy-VQA build on the data that the easy-vqa package ships."""

from collections import Counter
from pathlib import Path

import datasets
import easy_vqa
import pytest
from fixtures.invariants import assert_option_invariants
from PIL import Image

from mmsy_tasks import paths
from mmsy_tasks.builders import cli, easyvqa
from mmsy_tasks.builders.writer import load_dataset_dir, read_manifest
from mmsy_tasks.normalize import normalize_answer
from mmsy_tasks.records import EASYVQA_CATEGORIES

COLORS = {"red", "green", "blue", "black", "gray", "teal", "brown", "yellow"}
SHAPES = {"circle", "rectangle", "triangle"}
OPTION_COUNTS = {"color": 4, "object_recognition": 3, "object_presence": 2}


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> tuple[Path, Path]:
    """Two full builds of the easy-VQA test split into separate folders."""
    folder = tmp_path_factory.mktemp("easyvqa")
    first, second = folder / "first", folder / "second"
    assert cli.main(["--source", "easyvqa", "--out", str(first), "--no-progress"]) == 0
    assert cli.main(["--source", "easyvqa", "--out", str(second), "--no-progress"]) == 0
    return first, second


@pytest.fixture(scope="module")
def built_rows(builds) -> list[dict]:
    return list(load_dataset_dir(builds[0])["test"])


@pytest.fixture(scope="module")
def source_answers() -> list[str]:
    _, answers, _ = easy_vqa.get_test_questions()
    return answers


def test_build_has_150_per_category(built_rows):
    counts = Counter(row["category"] for row in built_rows)

    assert len(built_rows) == 450
    assert counts == {"color": 150, "object_recognition": 150, "object_presence": 150}


def test_build_manifest_records_build(builds):
    manifest = read_manifest(builds[0])

    assert manifest["source"] == "easyvqa"
    assert manifest["split"] == "test"
    assert manifest["seed"] == 0
    assert manifest["num_items"] == 450
    assert manifest["counts"] == {"color": 150, "object_recognition": 150, "object_presence": 150}
    assert manifest["option_counts"] == OPTION_COUNTS
    assert manifest["skipped"] == {}


def test_rebuild_is_byte_identical(builds):
    first, second = builds
    first_files = sorted(path.relative_to(first) for path in first.rglob("*") if path.is_file())
    second_files = sorted(path.relative_to(second) for path in second.rglob("*") if path.is_file())

    assert first_files == second_files
    assert Path("test/data-00000-of-00001.arrow") in first_files
    for relative in first_files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative


def test_images_load_as_pil(built_rows):
    for row in built_rows:
        assert isinstance(row["image"], Image.Image), row["id"]
        assert row["image"].size == (64, 64), row["id"]


def test_images_embedded_without_source_path(builds):
    split = datasets.load_from_disk(str(builds[0]))["test"].cast_column("image", datasets.Image(decode=False))

    for value in split["image"]:
        assert value["path"] is None
        assert value["bytes"].startswith(b"\x89PNG")


def test_every_row_keeps_option_invariants(built_rows, source_answers):
    for row in built_rows:
        source_answer = source_answers[int(row["source_id"])]
        assert_option_invariants(row, source_answer, OPTION_COUNTS[row["category"]])


def test_answers_fit_their_category(built_rows, source_answers):
    answers_by_category = {category: set() for category in EASYVQA_CATEGORIES}
    for row in built_rows:
        answers_by_category[row["category"]].add(normalize_answer(source_answers[int(row["source_id"])]))

    assert answers_by_category["color"] == COLORS
    assert answers_by_category["object_recognition"] == SHAPES
    assert answers_by_category["object_presence"] == {"yes", "no"}


def test_rows_keep_source_question(built_rows):
    texts, _, _ = easy_vqa.get_test_questions()
    for row in built_rows:
        source_text = texts[int(row["source_id"])]
        assert row["question"].lower() == source_text.lower(), row["id"]
        assert row["question"][0].isupper(), row["id"]
        assert row["id"] == f"easyvqa-test-{int(row['source_id']):05d}"


@pytest.mark.parametrize(
    ("question", "category"),
    [
        ("what color is the circle?", "color"),
        ("what is the color of the shape?", "color"),
        ("what shape is in the image?", "object_recognition"),
        ("what is the red shape?", "object_recognition"),
        ("what shape does the image contain?", "object_recognition"),
        ("is there a red shape?", "object_presence"),
        ("is there a circle?", "object_presence"),
        ("does the image not contain a gray shape?", "object_presence"),
        ("is no triangle present?", "object_presence"),
        ("how big is the shape?", None),
        ("", None),
    ],
)
def test_classify_question(question, category):
    assert easyvqa.classify_question(question) == category


def test_load_items_matches_built_rows(built_rows):
    items = easyvqa.load_items()

    assert [item.id for item in items] == [row["id"] for row in built_rows]
    assert [item.options for item in items] == [row["options"] for row in built_rows]
    assert [item.wrong_idx for item in items] == [row["wrong_idx"] for row in built_rows]
    assert all(isinstance(item.image, Image.Image) and item.image.mode == "RGB" for item in items)


def test_load_items_train_every_question():
    items = easyvqa.load_items(split="train", per_category=None)
    counts = Counter(item.category for item in items)

    # easy-VQA 1.0's README lists 38,575 train questions, 28,407 of them yes/no.
    assert len(items) == 38575
    assert counts["object_presence"] == 28407
    assert counts["color"] + counts["object_recognition"] == 38575 - 28407
    assert len({item.id for item in items}) == len(items)
    assert all(item.id.startswith("easyvqa-train-") for item in items)
    assert all(isinstance(item.image, Image.Image) for item in items[:: len(items) // 50])


def test_load_items_seed_changes_selection():
    seed_zero = {item.id for item in easyvqa.load_items(per_category=20, seed=0)}
    seed_one = {item.id for item in easyvqa.load_items(per_category=20, seed=1)}

    assert len(seed_zero) == 60
    assert len(seed_one) == 60
    assert seed_zero != seed_one


def test_default_out_is_under_mmsy_home(capsys):
    assert cli.main(["--source", "easyvqa", "--per-category", "2", "--no-progress"]) == 0

    out = paths.default_dataset_dir("easyvqa")
    assert read_manifest(out)["num_items"] == 6
    assert str(out) in capsys.readouterr().out


def test_train_split_default_out_is_separate():
    assert cli.main(["--source", "easyvqa", "--split", "train", "--per-category", "2", "--no-progress"]) == 0

    manifest = read_manifest(paths.default_dataset_dir("easyvqa-train"))
    assert manifest["split"] == "train"
    assert manifest["num_items"] == 6
