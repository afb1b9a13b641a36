"""Tests of mmsy_tasks.protocol: dialogue expansion, chat messages and dialogue records."""

import math
from pathlib import Path

import pytest
import yaml
from PIL import Image
from task_fixtures import easyvqa_items, items_dataset, make_item, rows_dataset

from mmsy_tasks import dialogue, metrics, protocol
from mmsy_tasks.paths import task_folder
from mmsy_tasks.records import EASYVQA_CATEGORIES, PROBE_KINDS, TDIUC_CATEGORIES, TONES, InvalidItemError


def expanded_doc(protocol_name="live", tone="strong", probe=None, prompt="default", **item_fields):
    """Return one dialogue doc as lmms-eval passes it, image included."""
    row = make_item("item-1", **item_fields).to_row()
    row.update({"tone": tone, "probe": probe, "protocol": protocol_name, "prompt": prompt})
    return row


def texts(message):
    return [part["text"] for part in message["content"] if part["type"] == "text"]


# Dialogue expansion


def test_dialogue_variants_per_protocol():
    assert protocol.dialogue_variants("live") == [(tone, None) for tone in TONES]
    prefilled = protocol.dialogue_variants("prefilled")
    assert prefilled[0] == (None, None)
    assert sorted(prefilled[1:]) == sorted((tone, probe) for tone in TONES for probe in PROBE_KINDS)


def test_expand_docs_live_counts_and_order():
    items = items_dataset(easyvqa_items(per_category=2))

    docs = protocol.expand_docs(items, "live")

    assert len(docs) == 6 * 3
    assert docs["id"][:3] == ["easyvqa-color-0"] * 3
    assert docs["tone"][:3] == list(TONES)
    assert docs["id"][3] == "easyvqa-color-1"
    assert set(docs["probe"]) == {None}
    assert set(docs["protocol"]) == {"live"}
    assert set(docs["prompt"]) == {"default"}


def test_expand_docs_prefilled_counts_and_order():
    items = items_dataset(easyvqa_items(per_category=1))

    docs = protocol.expand_docs(items, "prefilled", prompt="mitigation")

    assert len(docs) == 3 * 7
    first_item = docs.select(range(7))
    assert set(first_item["id"]) == {"easyvqa-color-0"}
    assert (first_item["tone"][0], first_item["probe"][0]) == (None, None)
    assert sorted(zip(first_item["tone"][1:], first_item["probe"][1:])) == sorted(
        (tone, probe) for tone in TONES for probe in PROBE_KINDS
    )
    assert set(docs["prompt"]) == {"mitigation"}


def test_expand_docs_keeps_images():
    items = items_dataset([make_item("a", answer_idx=2, wrong_idx=0)])

    docs = protocol.expand_docs(items, "live")

    image = docs[2]["image"]
    assert isinstance(image, Image.Image)
    assert image.size == (24, 24)
    assert image.convert("RGB").getpixel((0, 0)) == (40, 60, 220)


def test_expand_docs_rejects_answer_out_of_range():
    row = make_item("bad-answer").to_row()
    row["answer_idx"] = 7
    items = rows_dataset([make_item("good").to_row(), row])

    with pytest.raises(InvalidItemError, match="'bad-answer'.*answer_idx=7"):
        protocol.expand_docs(items, "live")


def test_expand_docs_rejects_missing_image():
    row = make_item("no-image").to_row()
    row["image"] = None
    items = rows_dataset([row])

    with pytest.raises(InvalidItemError, match="'no-image' has no image"):
        protocol.expand_docs(items, "prefilled")


def test_expand_docs_rejects_unknown_protocol_and_prompt():
    items = items_dataset([make_item("a")])
    with pytest.raises(ValueError, match="unknown protocol 'offline'"):
        protocol.expand_docs(items, "offline")
    with pytest.raises(ValueError, match="prompt variant 'polite' is unknown"):
        protocol.expand_docs(items, "live", prompt="polite")


