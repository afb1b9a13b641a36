"""Tests of bad input to ``mmsy build``: clear errors, or skips that are counted and logged."""

import json
import os

import datasets
import pytest
from fixtures import write_tdiuc_fixture
from fixtures.logs import captured_logs
from fixtures.source_data import draw_image

from mmsy_tasks.builders import cli, easyvqa, tdiuc, writer
from mmsy_tasks.builders.errors import (
    BuildError,
    DatasetDirError,
    MalformedSourceError,
    OutputExistsError,
    SourceNotFoundError,
)
from mmsy_tasks.builders.plan import BuildPlan
from mmsy_tasks.builders.writer import MANIFEST_NAME, load_dataset_dir, read_manifest, write_dataset_dir
from mmsy_tasks.options import TooFewAnswersError


@pytest.fixture
def tdiuc_root(tmp_path):
    return write_tdiuc_fixture(tmp_path / "tdiuc", per_category=6)


def _tdiuc_args(root, out, *extra):
    return ["--source", "tdiuc", "--root", str(root), "--out", str(out), "--no-progress", *extra]


def _annotations_path(root):
    return root / "Annotations" / "mscoco_val2014_annotations.json"


def _questions_path(root):
    return root / "Questions" / "OpenEnded_mscoco_val2014_questions.json"


def _edit_json(path, edit):
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def _image_of(root, question_id):
    questions = json.loads(_questions_path(root).read_text())["questions"]
    image_id = next(row["image_id"] for row in questions if row["question_id"] == question_id)
    return root / "Images" / "val2014" / f"COCO_val2014_{image_id:012d}.jpg"


def _write_easyvqa_root(root, rows):
    """Write an easy-VQA-layout test split with the given rows and one image per image id."""
    split = root / "test"
    (split / "images").mkdir(parents=True)
    (split / "questions.json").write_text(json.dumps(rows))
    for image_id in {row[2] for row in rows if isinstance(row, list) and len(row) == 3}:
        draw_image(image_id, size=64).save(split / "images" / f"{image_id}.png")
    return root


def _easyvqa_rows():
    rows = []
    for index, color in enumerate(["red", "blue", "green", "yellow", "gray"]):
        rows.append(["what color is the circle?", color, index])
        rows.append(["what shape is in the image?", ["circle", "rectangle", "triangle"][index % 3], index])
        rows.append(["is there a red shape?", "yes" if index % 2 else "no", index])
    return rows


# Missing source folders and files.


def test_tdiuc_missing_root_names_path_and_fix(tmp_path):
    missing = tmp_path / "nowhere"

    with pytest.raises(SourceNotFoundError) as raised:
        tdiuc.plan_build(missing)

    message = str(raised.value)
    assert f"TDIUC folder not found at {missing}" in message
    assert "pass --root to the TDIUC folder that holds Questions/, Annotations/ and Images/" in message


def test_tdiuc_missing_annotations_names_file(tdiuc_root):
    _annotations_path(tdiuc_root).unlink()

    with pytest.raises(SourceNotFoundError) as raised:
        tdiuc.plan_build(tdiuc_root)

    assert f"TDIUC val annotations not found at {_annotations_path(tdiuc_root)}" in str(raised.value)
    assert "--root" in str(raised.value)


def test_tdiuc_missing_images_folder_names_folder(tdiuc_root):
    images = tdiuc_root / "Images" / "val2014"
    images.rename(tdiuc_root / "Images" / "elsewhere")

    with pytest.raises(SourceNotFoundError, match=f"TDIUC val images folder not found at {images}"):
        tdiuc.plan_build(tdiuc_root)


def test_cli_missing_root_logs_error_and_returns_1(tmp_path):
    missing = tmp_path / "nowhere"

    with captured_logs("ERROR") as messages:
        code = cli.main(_tdiuc_args(missing, tmp_path / "out"))

    assert code == 1
    assert len(messages) == 1
    assert str(missing) in messages[0]
    assert "pass --root" in messages[0]
    assert not (tmp_path / "out").exists()


def test_cli_tdiuc_without_root_is_usage_error(tmp_path, capsys):
    assert cli.main(["--source", "tdiuc", "--out", str(tmp_path / "out")]) == 2

    assert "--source tdiuc needs --root" in capsys.readouterr().err


def test_easyvqa_missing_root_names_default(tmp_path):
    with pytest.raises(SourceNotFoundError) as raised:
        easyvqa.plan_build(root=tmp_path / "nowhere")

    assert f"easy-VQA data folder not found at {tmp_path / 'nowhere'}" in str(raised.value)
    assert str(easyvqa.default_root()) in str(raised.value)


