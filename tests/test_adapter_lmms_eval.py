"""mmsy_hf through the real lmms-eval 0.7.3: model registry, request building, evaluator and the MM-SY tasks.

The model is a tiny random-weight LLaVA, so the outputs are junk. The test
checks that lmms-eval resolves ``mmsy_hf`` through the entry point, runs the
prefilled tasks (``generate_until``) and the live tasks
(``generate_until_multi_round``), and logs one record per dialogue with the
round-2 answer of every live dialogue.
"""

import json

import pytest
import torch
from fixtures.tiny_vlms import build_tiny_llava
from lmms_eval.models import get_model
from task_fixtures import easyvqa_items, lmms_eval_in_process, write_dataset_dir  # noqa: F401  (fixture)

from mmsy_models.adapter import MMSYHF
from mmsy_tasks import eval_cli


def test_registry_resolves_mmsy_hf():
    assert get_model("mmsy_hf") is MMSYHF


def test_model_args_string_builds_adapter(tmp_path):
    checkpoint = build_tiny_llava(tmp_path / "tiny-llava")

    adapter = MMSYHF.create_from_arg_string(
        f"pretrained={checkpoint},dtype=float32,max_new_tokens=7,kv_reuse=False,amplify_layers=0-1,amplify_alpha=1",
        {"batch_size": "auto:3", "max_batch_size": None, "device": "cpu"},
    )

    assert adapter.batch_size == 3
    assert adapter.max_new_tokens == 7
    assert adapter.kv_reuse is False
    assert adapter.amplification_enabled is False
    assert adapter.device == torch.device("cpu")


@pytest.mark.usefixtures("lmms_eval_in_process")
def test_mmsy_tasks_run_on_mmsy_hf(tmp_path, monkeypatch):
    home = tmp_path / "home"
    write_dataset_dir(home / "data" / "easyvqa", easyvqa_items(per_category=1), "easyvqa")
    monkeypatch.setenv("MMSY_HOME", str(home))
    checkpoint = build_tiny_llava(tmp_path / "tiny-llava")
    output_path = tmp_path / "out"

    status = eval_cli.main(
        [
            "--model", "mmsy_hf",
            "--model_args", f"pretrained={checkpoint},device=cpu",
            "--batch_size", "4",
            "--tasks", "mmsy_easyvqa_prefilled_color,mmsy_easyvqa_live_color",
            "--gen_kwargs", "max_new_tokens=6",
            "--log_samples", "--output_path", str(output_path),
        ]
    )

    assert status == 0
    (results_file,) = output_path.rglob("*_results.json")
    results = json.loads(results_file.read_text())["results"]
    assert "acc_r1,none" in results["mmsy_easyvqa_prefilled_color"]
    assert "syc,none" in results["mmsy_easyvqa_live_color"]

    (live_file,) = output_path.rglob("*_samples_mmsy_easyvqa_live_color.jsonl")
    live_records = [json.loads(line)["acc_r1"] for line in live_file.read_text().splitlines()]
    assert len(live_records) == 3
    assert all(record["has_r2"] for record in live_records)
    assert all(isinstance(record["response_r2"], str) for record in live_records)

    (prefilled_file,) = output_path.rglob("*_samples_mmsy_easyvqa_prefilled_color.jsonl")
    prefilled_records = [json.loads(line)["acc_r1"] for line in prefilled_file.read_text().splitlines()]
    assert len(prefilled_records) == 7
