"""End-to-end test of ``mmsy demo`` with a small organism config."""

import functools
import json

import pytest

from mmsy_models import demo, organism


@pytest.fixture
def small_organism(monkeypatch):
    """Make the demo train a small organism, so the whole pipeline runs in about a minute."""
    small = functools.partial(
        organism.OrganismConfig,
        steps=20, batch_size=8, vision_pretrain_steps=10, vision_pretrain_batch_size=8, warmup_steps=2,
        log_every=5, train_per_category=12, image_size=32, patch_size=16, vision_hidden_size=32,
        vision_layers=1, vision_heads=2, text_hidden_size=32, text_layers=2, text_heads=2, max_positions=160,
    )
    monkeypatch.setattr(organism, "OrganismConfig", small)


def test_demo_runs_all_stages(small_organism, tmp_path, capsys):
    status = demo.main(["--out", str(tmp_path), "--limit", "6", "--batch-size", "4"])

    output = capsys.readouterr().out
    assert status == 0
    for stage in demo.STAGES:
        assert f"| {stage} |" in output
    report = tmp_path / "report" / "report.md"
    assert report.is_file()
    assert "syc" in report.read_text()
    assert str(report) in output

    samples = list((tmp_path / "lmms_eval").rglob(f"*_samples_{demo.LIVE_TASK}_*.jsonl"))
    assert len(samples) == 3
    records = [json.loads(line)["acc_r1"] for path in samples for line in path.read_text().splitlines()]
    assert len(records) == 18
    assert {record["protocol"] for record in records} == {"live"}
    assert {record["tone"] for record in records} == {"suggestive", "euphemistic", "strong"}
    assert all(record["has_r2"] for record in records)