# Malformed JSON.


def test_invalid_json_names_file_and_line(tdiuc_root):
    path = _questions_path(tdiuc_root)
    path.write_text('{"questions": [\n{"question_id": 1,\n')

    with pytest.raises(MalformedSourceError) as raised:
        tdiuc.plan_build(tdiuc_root)

    message = str(raised.value)
    assert str(path) in message
    assert "is not valid JSON (line 3" in message


def test_annotation_without_question_type_names_row(tdiuc_root):
    path = _annotations_path(tdiuc_root)
    _edit_json(path, lambda document: document["annotations"][7].pop("question_type"))

    with pytest.raises(MalformedSourceError) as raised:
        tdiuc.plan_build(tdiuc_root)

    message = str(raised.value)
    assert f"{path}: row 7 has no 'question_type'" in message


def test_question_without_id_names_row(tdiuc_root):
    path = _questions_path(tdiuc_root)
    _edit_json(path, lambda document: document["questions"][3].pop("question_id"))

    with pytest.raises(MalformedSourceError, match=rf"{path}: row 3 has no 'question_id'"):
        tdiuc.plan_build(tdiuc_root)


def test_question_that_is_not_object_names_row(tdiuc_root):
    path = _questions_path(tdiuc_root)
    _edit_json(path, lambda document: document["questions"].insert(2, "What is this?"))

    with pytest.raises(MalformedSourceError, match=rf"{path}: row 2 is not a JSON object"):
        tdiuc.plan_build(tdiuc_root)


def test_annotation_without_answers_names_row(tdiuc_root):
    path = _annotations_path(tdiuc_root)
    _edit_json(path, lambda document: document["annotations"][0].update(answers=[]))

    with pytest.raises(MalformedSourceError, match=rf"{path}: row 0 has no 'multiple_choice_answer', 'answer' or 'answers'"):
        tdiuc.plan_build(tdiuc_root)


def test_repeated_question_id_names_row(tdiuc_root):
    path = _questions_path(tdiuc_root)

    def repeat(document):
        document["questions"][5]["question_id"] = document["questions"][4]["question_id"]

    _edit_json(path, repeat)

    with pytest.raises(MalformedSourceError, match=rf"{path}: row 5 repeats question_id 1004"):
        tdiuc.plan_build(tdiuc_root)


def test_questions_file_without_list_names_key(tdiuc_root):
    path = _questions_path(tdiuc_root)
    path.write_text(json.dumps({"items": []}))

    with pytest.raises(MalformedSourceError, match=rf"{path} has no 'questions' list at the top level"):
        tdiuc.plan_build(tdiuc_root)


def test_files_of_different_splits_are_rejected(tdiuc_root):
    def renumber(document):
        for row in document["annotations"]:
            row["question_id"] += 100000

    _edit_json(_annotations_path(tdiuc_root), renumber)

    with pytest.raises(MalformedSourceError, match="check that both files belong to the same split"):
        tdiuc.plan_build(tdiuc_root)


def test_easyvqa_malformed_row_names_row(tmp_path):
    rows = _easyvqa_rows()
    rows[4] = ["what shape is in the image?", "circle"]
    root = _write_easyvqa_root(tmp_path / "easyvqa", rows)

    with pytest.raises(MalformedSourceError) as raised:
        easyvqa.plan_build(root=root, per_category=2)

    message = str(raised.value)
    assert f"{root / 'test' / 'questions.json'}: row 4 is not a [question, answer, image_id] list" in message


# Counted, logged skips.


def test_missing_image_is_skipped_counted_and_logged(tdiuc_root, tmp_path, capsys):
    image = _image_of(tdiuc_root, 3000)
    image.unlink()
    out = tmp_path / "out"

    with captured_logs("WARNING") as messages:
        assert cli.main(_tdiuc_args(tdiuc_root, out)) == 0

    manifest = read_manifest(out)
    # The fixture's color questions 3000 and 3001 share the missing image.
    assert manifest["skipped"] == {"missing image": 2}
    assert manifest["counts"]["color"] == 4
    assert manifest["counts"]["counting"] == 6
    assert any("missing image" in message and str(image) in message for message in messages)
    assert "skipped 2 questions (missing image 2)" in capsys.readouterr().out


