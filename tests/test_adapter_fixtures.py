"""Tests of the tiny random-weight checkpoints that the adapter tests run on."""

import pytest
import torch
from fixtures.tiny_vlms import BUILDERS, build_tiny_llava, build_word_tokenizer
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor


MESSAGES = [
    {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "What color is the shape?"}],
    }
]


def _load(name, tmp_path):
    path = BUILDERS[name](tmp_path / name)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    return model, processor


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_tiny_checkpoint_loads_and_generates(name, tmp_path):
    model, processor = _load(name, tmp_path)
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[Image.new("RGB", (40, 30), (200, 30, 30))], text=[text], return_tensors="pt")

    torch.manual_seed(0)
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)

    assert sum(p.numel() for p in model.parameters()) < 500_000
    assert output.shape == (1, inputs["input_ids"].shape[1] + 3)
    image_token_id = model.config.image_token_id
    assert int((inputs["input_ids"] == image_token_id).sum()) > 1


def test_tiny_llava_visual_token_count(tmp_path):
    path = build_tiny_llava(tmp_path / "llava", image_size=64, patch_size=8)
    processor = AutoProcessor.from_pretrained(path)
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[Image.new("RGB", (64, 64))], text=[text], return_tensors="pt")

    image_token_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((inputs["input_ids"] == image_token_id).sum()) == 64


def test_word_tokenizer_roundtrip_keeps_ids():
    tokenizer = build_word_tokenizer(special_tokens=["<image>"])
    ids = tokenizer.encode("I think the answer is (B) blue.", add_special_tokens=False)
    decoded = tokenizer.decode(ids, skip_special_tokens=True)

    assert tokenizer.unk_token_id not in ids
    assert tokenizer.encode(decoded, add_special_tokens=False) == ids


def test_llava_template_renders_string_content(tmp_path):
    _, processor = _load("llava", tmp_path)
    messages = [{"role": "user", "content": "<image>\nWhat color is the shape?"}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    assert text == "USER: <image>\nWhat color is the shape? ASSISTANT:"