def test_prompt_from_env_values():
    assert protocol.prompt_from_env({}) == "default"
    assert protocol.prompt_from_env({"MMSY_PROMPT": "mitigation"}) == "mitigation"
    with pytest.raises(ValueError, match="MMSY_PROMPT='calm'.*default, mitigation"):
        protocol.prompt_from_env({"MMSY_PROMPT": "calm"})


# Messages


def test_round1_messages_default_prompt():
    doc = expanded_doc()

    messages = protocol.round1_messages(doc)

    assert [m["role"] for m in messages] == ["user"]
    image_part, text_part = messages[0]["content"]
    assert image_part == {"type": "image", "url": doc["image"]}
    assert text_part["text"] == dialogue.render_round1(doc["question"], doc["options"])
    assert "(D) yellow" in text_part["text"]


def test_round1_messages_mitigation_prompt_adds_system_turn():
    messages = protocol.round1_messages(expanded_doc(prompt="mitigation"))

    assert [m["role"] for m in messages] == ["system", "user"]
    assert texts(messages[0]) == [dialogue.MITIGATION_INSTRUCTION]


def test_live_messages_round0_is_round1():
    doc = expanded_doc()
    assert protocol.live_messages(doc) == protocol.round1_messages(doc)
    assert protocol.live_messages(doc, round_idx=0) == protocol.round1_messages(doc)


def test_live_messages_correct_round1_gets_sycophancy_probe():
    doc = expanded_doc(tone="strong", answer_idx=0, wrong_idx=2, template=0)

    messages, terminal, previous, info = protocol.live_messages(doc, round_idx=1, previous_output=["(A) red"])

    assert terminal is False
    assert previous == ["(A) red"]
    assert info == {"r1": 0, "probe": "sycophancy", "proposed_idx": 2}
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"][0]["type"] == "image"
    assert texts(messages[1]) == ["(A) red"]
    strong_template = dialogue.TONE_TEMPLATES["strong"][doc["tone_templates"]["strong"]]
    assert texts(messages[2]) == [strong_template.format(letter="C", option="blue")]


@pytest.mark.parametrize("answer", ["(B) green", "I cannot tell.", "", None])
def test_live_messages_wrong_round1_correction_probe(answer):
    doc = expanded_doc(tone="suggestive", answer_idx=0, wrong_idx=2)

    messages, terminal, _, info = protocol.live_messages(doc, round_idx=1, previous_output=[answer])

    assert terminal is False
    assert info["probe"] == "correction"
    assert info["proposed_idx"] == 0
    assert texts(messages[1]) == [answer or ""]
    assert "(A) red" in texts(messages[2])[0]


def test_live_messages_round2_is_terminal():
    doc = expanded_doc()

    messages, terminal, previous, info = protocol.live_messages(doc, round_idx=2, previous_output=["A", "B"], previous_round_info={"r1": 0})

    assert messages is None
    assert terminal is True
    assert previous == ["A", "B"]
    assert info == {"r1": 0}


def test_live_messages_mitigation_keeps_system_turn_in_round2():
    doc = expanded_doc(prompt="mitigation")

    messages, _, _, _ = protocol.live_messages(doc, round_idx=1, previous_output=["(A) red"])

    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]


def test_prefilled_messages_round1_only():
    doc = expanded_doc("prefilled", tone=None, probe=None)

    assert protocol.prefilled_messages(doc) == protocol.round1_messages(doc)


def test_prefilled_messages_sycophancy_history_is_correct_answer():
    doc = expanded_doc("prefilled", tone="euphemistic", probe="sycophancy", answer_idx=1, wrong_idx=3)

    messages = protocol.prefilled_messages(doc)

    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert texts(messages[1]) == ["(B) green"]
    assert "(D) yellow" in texts(messages[2])[0]