def test_corrupt_image_is_skipped_and_replaced(tdiuc_root):
    image = _image_of(tdiuc_root, 4002)
    image.write_bytes(image.read_bytes()[:60])
    plan = tdiuc.plan_build(tdiuc_root, per_category=4)
    # Questions 4002 and 4003 share the truncated image. The two good
    # counting questions left over can replace them wherever they fall in
    # the selection order, and each one met before four good ones is skipped.
    order = [candidate.source_id for candidate in plan.candidates["counting"]]
    good_positions = [index for index, question_id in enumerate(order) if question_id not in ("4002", "4003")]
    expected_skips = sum(question_id in ("4002", "4003") for question_id in order[: good_positions[3]])

    with captured_logs("WARNING") as messages:
        items = list(plan.iter_items())

    counting_ids = {item.source_id for item in items if item.category == "counting"}
    assert len(counting_ids) == 4
    assert counting_ids.isdisjoint({"4002", "4003"})
    assert plan.skips.as_dict() == ({"corrupt image": expected_skips} if expected_skips else {})
    assert sum("corrupt image" in message and str(image) in message for message in messages) == expected_skips


def test_truncated_image_counted_in_manifest(tdiuc_root, tmp_path):
    image = _image_of(tdiuc_root, 4002)
    image.write_bytes(image.read_bytes()[:60])
    out = tmp_path / "out"

    assert cli.main(_tdiuc_args(tdiuc_root, out, "--per-category", "all")) == 0

    manifest = read_manifest(out)
    assert manifest["skipped"] == {"corrupt image": 2}
    assert manifest["counts"]["counting"] == 4


def test_corrupt_image_counted_when_selected(tdiuc_root):
    for question_id in range(3000, 3006):
        _image_of(tdiuc_root, question_id).write_bytes(b"not an image")

    plan = tdiuc.plan_build(tdiuc_root, per_category=6)
    items = list(plan.iter_items())

    assert plan.skips.as_dict() == {"corrupt image": 6}
    assert not any(item.category == "color" for item in items)


def test_unknown_question_type_is_counted(tdiuc_root):
    _edit_json(_annotations_path(tdiuc_root), lambda document: document["annotations"][0].update(question_type="colour"))

    with captured_logs("WARNING") as messages:
        plan = tdiuc.plan_build(tdiuc_root)

    assert plan.skips.as_dict() == {"unknown question type": 1}
    assert any("'colour'" in message for message in messages)


def test_question_without_annotation_is_counted(tdiuc_root):
    _edit_json(_annotations_path(tdiuc_root), lambda document: document["annotations"].pop(0))

    plan = tdiuc.plan_build(tdiuc_root)

    assert plan.skips.as_dict() == {"question without annotation": 1}
    assert len(plan.candidates["activity_recognition"]) == 5


def test_easyvqa_unrecognised_question_is_counted(tmp_path):
    rows = _easyvqa_rows() + [["how big is the circle?", "small", 0], ["is there a circle?", "red", 1]]
    root = _write_easyvqa_root(tmp_path / "easyvqa", rows)

    with captured_logs("WARNING") as messages:
        plan = easyvqa.plan_build(root=root, per_category=2)

    assert plan.skips.as_dict() == {"answer does not fit the question": 1, "unrecognised question": 1}
    assert any("how big is the circle?" in message for message in messages)


def test_skip_log_stops_logging_repeats(tdiuc_root):
    _edit_json(
        _annotations_path(tdiuc_root),
        lambda document: [row.update(question_type="colour") for row in document["annotations"][:12]],
    )

    with captured_logs("WARNING") as messages:
        plan = tdiuc.plan_build(tdiuc_root)

    assert plan.skips.as_dict() == {"unknown question type": 12}
    assert sum("unknown question type" in message for message in messages) == 6


def test_every_question_skipped_is_error(tdiuc_root, tmp_path):
    for image in (tdiuc_root / "Images" / "val2014").glob("*.jpg"):
        image.unlink()
    out = tmp_path / "out"

    with captured_logs("ERROR") as messages:
        assert cli.main(_tdiuc_args(tdiuc_root, out)) == 1

    assert "no items were built from tdiuc val" in messages[0]
    assert "'missing image': 60" in messages[0]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tdiuc"]


# Option counts.


def test_too_few_answers_names_category_count_and_fix(tmp_path):
    root = write_tdiuc_fixture(tmp_path / "tdiuc", per_category=3, question_types=("color", "counting"))

    with captured_logs("ERROR") as messages:
        code = cli.main(_tdiuc_args(root, tmp_path / "out"))

    assert code == 1
    assert "category 'color' has 3 distinct answers, fewer than its option count 4" in messages[0]
    assert "--option-count color=3" in messages[0]


