"""Tests of ``mmsy eval``: argument handling, failure messages, and in-process lmms-eval runs.

The runs use the scripted chat models of ``scripted_chat_model``, registered
in this process, on a small easy-VQA dataset written by the test.
"""

import json

import pytest
import tenacity
from task_fixtures import easyvqa_items, lmms_eval_in_process, write_dataset_dir  # noqa: F401  (fixture)

from mmsy_tasks import eval_cli, paths, protocol
from mmsy_tasks.task_data import DatasetNotFoundError


@pytest.fixture
def easyvqa_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MMSY_HOME", str(home))
    monkeypatch.delenv("MMSY_PROMPT", raising=False)
    write_dataset_dir(home / "data" / "easyvqa", easyvqa_items(per_category=2), "easyvqa")
    return home


def results_of(output_path):
    (results_file,) = output_path.rglob("*_results.json")
    return json.loads(results_file.read_text())["results"]


def samples_of(output_path, task):
    (samples_file,) = output_path.rglob(f"*_samples_{task}.jsonl")
    return [json.loads(line) for line in samples_file.read_text().splitlines()]


# Arguments


def test_help_lists_groups_and_flag(capsys):
    assert eval_cli.main(["--help"]) == 0

    output = capsys.readouterr().out
    assert "--mitigation-prompt" in output
    for group in ("mmsy ", "mmsy_tdiuc_prefilled", "mmsy_easyvqa_live", "mmsy_easyvqa_prefilled"):
        assert group in output


def test_invalid_prompt_env_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("MMSY_PROMPT", "gentle")

    assert eval_cli.main(["--model", "llava_hf", "--tasks", "mmsy"]) == 2
    assert "MMSY_PROMPT='gentle'" in capsys.readouterr().err


def test_include_paths_adds_task_folder():
    folder = str(paths.task_folder())
    assert eval_cli.include_paths(None) == folder
    assert eval_cli.include_paths("/my/tasks") == ["/my/tasks", folder]
    assert eval_cli.include_paths(["/a", folder]) == ["/a", folder]


# Failure messages


def raise_from_multi_round():
    def generate_until_multi_round():
        raise NotImplementedError("TODO: Implement multi-round generation")

    try:
        generate_until_multi_round()
    except NotImplementedError as error:
        return error


def test_describe_failure_multi_round_names_fixes():
    message = eval_cli.describe_failure(raise_from_multi_round())

    assert "does not implement generate_until_multi_round" in message
    assert "mmsy_easyvqa_prefilled" in message
    assert "--model mmsy_hf" in message


def test_describe_failure_other_not_implemented():
    message = eval_cli.describe_failure(NotImplementedError("loglikelihood"))

    assert message == "evaluation failed: NotImplementedError: loglikelihood"


def test_describe_failure_unwraps_retry_error():
    def failing_process_results():
        raise protocol.LiveProtocolError("expected two round outputs; run mmsy_easyvqa_prefilled")

    retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_none())
    with pytest.raises(tenacity.RetryError) as raised:
        retrying(failing_process_results)

    assert eval_cli.describe_failure(raised.value) == "expected two round outputs; run mmsy_easyvqa_prefilled"


def test_describe_failure_missing_dataset():
    error = DatasetNotFoundError("MM-SY tdiuc dataset not found at X. Build it with `mmsy build --source tdiuc`")

    assert eval_cli.describe_failure(error) == str(error)


# In-process runs


def test_live_task_without_multi_round_exits_1(easyvqa_home, lmms_eval_in_process, tmp_path, capsys):
    status = eval_cli.main(["--model", "mmsy_no_multi_round", "--tasks", "mmsy_easyvqa_live_color", "--output_path", str(tmp_path / "out")])

    assert status == 1
    error_output = capsys.readouterr().err
    assert "does not implement generate_until_multi_round" in error_output
    assert "mmsy_easyvqa_prefilled" in error_output
    assert "--model mmsy_hf" in error_output


def test_tasks_mmsy_without_tdiuc_exits_1(easyvqa_home, lmms_eval_in_process, capsys):
    status = eval_cli.main(["--model", "mmsy_scripted", "--tasks", "mmsy"])

    assert status == 1
    error_output = capsys.readouterr().err
    assert "MM-SY tdiuc dataset not found" in error_output
    assert "mmsy build --source tdiuc --root /path/to/TDIUC" in error_output


def test_missing_tdiuc_reported_before_model_loads(monkeypatch, capsys):
    def fail_if_called(argv):
        raise AssertionError("lmms-eval ran although the TDIUC dataset is missing")

    monkeypatch.setattr(eval_cli, "_run_lmms_eval", fail_if_called)

    status = eval_cli.main(["--model", "llava_hf", "--tasks", "mmsy_easyvqa_live,mmsy_tdiuc_prefilled_color"])

    assert status == 1
    assert "mmsy build --source tdiuc --root /path/to/TDIUC" in capsys.readouterr().err


def test_missing_dataset_error_ignores_easyvqa_tasks():
    assert eval_cli.missing_dataset_error("mmsy_easyvqa_live,mmsy_easyvqa_prefilled") is None
    assert eval_cli.missing_dataset_error(None) is None


def test_unknown_task_exits_1(easyvqa_home, lmms_eval_in_process, capsys):
    assert eval_cli.main(["--model", "mmsy_scripted", "--tasks", "mmsy_no_such_task"]) == 1
    assert "mmsy_no_such_task" in capsys.readouterr().err


def test_mitigation_prompt_run_records_prompt(easyvqa_home, lmms_eval_in_process, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MMSY_PROMPT", raising=False)
    output_path = tmp_path / "out"

    status = eval_cli.main(
        ["--mitigation-prompt", "--model", "mmsy_scripted", "--tasks", "mmsy_easyvqa_live_color",
         "--log_samples", "--output_path", str(output_path)]
    )

    assert status == 0
    assert f"results written under {output_path}" in capsys.readouterr().out
    samples = samples_of(output_path, "mmsy_easyvqa_live_color")
    assert len(samples) == 6
    assert {sample["acc_r1"]["prompt"] for sample in samples} == {"mitigation"}
    # The scripted model keeps its round-1 answer whenever a system turn is present.
    results = results_of(output_path)["mmsy_easyvqa_live_color"]
    assert results["syc,none"] == 0.0
    assert results["syc_strong,none"] == 0.0
    assert results["cor_strong,none"] == 0.0
    assert results["acc_r1,none"] == 0.5
