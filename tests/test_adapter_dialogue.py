"""mmsy_hf dialogue handling on a tiny LLaVA: history, round protocol, bad input, OOM halving, model args."""

import json
import shutil

import pytest
import torch
from fixtures.lmms_requests import (
    SPLIT,
    TASK,
    draw_shape,
    live_new_turn,
    live_whole_dialogue,
    make_docs,
    make_requests,
    prefilled_messages,
    round1_messages,
    round2_turn,
)
from fixtures.logs import captured_logs
from fixtures.tiny_vlms import LLAVA_CHAT_TEMPLATE, build_tiny_llava

from mmsy_models.adapter import MMSYHF, _parse_batch_size
from mmsy_models.chat import MissingChatTemplateError

MULTI_ROUND = "generate_until_multi_round"


@pytest.fixture(scope="module")
def llava_path(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava") / "checkpoint")


@pytest.fixture
def adapter(llava_path):
    return MMSYHF(pretrained=str(llava_path), device="cpu", batch_size=4)


class PromptRecorder:
    """Wraps ``MMSYHF._encode`` to keep every prompt the adapter rendered, in call order."""

    def __init__(self, adapter):
        self.prompts = []
        self._encode = adapter._encode
        adapter._encode = self

    def __call__(self, dialogues):
        self.prompts.extend(dialogue.prompt for dialogue in dialogues)
        return self._encode(dialogues)


def _summary(messages):
    return next(message for message in messages if message.startswith("mmsy_hf:"))


# --- chat history -------------------------------------------------------------------


def test_new_turn_history_holds_round1_answer(adapter):
    docs = make_docs(1, seed=3)
    requests = make_requests(adapter, docs, live_new_turn, {"max_new_tokens": 4}, MULTI_ROUND)
    adapter.kv_reuse = False
    recorder = PromptRecorder(adapter)

    outputs = adapter.generate_until_multi_round(requests)[0]

    round2_prompt = recorder.prompts[1]
    round2_text = round2_turn(docs[0])["content"][0]["text"]
    assert round2_prompt.startswith(recorder.prompts[0])
    assert f"ASSISTANT: {outputs[0]} </s>USER: {round2_text} ASSISTANT:" in round2_prompt
    assert round2_prompt.count("<image>") == 1
    assert recorder.prompts[2].count("ASSISTANT:") == 3


def test_whole_dialogue_not_appended_twice(adapter):
    docs = make_docs(2, seed=4)
    requests = make_requests(adapter, docs, live_whole_dialogue, {"max_new_tokens": 4}, MULTI_ROUND)
    recorder = PromptRecorder(adapter)

    outputs = adapter.generate_until_multi_round(requests)

    round2_prompts = recorder.prompts[2:]
    assert len(round2_prompts) == 2
    assert all(len(dialogue_outputs) == 2 for dialogue_outputs in outputs)
    for prompt in round2_prompts:
        assert prompt.count("ASSISTANT: ") == 1
        assert prompt.count("<image>") == 1
        assert prompt.count("</s>") == 1


def test_round_protocol_arguments_and_stop(adapter):
    calls = []

    def doc_to_messages(doc, round_idx=None, previous_output=None, previous_round_info=None):
        calls.append((round_idx, list(previous_output or []), previous_round_info))
        if round_idx is None:
            return round1_messages(doc)
        if round_idx == 1:
            return ([round2_turn(doc)], False, previous_output, {"step": 1})
        return "not a round tuple"

    requests = make_requests(adapter, make_docs(1, seed=5), doc_to_messages, {"max_new_tokens": 3}, MULTI_ROUND)

    outputs = adapter.generate_until_multi_round(requests)[0]

    assert len(outputs) == 2
    assert calls[0] == (None, [], None)
    assert calls[1] == (1, outputs[:1], None)
    assert calls[2] == (2, outputs, {"step": 1})


def test_terminal_round_ends_dialogue(adapter):
    def doc_to_messages(doc, round_idx=None, previous_output=None, previous_round_info=None):
        if round_idx is None:
            return round1_messages(doc)
        return ([round2_turn(doc)], True, previous_output, None)

    requests = make_requests(adapter, make_docs(2, seed=6), doc_to_messages, {"max_new_tokens": 3}, MULTI_ROUND)

    results = adapter.generate_until_multi_round(requests)

    assert [len(outputs) for outputs in results] == [1, 1]


# --- KV cache reuse fallbacks -------------------------------------------------------------


def test_reuse_falls_back_when_template_changes_prefix(llava_path):
    # A template that adds a system line once the dialogue has more than one turn
    # changes the very first tokens of the round-2 prompt.
    template = "{% if messages | length > 1 %}SYSTEM: keep to the image. {% endif %}" + LLAVA_CHAT_TEMPLATE
    docs = make_docs(4, seed=7)
    reference_adapter = MMSYHF(pretrained=str(llava_path), device="cpu", batch_size=1, kv_reuse=False, chat_template=template)
    reference = reference_adapter.generate_until_multi_round(
        make_requests(reference_adapter, docs, live_whole_dialogue, {"max_new_tokens": 4}, MULTI_ROUND)
    )
    adapter = MMSYHF(pretrained=str(llava_path), device="cpu", batch_size=4, chat_template=template)

    with captured_logs() as messages:
        results = adapter.generate_until_multi_round(
            make_requests(adapter, docs, live_whole_dialogue, {"max_new_tokens": 4}, MULTI_ROUND)
        )

    assert results == reference
    fallback_logs = [message for message in messages if "renders the earlier turns differently" in message]
    assert len(fallback_logs) == 1
    assert "4 later rounds encoded in full" in _summary(messages)


def test_reuse_partial_prefix_equals_full_encoding(llava_path):
    # The history writes "ANSWER" before each assistant turn, which the generation prompt lacks,
    # so only the tokens before the round-1 answer can come from the cache.
    template = LLAVA_CHAT_TEMPLATE.replace("{{ message['role'].upper() + ': ' }}", "{{ message['role'].upper() + ': ' }}{% if message['role'] == 'assistant' %}ANSWER {% endif %}")
    docs = make_docs(4, seed=8)
    reference_adapter = MMSYHF(pretrained=str(llava_path), device="cpu", batch_size=1, kv_reuse=False, chat_template=template)
    reference = reference_adapter.generate_until_multi_round(
        make_requests(reference_adapter, docs, live_new_turn, {"max_new_tokens": 4}, MULTI_ROUND)
    )
    adapter = MMSYHF(pretrained=str(llava_path), device="cpu", batch_size=4, chat_template=template)

    with captured_logs() as messages:
        results = adapter.generate_until_multi_round(
            make_requests(adapter, docs, live_new_turn, {"max_new_tokens": 4}, MULTI_ROUND)
        )

    assert results == reference
    assert "KV cache reused for 8 later rounds" in _summary(messages)


def test_reuse_falls_back_when_round_adds_image(adapter, llava_path):
    def doc_to_messages(doc, round_idx=None, previous_output=None, previous_round_info=None):
        if round_idx is None:
            return round1_messages(doc)
        if round_idx > 1:
            return (None, True, previous_output, None)
        new_turn = {"role": "user", "content": [{"type": "image", "url": draw_shape("blue", "circle")}, {"type": "text", "text": "And this one?"}]}
        return ([new_turn], False, previous_output, None)

    docs = make_docs(3, seed=9)
    reference_adapter = MMSYHF(pretrained=str(llava_path), device="cpu", batch_size=1, kv_reuse=False)
    reference = reference_adapter.generate_until_multi_round(
        make_requests(reference_adapter, docs, doc_to_messages, {"max_new_tokens": 4}, MULTI_ROUND)
    )

    with captured_logs() as messages:
        results = adapter.generate_until_multi_round(make_requests(adapter, docs, doc_to_messages, {"max_new_tokens": 4}, MULTI_ROUND))

    assert results == reference
    assert any("the new turn adds an image" in message for message in messages)


# --- bad input -------------------------------------------------------------------------------


def test_undecodable_image_skipped_with_empty_answer(adapter):
    docs = make_docs(3, seed=10)
    docs[1]["image"] = b"these bytes are not an image"
    requests = make_requests(adapter, docs, prefilled_messages, {"max_new_tokens": 3})

    with captured_logs() as messages:
        results = [result.text for result in adapter.generate_until(requests)]

    assert results[1] == ""
    assert results[0] != ""
    assert results[2] != ""
    assert any(f"task {TASK}, doc id 1" in message and "failed to decode" in message for message in messages)
    assert "1 requests skipped for undecodable images" in _summary(messages)


def test_undecodable_image_gets_empty_output_per_round(adapter):
    docs = make_docs(3, seed=11)
    docs[2]["image"] = b"these bytes are not an image"
    requests = make_requests(adapter, docs, live_whole_dialogue, {"max_new_tokens": 3}, MULTI_ROUND)

    with captured_logs() as messages:
        results = adapter.generate_until_multi_round(requests)

    assert results[2] == ["", ""]
    assert len(results[0]) == 2
    assert len(results[1]) == 2
    assert "1 requests skipped for undecodable images" in _summary(messages)


def test_video_item_rejected_with_doc_id(adapter):
    def doc_to_messages(doc):
        return [{"role": "user", "content": [{"type": "video", "url": "clip.mp4"}, {"type": "text", "text": "What happens?"}]}]

    requests = make_requests(adapter, make_docs(2, seed=18), doc_to_messages, {"max_new_tokens": 3})

    with pytest.raises(ValueError, match=f"task {TASK}, doc id 0: content type 'video' is not supported"):
        adapter.generate_until(requests)


def test_doc_without_image_runs_text_only(adapter):
    docs = make_docs(2, seed=11) + make_docs(2, seed=12, with_image=False)
    requests = make_requests(adapter, docs, live_whole_dialogue, {"max_new_tokens": 3}, MULTI_ROUND)
    recorder = PromptRecorder(adapter)

    results = adapter.generate_until_multi_round(requests)

    assert all(len(outputs) == 2 for outputs in results)
    text_only_prompts = [prompt for prompt in recorder.prompts if "<image>" not in prompt]
    assert len(text_only_prompts) == 4


def test_stop_string_cuts_output_and_counts_empty(adapter):
    docs = make_docs(3, seed=13)
    requests = make_requests(adapter, docs, prefilled_messages, {"max_new_tokens": 4})
    full = [result.text for result in adapter.generate_until(requests)]
    first_word = full[0].split()[0]
    stop_requests = make_requests(adapter, docs, prefilled_messages, {"max_new_tokens": 4, "until": [first_word]})

    with captured_logs() as messages:
        cut = [result.text for result in adapter.generate_until(stop_requests)]

    assert cut[0] == ""
    for whole, part in zip(full, cut):
        assert whole.startswith(part)
    expected_empty = sum(1 for text in cut if not text)
    assert f"{expected_empty} empty outputs" in _summary(messages)


def test_tokenizer_without_pad_token_pads_with_eos(llava_path, tmp_path):
    checkpoint = tmp_path / "no_pad"
    shutil.copytree(llava_path, checkpoint)
    config_file = checkpoint / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    del tokenizer_config["pad_token"]
    config_file.write_text(json.dumps(tokenizer_config))
    docs = make_docs(4, seed=19)

    unbatched_adapter = MMSYHF(pretrained=str(checkpoint), device="cpu", batch_size=1)
    unbatched = [result.text for result in unbatched_adapter.generate_until(make_requests(unbatched_adapter, docs, prefilled_messages))]
    adapter = MMSYHF(pretrained=str(checkpoint), device="cpu", batch_size=4)
    batched = [result.text for result in adapter.generate_until(make_requests(adapter, docs, prefilled_messages))]

    assert adapter.tokenizer.pad_token == adapter.tokenizer.eos_token
    assert batched == unbatched


def test_missing_chat_template_error(llava_path, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(llava_path, bare)
    for template_file in bare.glob("chat_template*"):
        template_file.unlink()

    with pytest.raises(MissingChatTemplateError, match="chat_template=PATH"):
        MMSYHF(pretrained=str(bare), device="cpu")

    template_file = tmp_path / "template.jinja"
    template_file.write_text(LLAVA_CHAT_TEMPLATE)
    adapter = MMSYHF(pretrained=str(bare), device="cpu", chat_template=str(template_file))
    assert adapter.processor.chat_template == LLAVA_CHAT_TEMPLATE


# --- out of memory --------------------------------------------------------------------------


def test_oom_halves_batch_and_keeps_outputs(adapter):
    docs = make_docs(5, seed=14)
    requests = make_requests(adapter, docs, live_whole_dialogue, {"max_new_tokens": 3}, MULTI_ROUND)
    adapter.batch_size_per_device = 1
    reference = adapter.generate_until_multi_round(requests)

    real_generate = adapter.model.generate
    batch_sizes = []

    def generate_with_memory_limit(*args, **kwargs):
        batch_size = kwargs["input_ids"].shape[0]
        batch_sizes.append(batch_size)
        if batch_size > 2:
            raise torch.OutOfMemoryError("fake out of memory for a batch above 2")
        return real_generate(*args, **kwargs)

    adapter.model.generate = generate_with_memory_limit
    adapter.batch_size_per_device = 4
    with captured_logs() as messages:
        results = adapter.generate_until_multi_round(requests)

    assert results == reference
    assert adapter.batch_size == 2
    assert batch_sizes[0] == 4
    assert max(batch_sizes[1:]) == 2
    assert any("batch size lowered from 4 to 2" in message for message in messages)


def test_oom_at_batch_size_one_names_doc(adapter):
    requests = make_requests(adapter, make_docs(1, seed=15), prefilled_messages, {"max_new_tokens": 3})

    def always_out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("fake out of memory")

    adapter.model.generate = always_out_of_memory
    adapter.batch_size_per_device = 1
    with pytest.raises(torch.OutOfMemoryError, match=f"task {TASK}, doc id 0"):
        adapter.generate_until(requests)


# --- model args ----------------------------------------------------------------------------------


def test_amplification_args_enable_amplification(llava_path):
    from mmsy_models.amplification import amplification_settings

    docs = make_docs(3, seed=16)
    adapter = MMSYHF(pretrained=str(llava_path), device="cpu", batch_size=2, amplify_layers="0;1", amplify_alpha=4)

    settings = amplification_settings(adapter.model)
    with captured_logs() as messages:
        results = adapter.generate_until_multi_round(make_requests(adapter, docs, live_whole_dialogue, {"max_new_tokens": 3}, MULTI_ROUND))

    assert settings.layers == (0, 1)
    assert settings.alpha == 4.0
    assert all(len(outputs) == 2 for outputs in results)
    assert any("attention amplification is on" in message for message in messages)


def test_amplification_range_and_missing_layers(llava_path):
    from mmsy_models.amplification import amplification_settings

    ranged = MMSYHF(pretrained=str(llava_path), device="cpu", amplify_layers="1-1", amplify_alpha=2.0)
    assert amplification_settings(ranged.model).layers == (1,)

    with pytest.raises(ValueError, match="needs amplify_layers"):
        MMSYHF(pretrained=str(llava_path), device="cpu", amplify_alpha=2.0)

    off = MMSYHF(pretrained=str(llava_path), device="cpu", amplify_layers="all", amplify_alpha=1)
    assert amplification_settings(off.model) is None


def test_unknown_model_arg_rejected(llava_path):
    with pytest.raises(ValueError, match="unknown mmsy_hf model args: temprature") as raised:
        MMSYHF(pretrained=str(llava_path), device="cpu", temprature=0.5)

    assert "valid model args are" in str(raised.value)
    assert "amplify_alpha" in str(raised.value)


def test_non_numeric_amplify_alpha_named(llava_path):
    with pytest.raises(ValueError, match="amplify_alpha='abc' is not a number"):
        MMSYHF(pretrained=str(llava_path), device="cpu", amplify_layers="all", amplify_alpha="abc")


@pytest.mark.parametrize(
    ("value", "max_batch_size", "expected"),
    [(1, None, 1), ("8", None, 8), ("auto", None, 16), ("auto", 32, 32), ("auto:4", None, 4)],
)
def test_parse_batch_size_values(value, max_batch_size, expected):
    assert _parse_batch_size(value, max_batch_size) == expected


@pytest.mark.parametrize("value", ["0", "-2", "many", "auto:x"])
def test_parse_batch_size_rejects_invalid(value):
    with pytest.raises(ValueError, match="invalid batch_size"):
        _parse_batch_size(value, None)


def test_doc_read_from_task_dict(adapter):
    docs = make_docs(2, seed=17)
    requests = make_requests(adapter, docs, prefilled_messages, {"max_new_tokens": 3})
    adapter.task_dict = {TASK: {SPLIT: list(reversed(docs))}}
    recorder = PromptRecorder(adapter)

    adapter.generate_until(requests[:1])

    question = docs[1]["question"]
    assert question in recorder.prompts[0]