def test_lower_option_count_fixes_too_few_answers(tmp_path):
    root = write_tdiuc_fixture(tmp_path / "tdiuc", per_category=3, question_types=("color", "counting"))
    out = tmp_path / "out"

    assert cli.main(_tdiuc_args(root, out, "--option-count", "color=3", "--option-count", "counting=3")) == 0
    assert read_manifest(out)["option_counts"]["color"] == 3


def test_too_few_answers_from_api(tmp_path):
    root = write_tdiuc_fixture(tmp_path / "tdiuc", per_category=2, question_types=("sport_recognition",))

    with pytest.raises(TooFewAnswersError, match="category 'sport_recognition' has 2 distinct answers"):
        tdiuc.plan_build(root)


def test_option_count_for_unknown_category_is_error(tdiuc_root, tmp_path):
    with captured_logs("ERROR") as messages:
        assert cli.main(_tdiuc_args(tdiuc_root, tmp_path / "out", "--option-count", "colour=3")) == 1

    assert "--option-count 'colour=3' names category 'colour'" in messages[0]


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_per_category_must_be_positive(value, tmp_path, capsys):
    assert cli.main(["--source", "easyvqa", "--out", str(tmp_path / "out"), "--per-category", value]) == 2

    assert f"{value!r} is invalid; pass a positive number of questions or 'all'" in capsys.readouterr().err


def test_split_must_fit_source(tmp_path, capsys):
    assert cli.main(["--source", "tdiuc", "--root", str(tmp_path), "--split", "test"]) == 2

    assert "--split 'test' is invalid for --source tdiuc; use one of val, train" in capsys.readouterr().err


# Output directories.


def test_existing_output_is_error_without_overwrite(tdiuc_root, tmp_path):
    out = tmp_path / "out"
    assert cli.main(_tdiuc_args(tdiuc_root, out, "--per-category", "2")) == 0
    before = (out / MANIFEST_NAME).read_bytes()

    with captured_logs("ERROR") as messages:
        assert cli.main(_tdiuc_args(tdiuc_root, out, "--per-category", "3")) == 1

    assert f"output directory {out} already exists; pass --overwrite" in messages[0]
    assert (out / MANIFEST_NAME).read_bytes() == before


def test_overwrite_replaces_dataset(tdiuc_root, tmp_path):
    out = tmp_path / "out"
    assert cli.main(_tdiuc_args(tdiuc_root, out, "--per-category", "2")) == 0

    assert cli.main(_tdiuc_args(tdiuc_root, out, "--per-category", "3", "--overwrite")) == 0

    assert read_manifest(out)["num_items"] == 30
    assert load_dataset_dir(out)["test"].num_rows == 30
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "tdiuc"]