def test_prefilled_messages_correction_history_is_wrong_answer():
    doc = expanded_doc("prefilled", tone="strong", probe="correction", answer_idx=1, wrong_idx=3)

    messages = protocol.prefilled_messages(doc)

    assert texts(messages[1]) == ["(D) yellow"]
    assert "(B) green" in texts(messages[2])[0]


def test_live_probe_decision():
    assert protocol.live_probe(2, 2) == "sycophancy"
    assert protocol.live_probe(1, 2) == "correction"
    assert protocol.live_probe(None, 2) == "correction"


# Dialogue records


def test_build_record_live_sycophancy_gives_in():
    doc = expanded_doc(tone="strong", answer_idx=0, wrong_idx=2)

    record = protocol.build_record(doc, ["(A) red", "You are right, it is (C) blue."])

    assert record["protocol"] == "live"
    assert record["tone"] == "strong"
    assert record["probe"] == "sycophancy"
    assert record["proposed_idx"] == 2
    assert (record["r1"], record["r2"]) == (0, 2)
    assert record["r1_generated"] is True
    assert record["has_r2"] is True
    assert record["n_options"] == 4
    assert record["response_r2"] == "You are right, it is (C) blue."
    assert "(C) blue" in record["round2_text"]
    assert record["prompt"] == "default"
    metrics.validate_record(record)


def test_build_record_live_correction_invalid_round2():
    doc = expanded_doc(tone="suggestive", answer_idx=0, wrong_idx=2)

    record = protocol.build_record(doc, ["(B) green", ""])

    assert record["probe"] == "correction"
    assert record["proposed_idx"] == 0
    assert (record["r1"], record["r2"]) == (1, None)
    metrics.validate_record(record)


def test_build_record_prefilled_probe():
    doc = expanded_doc("prefilled", tone="strong", probe="correction", answer_idx=1, wrong_idx=3)

    record = protocol.build_record(doc, ["(B)"])

    assert record["r1"] == 3
    assert record["r1_generated"] is False
    assert record["proposed_idx"] == 1
    assert record["r2"] == 1
    assert record["has_r2"] is True
    assert record["response_r1"] is None
    metrics.validate_record(record)


def test_build_record_prefilled_round1_only():
    doc = expanded_doc("prefilled", tone=None, probe=None, answer_idx=1, wrong_idx=3)

    record = protocol.build_record(doc, ["(B) green"])

    assert record["r1"] == 1
    assert record["r1_generated"] is True
    assert record["has_r2"] is False
    assert record["r2"] is None
    assert record["probe"] is None
    assert record["proposed_idx"] is None
    assert record["round2_text"] is None
    metrics.validate_record(record)


@pytest.mark.parametrize(
    "response",
    [None, "", "   ", "blah " * 20000 + "(C)", "答案是 (C) 蓝色。", "Ответ: синий", "\x00 (Z)"],
)
def test_build_record_odd_responses_do_not_crash(response):
    doc = expanded_doc("prefilled", tone="strong", probe="sycophancy", answer_idx=0, wrong_idx=2)

    record = protocol.build_record(doc, [response])

    assert record["r2"] is None or 0 <= record["r2"] < 4
    metrics.validate_record(record)


def test_results_to_responses_live_single_string_names_fixes():
    doc = expanded_doc()

    with pytest.raises(protocol.LiveProtocolError, match="got one string") as raised:
        protocol.results_to_responses(doc, ["(A) red"])

    message = str(raised.value)
    assert "mmsy_easyvqa_prefilled" in message
    assert "mmsy_hf" in message


def test_results_to_responses_shapes():
    assert protocol.results_to_responses(expanded_doc(), [["a", "b"]]) == ["a", "b"]
    assert protocol.results_to_responses(expanded_doc("prefilled", probe="sycophancy"), ["a"]) == ["a"]
    with pytest.raises(protocol.LiveProtocolError, match=r"got \['a'\]"):
        protocol.results_to_responses(expanded_doc(), [["a"]])


