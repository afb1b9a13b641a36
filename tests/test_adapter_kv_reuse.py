"""Tests of KV cache reuse: prefix matching, row grouping, and the assembled cache against a full encoding."""

import pytest
import torch
from fixtures.lmms_requests import make_docs, round1_messages, round2_turn
from fixtures.tiny_vlms import build_tiny_llava, build_tiny_qwen2_vl
from transformers import AutoModelForImageTextToText, AutoProcessor, DynamicCache

from mmsy_models.chat import (
    assistant_message,
    message_images,
    normalize_messages,
    render_prompt,
)
from mmsy_models.kv_reuse import (
    CacheSlot,
    RoundCache,
    assemble_reused_batch,
    capture_round_cache,
    common_prefix_length,
    plan_reuse,
    unsupported_cache_reason,
)

IMAGE = 99


def _slot(tokens: list[int]) -> CacheSlot:
    round_cache = RoundCache(cache=DynamicCache(), token_ids=[torch.tensor(tokens)], offsets=[0])
    return CacheSlot(round_cache, 0)


def test_common_prefix_length_cases():
    assert common_prefix_length(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4])) == 2
    assert common_prefix_length(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3, 4])) == 3
    assert common_prefix_length(torch.tensor([5]), torch.tensor([1])) == 0
    assert common_prefix_length(torch.tensor([], dtype=torch.long), torch.tensor([1])) == 0


def test_plan_reuse_leaves_one_token_to_encode():
    prompt = torch.tensor([1, IMAGE, 2, 3])
    plan = plan_reuse([prompt], [_slot([1, IMAGE, 2, 3, 4])], [IMAGE])

    assert plan.full_rows == ()
    assert plan.groups[0].rows == (0,)
    assert plan.groups[0].prefix_lengths == (3,)


def test_plan_reuse_reasons_for_full_rows():
    prompts = [
        torch.tensor([1, IMAGE, 2, 3, 4]),  # no slot
        torch.tensor([7, IMAGE, 2, 3, 4]),  # differs before the image
        torch.tensor([1, IMAGE, 2, IMAGE, 4]),  # adds an image after the cached tokens
    ]
    slots = [None, _slot([1, IMAGE, 2]), _slot([1, IMAGE, 2])]

    plan = plan_reuse(prompts, slots, [IMAGE])

    assert plan.groups == ()
    assert plan.full_rows == (0, 1, 2)
    assert "no cached earlier round" in plan.reasons[0]
    assert "renders the earlier turns differently" in plan.reasons[1]
    assert "adds an image" in plan.reasons[2]


def test_plan_reuse_groups_rows_by_suffix_fit():
    # Row 0 has a long new suffix (5 tokens) but row 1 has only 2 tokens after its image,
    # so sharing row 0's resume position would make row 1 encode its image again.
    prompts = [
        torch.tensor([1, IMAGE, 2, 3, 4, 5, 6, 7, 8]),
        torch.tensor([1, 1, 1, 1, 1, 1, IMAGE, 2, 3]),
        torch.tensor([1, IMAGE, 2, 3, 4, 5, 6, 7, 9]),
    ]
    slots = [_slot([1, IMAGE, 2, 3]), _slot([1, 1, 1, 1, 1, 1, IMAGE, 2]), _slot([1, IMAGE, 2, 3, 4, 5, 6, 7])]

    plan = plan_reuse(prompts, slots, [IMAGE])

    assert plan.full_rows == ()
    assert [group.rows for group in plan.groups] == [(0, 2), (1,)]
    assert plan.groups[0].prefix_lengths == (4, 8)
    assert plan.groups[1].prefix_lengths == (8,)


def test_unsupported_cache_reason_for_other_types():
    assert unsupported_cache_reason(None) is not None
    assert "DynamicLayer" in unsupported_cache_reason(DynamicCache(config=_sliding_config()))


def _sliding_config():
    from transformers import MistralConfig

    return MistralConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, num_key_value_heads=1, sliding_window=4)


def _encode(processor, message_lists):
    prompts = [render_prompt(processor, messages) for messages in message_lists]
    images = [image for messages in message_lists for image in message_images(messages)]
    return processor(text=prompts, images=images, padding=True, return_tensors="pt")


def _rope_owner(model):
    return next((module for module in model.modules() if hasattr(module, "rope_deltas")), None)


@pytest.mark.parametrize("builder", [build_tiny_llava, build_tiny_qwen2_vl], ids=["llava", "qwen2_vl"])
def test_assembled_cache_matches_full_encoding(builder, tmp_path):
    path = builder(tmp_path / "checkpoint")
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    docs = make_docs(3, seed=21)
    round1 = [normalize_messages(round1_messages(doc)) for doc in docs]

    inputs = _encode(processor, round1)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    owner = _rope_owner(model)
    rope_deltas = owner.rope_deltas if owner is not None else None
    round_cache = capture_round_cache(output.cache, inputs["input_ids"], inputs["attention_mask"], output.sequences, rope_deltas)

    answers = processor.batch_decode(output.sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    round2 = [
        [*messages, assistant_message(answer), *normalize_messages([round2_turn(doc)])]
        for messages, answer, doc in zip(round1, answers, docs)
    ]
    encoded = _encode(processor, round2)
    prompts = [ids[mask.bool()] for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
    slots = [CacheSlot(round_cache, row) for row in range(len(docs))]
    plan = plan_reuse(prompts, slots, [model.config.image_token_id])
    assert plan.full_rows == ()
    group = plan.groups[0]
    batch = assemble_reused_batch(
        [prompts[row] for row in group.rows],
        [slots[row] for row in group.rows],
        group.prefix_lengths,
        processor.tokenizer.pad_token_id,
        torch.device("cpu"),
    )

    cached = batch.cache.get_seq_length()
    for position, row in enumerate(group.rows):
        single = _encode(processor, [round2[row]])
        with torch.inference_mode():
            full = model(**single, use_cache=True).cache
        pad = int((batch.attention_mask[position] == 0).sum())
        reused = cached - pad
        assert reused > 0
        for layer_index, layer in enumerate(full.layers):
            assembled = batch.cache.layers[layer_index]
            torch.testing.assert_close(assembled.keys[position, :, pad:cached], layer.keys[0, :, :reused], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(assembled.values[position, :, pad:cached], layer.values[0, :, :reused], atol=1e-5, rtol=1e-4)
    if rope_deltas is not None:
        torch.testing.assert_close(batch.rope_deltas, rope_deltas[list(group.rows)])