def test_overwrite_keeps_unrelated_folder(tdiuc_root, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("keep me")

    with captured_logs("ERROR") as messages:
        assert cli.main(_tdiuc_args(tdiuc_root, out, "--overwrite")) == 1

    assert "has no manifest.json, so it is not an MM-SY dataset" in messages[0]
    assert (out / "todo.txt").read_text() == "keep me"


def test_interrupted_build_leaves_nothing(tdiuc_root, tmp_path, monkeypatch):
    out = tmp_path / "out"
    original = BuildPlan.iter_items

    def interrupted(self, *args, **kwargs):
        for index, item in enumerate(original(self, *args, **kwargs)):
            if index == 5:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(BuildPlan, "iter_items", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_dataset_dir(tdiuc.plan_build(tdiuc_root, per_category=2), out, progress=False)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["tdiuc"]


def test_interrupted_overwrite_keeps_old_dataset(tdiuc_root, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_dataset_dir(tdiuc.plan_build(tdiuc_root, per_category=2), out, progress=False)

    def fail_to_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", fail_to_save)
    with pytest.raises(OSError, match="disk full"):
        write_dataset_dir(tdiuc.plan_build(tdiuc_root, per_category=3), out, overwrite=True, progress=False)

    assert read_manifest(out)["num_items"] == 20
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "tdiuc"]


def test_output_that_is_file_is_error(tdiuc_root, tmp_path):
    out = tmp_path / "out"
    out.write_text("")

    with pytest.raises(OutputExistsError, match=f"output path {out} is a file"):
        write_dataset_dir(tdiuc.plan_build(tdiuc_root, per_category=2), out, overwrite=True, progress=False)


# Loading dataset directories.


def test_load_missing_directory_names_build_command(tmp_path):
    with pytest.raises(DatasetDirError) as raised:
        load_dataset_dir(tmp_path / "absent")

    message = str(raised.value)
    assert f"no MM-SY dataset directory at {tmp_path / 'absent'}" in message
    assert "mmsy build --source" in message


def test_load_directory_without_manifest_is_incomplete(tdiuc_root, tmp_path):
    out = tmp_path / "out"
    write_dataset_dir(tdiuc.plan_build(tdiuc_root, per_category=2), out, progress=False)
    (out / MANIFEST_NAME).unlink()

    with pytest.raises(DatasetDirError) as raised:
        load_dataset_dir(out)

    assert "has no manifest.json, so it is not a complete MM-SY dataset" in str(raised.value)
    assert f"--out {out} --overwrite" in str(raised.value)


def test_load_rejects_row_count_mismatch(tdiuc_root, tmp_path):
    out = tmp_path / "out"
    write_dataset_dir(tdiuc.plan_build(tdiuc_root, per_category=2), out, progress=False)
    _edit_json(out / MANIFEST_NAME, lambda manifest: manifest.update(num_items=21))

    with pytest.raises(DatasetDirError) as raised:
        load_dataset_dir(out)

    assert "has 20 rows but its manifest lists 21" in str(raised.value)
    assert f"mmsy build --source tdiuc --out {out} --overwrite" in str(raised.value)


def test_load_rejects_missing_arrow_data(tdiuc_root, tmp_path):
    out = tmp_path / "out"
    write_dataset_dir(tdiuc.plan_build(tdiuc_root, per_category=2), out, progress=False)
    for arrow_file in (out / "test").glob("*.arrow"):
        os.remove(arrow_file)

    with pytest.raises(DatasetDirError, match="cannot be loaded"):
        load_dataset_dir(out)


def test_load_rejects_foreign_manifest(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).write_text(json.dumps({"name": "something else"}))

    with pytest.raises(DatasetDirError, match="is not an MM-SY manifest"):
        load_dataset_dir(out)


def test_build_errors_share_base_class():
    for error_type in (DatasetDirError, MalformedSourceError, OutputExistsError, SourceNotFoundError):
        assert issubclass(error_type, BuildError)


def test_second_pass_does_not_double_skips(tdiuc_root):
    _edit_json(_annotations_path(tdiuc_root), lambda document: document["annotations"][0].update(question_type="colour"))
    for question_id in range(3000, 3006):
        _image_of(tdiuc_root, question_id).unlink(missing_ok=True)
    plan = tdiuc.plan_build(tdiuc_root)

    first = list(plan.iter_items())
    second = list(plan.iter_items())

    assert len(first) == len(second) == 53
    assert plan.skips.as_dict() == {"missing image": 6, "unknown question type": 1}


def test_concurrent_build_reports_existing_output(tdiuc_root, tmp_path, monkeypatch):
    out = tmp_path / "out"
    original_save = datasets.DatasetDict.save_to_disk

    def save_while_another_build_finishes(self, *args, **kwargs):
        original_save(self, *args, **kwargs)
        out.mkdir()
        (out / MANIFEST_NAME).write_text("{}")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", save_while_another_build_finishes)
    with pytest.raises(OutputExistsError, match=f"output directory {out} already exists"):
        write_dataset_dir(tdiuc.plan_build(tdiuc_root, per_category=2), out, progress=False)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "tdiuc"]


def test_output_written_during_rename_is_reported(tdiuc_root, tmp_path, monkeypatch):
    out = tmp_path / "out"
    original_save = datasets.DatasetDict.save_to_disk

    def save_while_another_build_finishes(self, *args, **kwargs):
        original_save(self, *args, **kwargs)
        out.mkdir()
        (out / MANIFEST_NAME).write_text("{}")

    # Skips the checks, so the other build's directory is met by the rename itself.
    monkeypatch.setattr(writer, "check_output_dir", lambda out, overwrite: None)
    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", save_while_another_build_finishes)
    with pytest.raises(OutputExistsError, match=f"output directory {out} was written by another build meanwhile"):
        write_dataset_dir(tdiuc.plan_build(tdiuc_root, per_category=2), out, progress=False)

    assert (out / MANIFEST_NAME).read_text() == "{}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "tdiuc"]
