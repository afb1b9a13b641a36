"""Tests of the VQA-format JSON build with a question-type mapping."""

import json
from collections import Counter

import pytest
from fixtures import write_vqa_fixture
from fixtures.invariants import assert_option_invariants

from mmsy_tasks.builders import cli, vqa_json
from mmsy_tasks.builders.errors import InvalidOptionError
from mmsy_tasks.builders.writer import load_dataset_dir, read_manifest

MAPPING_YAML = "what color is the: color\nhow many: counting\nis there a: object_presence\n"


@pytest.fixture(scope="module")
def vqa_files(tmp_path_factory):
    return write_vqa_fixture(tmp_path_factory.mktemp("vqa"), per_type=5)


def _majority_answers(vqa_files) -> dict[str, str]:
    # The fixture gives each question seven votes for its answer and three
    # for another, so the first vote is the majority answer.
    annotations = json.loads(vqa_files["annotations"].read_text())["annotations"]
    return {str(row["question_id"]): row["answers"][0]["answer"] for row in annotations}


def _build_args(vqa_files, out, *extra):
    return [
        "--source", "vqa-json",
        "--root", str(vqa_files["questions"].parent),
        "--questions", vqa_files["questions"].name,
        "--annotations", vqa_files["annotations"].name,
        "--images", vqa_files["images"].name,
        "--image-pattern", "{image_id}.png",
        "--out", str(out),
        "--no-progress",
        *extra,
    ]


def test_build_with_yaml_mapping(vqa_files, tmp_path):
    mapping = tmp_path / "types.yaml"
    mapping.write_text(MAPPING_YAML)
    out = tmp_path / "out"

    assert cli.main(_build_args(vqa_files, out, "--mapping", str(mapping))) == 0
    rows = list(load_dataset_dir(out)["test"])
    manifest = read_manifest(out)

    assert Counter(row["category"] for row in rows) == {"color": 5, "counting": 5, "object_presence": 5}
    assert manifest["source"] == "vqa-json"
    assert manifest["counts"] == {"color": 5, "counting": 5, "object_presence": 5}
    assert manifest["skipped"] == {"unmapped question type": 5}
    answers = _majority_answers(vqa_files)
    for row in rows:
        assert_option_invariants(row, answers[row["source_id"]], 4)


def test_build_with_map_flags_and_json_mapping(vqa_files, tmp_path):
    mapping = tmp_path / "types.json"
    mapping.write_text(json.dumps({"what color is the": "color", "what is the man": None}))
    out = tmp_path / "out"

    args = _build_args(vqa_files, out, "--mapping", str(mapping), "--map", "how many=counting", "--option-count", "3")
    assert cli.main(args) == 0
    manifest = read_manifest(out)

    assert manifest["counts"] == {"color": 5, "counting": 5}
    assert manifest["option_counts"] == {"color": 3, "counting": 3}
    assert manifest["excluded"] == {"what is the man": 5}
    assert manifest["skipped"] == {"unmapped question type": 5}
    rows = list(load_dataset_dir(out)["test"])
    assert all(len(row["options"]) == 3 for row in rows)


def test_majority_answer_is_correct_option(vqa_files):
    plan = vqa_json.plan_build(
        vqa_files["questions"],
        vqa_files["annotations"],
        vqa_files["images"],
        {"how many": "counting"},
        image_pattern="{image_id}.png",
    )
    items = list(plan.iter_items())
    answers = _majority_answers(vqa_files)

    assert len(items) == 5
    for item in items:
        assert item.options[item.answer_idx] == plan.pools["counting"].spelling_of(answers[item.source_id])
    # "four" is the fixture's only spelling of 4, so the pool keeps it.
    assert plan.pools["counting"].answers == ("1", "2", "3", "four", "5")


def test_summary_lists_unmapped_types(vqa_files, tmp_path, capsys):
    out = tmp_path / "out"

    assert cli.main(_build_args(vqa_files, out, "--map", "is there a=object_presence")) == 0
    closing_line = capsys.readouterr().out

    assert f"wrote 5 items to {out}" in closing_line
    assert "object_presence 5" in closing_line
    assert "skipped 15 questions (unmapped question type 15)" in closing_line


def test_parse_map_flags_keeps_spaces_and_equals():
    mapping = vqa_json.parse_map_flags(["what color is the=color", "a=b type=counting", "absurd="])

    assert mapping == {"what color is the": "color", "a=b type": "counting", "absurd": None}


def test_mapping_rejects_unknown_category(tmp_path):
    mapping = tmp_path / "types.yaml"
    mapping.write_text("how many: number\n")

    with pytest.raises(InvalidOptionError) as raised:
        vqa_json.read_mapping(mapping)

    message = str(raised.value)
    assert str(mapping) in message
    assert "'how many' maps to 'number'" in message
    assert "counting" in message


def test_mapping_rejects_non_object_file(tmp_path):
    mapping = tmp_path / "types.yaml"
    mapping.write_text("- color\n- counting\n")

    with pytest.raises(InvalidOptionError, match="it must map each question type"):
        vqa_json.read_mapping(mapping)


def test_map_flag_without_equals_is_rejected():
    with pytest.raises(InvalidOptionError, match="--map 'how many' is invalid; write it as QUESTION_TYPE=CATEGORY"):
        vqa_json.parse_map_flags(["how many"])


def test_mapping_that_uses_nothing_is_rejected():
    with pytest.raises(InvalidOptionError, match="maps no question type to an MM-SY category"):
        vqa_json.check_mapping({"absurd": None}, "--map")


def test_bad_image_pattern_names_pattern(vqa_files):
    with pytest.raises(InvalidOptionError) as raised:
        vqa_json.plan_build(
            vqa_files["questions"],
            vqa_files["annotations"],
            vqa_files["images"],
            {"how many": "counting"},
            image_pattern="{image}.png",
        )

    assert "--image-pattern '{image}.png'" in str(raised.value)
    assert "{image_id}" in str(raised.value)


def test_missing_vqa_json_flags_is_usage_error(tmp_path, capsys):
    assert cli.main(["--source", "vqa-json", "--out", str(tmp_path / "out")]) == 2

    message = capsys.readouterr().err
    assert "--questions, --annotations, --images, --mapping or --map" in message