def test_process_results_same_record_under_every_metric():
    doc = expanded_doc(tone="euphemistic", answer_idx=0, wrong_idx=1)

    results = protocol.process_results(doc, [["(A)", "(B)"]])

    assert tuple(results) == protocol.metric_names("live")
    records = list(results.values())
    assert all(record is records[0] for record in records)
    assert records[0]["probe"] == "sycophancy"


def test_metric_names_per_protocol():
    live = protocol.metric_names("live")
    prefilled = protocol.metric_names("prefilled")
    assert live[:7] == metrics.METRICS
    assert "acc_r1_strong" in live
    assert "acc_r1_strong" not in prefilled
    assert {"syc_ci_low", "syc_ci_high", "cor_strong"} <= set(prefilled)
    assert len(live) == 22
    assert len(prefilled) == 19


def test_category_mean_skips_nan():
    assert protocol.category_mean([0.5, math.nan, 1.0], [10, 10, 30]) == pytest.approx(0.75)
    assert protocol.category_mean([0.5, math.nan, 1.0], [10, 10, 30], weight_by_size=True) == pytest.approx(35 / 40)
    assert math.isnan(protocol.category_mean([math.nan, math.nan], [1, 1]))


# The task folder


def load_yaml(path: Path) -> dict:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: ("function", loader.construct_scalar(node)))
    return yaml.load(path.read_text(), Loader=Loader)


def test_task_yamls_metric_lists_match_protocol():
    folder = task_folder()
    for protocol_name in protocol.PROTOCOLS:
        config = load_yaml(folder / f"_mmsy_{protocol_name}.yaml")
        names = [entry["metric"] for entry in config["metric_list"]]
        assert tuple(names) == protocol.metric_names(protocol_name)
        for entry in config["metric_list"]:
            assert entry["aggregation"] == ("function", f"utils.{entry['metric']}")


def test_task_utils_aggregations_compute_rates():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mmsy_task_utils", task_folder() / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = expanded_doc(tone="strong", answer_idx=0, wrong_idx=1)
    gave_in = protocol.build_record(doc, ["(A)", "(B)"])
    kept = protocol.build_record(doc, ["(A)", "(A)"])

    for name in protocol.metric_names("live"):
        assert callable(getattr(utils, name)), name
    assert utils.syc([gave_in, kept]) == 0.5
    assert utils.syc_strong([gave_in, kept]) == 0.5
    assert math.isnan(utils.syc_suggestive([gave_in, kept]))
    assert utils.acc_r1([gave_in, kept]) == 1.0


def test_task_folder_lists_every_subtask_and_group():
    folder = task_folder()
    expected_groups = {
        "mmsy": ("tdiuc", "live", TDIUC_CATEGORIES),
        "mmsy_tdiuc_prefilled": ("tdiuc", "prefilled", TDIUC_CATEGORIES),
        "mmsy_easyvqa_live": ("easyvqa", "live", EASYVQA_CATEGORIES),
        "mmsy_easyvqa_prefilled": ("easyvqa", "prefilled", EASYVQA_CATEGORIES),
    }
    for group, (source, protocol_name, categories) in expected_groups.items():
        config = load_yaml(folder / f"{group}.yaml")
        expected_tasks = [f"mmsy_{source}_{protocol_name}_{category}" for category in categories]
        assert config["task"] == expected_tasks
        aggregated = {entry["metric"] for entry in config["aggregate_metric_list"]}
        assert f"syc,none" in aggregated
        assert not any("_ci_" in name for name in aggregated)
        for task in expected_tasks:
            subtask = load_yaml(folder / f"{task}.yaml")
            assert subtask["include"] == f"_mmsy_{protocol_name}.yaml"
            assert subtask["class"] == ("function", "mmsy_tasks.lmms_task.MMSYTask")
            assert (subtask["dataset_path"], subtask["dataset_name"]) == (source, subtask["task_alias"])
