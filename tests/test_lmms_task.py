"""Loading the MM-SY task folder with lmms-eval's TaskManager: names, data location, errors."""

import pytest
from lmms_eval.api.group import ConfigurableGroup
from lmms_eval.tasks import TaskManager
from task_fixtures import tdiuc_items, write_dataset_dir

from mmsy_tasks import paths, protocol, task_data
from mmsy_tasks.builders import writer
from mmsy_tasks.lmms_task import MMSYTask
from mmsy_tasks.records import EASYVQA_CATEGORIES, TDIUC_CATEGORIES
from mmsy_tasks.task_data import DatasetNotFoundError


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MMSY_HOME", str(home))
    monkeypatch.delenv("MMSY_PROMPT", raising=False)
    return home


@pytest.fixture(scope="module")
def task_manager():
    # Only the MM-SY folder is indexed, so each test does not scan lmms-eval's own tasks.
    return TaskManager("WARNING", include_path=str(paths.task_folder()), include_defaults=False)


def load(task_manager, name):
    return task_manager.load_task_or_group([name], task_type="chat")


def test_task_index_lists_groups_and_subtasks(task_manager):
    assert {"mmsy", "mmsy_tdiuc_prefilled", "mmsy_easyvqa_live", "mmsy_easyvqa_prefilled"} <= set(task_manager.all_groups)
    subtasks = {name for name in task_manager.all_tasks if name.startswith("mmsy_") and name.count("_") >= 3}
    expected = {
        f"mmsy_{source}_{protocol_name}_{category}"
        for source, categories in (("tdiuc", TDIUC_CATEGORIES), ("easyvqa", EASYVQA_CATEGORIES))
        for protocol_name in protocol.PROTOCOLS
        for category in categories
    }
    assert expected <= subtasks


def test_tasks_mmsy_is_tdiuc_live(task_manager, empty_home):
    write_dataset_dir(empty_home / "data" / "tdiuc", tdiuc_items(TDIUC_CATEGORIES), "tdiuc")

    loaded = load(task_manager, "mmsy")

    (group, subtasks), = loaded.items()
    assert isinstance(group, ConfigurableGroup)
    assert group.group_name == "mmsy"
    assert sorted(subtasks) == sorted(f"mmsy_tdiuc_live_{category}" for category in TDIUC_CATEGORIES)
    for name, task in subtasks.items():
        assert isinstance(task, MMSYTask)
        assert task.OUTPUT_TYPE == "generate_until_multi_round"
        assert task.config.dataset_path == str(empty_home / "data" / "tdiuc")
        docs = task.test_docs()
        assert len(docs) == 3
        assert set(docs["category"]) == {task.config.dataset_name}
        assert set(docs["protocol"]) == {"live"}


def test_tasks_mmsy_without_tdiuc_names_build_command(task_manager, empty_home):
    with pytest.raises(DatasetNotFoundError) as raised:
        load(task_manager, "mmsy")

    message = str(raised.value)
    assert str(empty_home / "data" / "tdiuc") in message
    assert "mmsy build --source tdiuc --root /path/to/TDIUC" in message
    assert "MMSY_HOME" in message


def test_easyvqa_task_builds_dataset_on_first_use(task_manager, empty_home):
    loaded = load(task_manager, "mmsy_easyvqa_prefilled_color")

    task = loaded["mmsy_easyvqa_prefilled_color"]
    directory = empty_home / "data" / "easyvqa"
    assert (directory / "manifest.json").is_file()
    assert task.config.dataset_path == str(directory)
    docs = task.test_docs()
    assert len(docs) == 150 * 7
    assert set(docs["category"]) == {"color"}
    assert docs[0]["image"].size == (64, 64)
    assert "image" not in task.dataset_no_image["test"].column_names
    assert not list(directory.rglob("cache-*.arrow"))


def test_task_reads_scattered_category_rows(task_manager, empty_home):
    items = tdiuc_items(("color", "counting")) + tdiuc_items(("color",))
    items[2].id = "tdiuc-color-second"
    directory = write_dataset_dir(empty_home / "data" / "tdiuc", items, "tdiuc")

    task = load(task_manager, "mmsy_tdiuc_live_color")["mmsy_tdiuc_live_color"]

    docs = task.test_docs()
    assert docs["id"] == ["tdiuc-color"] * 3 + ["tdiuc-color-second"] * 3
    assert docs[5]["image"].size == (24, 24)
    assert not list(directory.rglob("cache-*.arrow"))


def test_task_reads_mitigation_prompt_from_env(task_manager, empty_home, monkeypatch):
    write_dataset_dir(empty_home / "data" / "tdiuc", tdiuc_items(("color",)), "tdiuc")
    monkeypatch.setenv("MMSY_PROMPT", "mitigation")

    task = load(task_manager, "mmsy_tdiuc_prefilled_color")["mmsy_tdiuc_prefilled_color"]

    doc = task.test_docs()[1]
    assert doc["prompt"] == "mitigation"
    messages = task.doc_to_messages(doc)
    assert [message["role"] for message in messages] == ["system", "user", "assistant", "user"]


def test_task_rejects_category_without_items(task_manager, empty_home):
    write_dataset_dir(empty_home / "data" / "tdiuc", tdiuc_items(("color",)), "tdiuc")

    with pytest.raises(ValueError, match="no items of category 'counting'.*mmsy build --source tdiuc"):
        load(task_manager, "mmsy_tdiuc_live_counting")


def test_easyvqa_build_race_uses_finished_directory(empty_home, monkeypatch):
    directory = empty_home / "data" / "easyvqa"

    def build_finished_by_another_process(plan, out):
        write_dataset_dir(out, tdiuc_items(("color",)), "easyvqa")
        raise OSError(39, "Directory not empty", str(out))

    monkeypatch.setattr(writer, "write_dataset_dir", build_finished_by_another_process)

    assert task_data.ensure_dataset_dir("easyvqa") == directory
    assert len(task_data.load_items("easyvqa", "color")) == 1


def test_easyvqa_build_failure_is_raised(empty_home, monkeypatch):
    def failing_build(plan, out):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "write_dataset_dir", failing_build)

    with pytest.raises(OSError, match="No space left"):
        task_data.ensure_dataset_dir("easyvqa")
