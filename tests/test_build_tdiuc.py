"""Tests of the TDIUC build on a TDIUC-layout folder written by the tests."""

import json
import shutil
from collections import Counter

import datasets
import pytest
from fixtures import write_tdiuc_fixture
from fixtures.invariants import assert_option_invariants
from PIL import Image

from mmsy_tasks.builders import cli, tdiuc
from mmsy_tasks.builders.writer import load_dataset_dir, read_manifest
from mmsy_tasks.records import TDIUC_CATEGORIES


@pytest.fixture(scope="module")
def tdiuc_root(tmp_path_factory):
    return write_tdiuc_fixture(tmp_path_factory.mktemp("tdiuc"), per_category=6)


@pytest.fixture(scope="module")
def source_answers(tdiuc_root) -> dict[str, str]:
    annotations = json.loads((tdiuc_root / "Annotations" / "mscoco_val2014_annotations.json").read_text())
    return {str(row["question_id"]): row["answers"][0]["answer"] for row in annotations["annotations"]}


@pytest.fixture(scope="module")
def built(tdiuc_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "tdiuc"
    assert cli.main(["--source", "tdiuc", "--root", str(tdiuc_root), "--out", str(out), "--per-category", "4", "--no-progress"]) == 0
    return out


def test_build_takes_per_category_from_ten_categories(built):
    rows = list(load_dataset_dir(built)["test"])
    counts = Counter(row["category"] for row in rows)

    assert counts == {category: 4 for category in TDIUC_CATEGORIES}
    assert all(row["source"] == "tdiuc" for row in rows)


def test_build_manifest_counts_excluded_types(built):
    manifest = read_manifest(built)

    assert manifest["num_items"] == 40
    assert manifest["split"] == "val"
    assert manifest["per_category"] == 4
    assert manifest["excluded"] == {"absurd": 6, "utility_affordance": 6}
    assert manifest["skipped"] == {}
    assert manifest["option_counts"]["object_presence"] == 2
    assert manifest["option_counts"]["counting"] == 4


def test_every_row_keeps_option_invariants(built, source_answers):
    rows = list(load_dataset_dir(built)["test"])

    for row in rows:
        assert_option_invariants(row, source_answers[row["source_id"]], 4)


def test_options_merge_answer_spellings(tdiuc_root):
    plan = tdiuc.plan_build(tdiuc_root, per_category=None)

    # The fixture's counting answers are 2, 3, 4, 5, two and 1.
    assert plan.pools["counting"].answers == ("1", "2", "3", "4", "5")
    assert plan.pools["object_recognition"].answers == ("bus", "cat", "dog", "the horse", "pizza")
    assert plan.pools["color"].answers == ("blue", "green", "red", "white", "yellow")


def test_build_survives_removal_of_source(tdiuc_root, tmp_path):
    root = shutil.copytree(tdiuc_root, tmp_path / "source")
    out = tmp_path / "out"
    assert cli.main(["--source", "tdiuc", "--root", str(root), "--out", str(out), "--per-category", "2", "--no-progress"]) == 0

    shutil.rmtree(root)
    rows = list(load_dataset_dir(out)["test"])

    assert len(rows) == 20
    for row in rows:
        assert isinstance(row["image"], Image.Image)
        assert row["image"].size == (32, 32)


def test_images_embedded_as_jpeg_bytes(built, tdiuc_root):
    split = datasets.load_from_disk(str(built))["test"].cast_column("image", datasets.Image(decode=False))
    first = split[0]
    source_image = next((tdiuc_root / "Images" / "val2014").glob("*.jpg"))

    assert first["image"]["path"] is None
    assert first["image"]["bytes"].startswith(b"\xff\xd8")
    assert str(tdiuc_root) not in json.dumps(split.to_dict(), default=str)
    assert source_image.exists()


def test_rebuild_with_same_seed_is_identical(tdiuc_root):
    first = [item.to_row() for item in tdiuc.iter_items(tdiuc_root, per_category=3, seed=5)]
    second = [item.to_row() for item in tdiuc.iter_items(tdiuc_root, per_category=3, seed=5)]

    assert first == second


def test_seed_changes_selection_and_options(tdiuc_root):
    seed_zero = {item.id: item.options for item in tdiuc.iter_items(tdiuc_root, per_category=3, seed=0)}
    seed_one = {item.id: item.options for item in tdiuc.iter_items(tdiuc_root, per_category=3, seed=1)}

    assert set(seed_zero) != set(seed_one)
    shared = set(seed_zero) & set(seed_one)
    assert any(seed_zero[item_id] != seed_one[item_id] for item_id in shared)


def test_options_do_not_depend_on_per_category(tdiuc_root):
    small = {item.id: item.to_row() for item in tdiuc.iter_items(tdiuc_root, per_category=2, seed=0)}
    large = {item.id: item.to_row() for item in tdiuc.iter_items(tdiuc_root, per_category=5, seed=0)}

    assert set(small) < set(large)
    for item_id, row in small.items():
        assert row == large[item_id]


def test_items_follow_source_order_within_category(tdiuc_root):
    items = list(tdiuc.iter_items(tdiuc_root, per_category=4, seed=0))
    categories = [item.category for item in items]

    assert categories == sorted(categories, key=TDIUC_CATEGORIES.index)
    for category in TDIUC_CATEGORIES:
        question_ids = [int(item.source_id) for item in items if item.category == category]
        assert question_ids == sorted(question_ids)


def test_train_split_reads_train_files(tmp_path):
    root = write_tdiuc_fixture(tmp_path / "tdiuc", per_category=4, split="train")

    items = list(tdiuc.iter_items(root, split="train", per_category=2))

    assert len(items) == 20
    assert all(item.id.startswith("tdiuc-train-") for item in items)


def test_question_type_subset_builds_present_categories(tmp_path):
    root = write_tdiuc_fixture(tmp_path / "tdiuc", per_category=5, question_types=("color", "counting", "absurd"))
    out = tmp_path / "out"

    assert cli.main(["--source", "tdiuc", "--root", str(root), "--out", str(out), "--no-progress"]) == 0
    manifest = read_manifest(out)

    assert manifest["counts"]["color"] == 5
    assert manifest["counts"]["counting"] == 5
    assert manifest["counts"]["sport_recognition"] == 0
    assert manifest["excluded"] == {"absurd": 5}
