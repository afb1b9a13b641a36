"""Tests of attention amplification on visual tokens.

The numerics are checked against an attention function written here from the
definition, softmax(Q K^T * scale + mask + log(alpha) on image keys) V, with
its own causal and padding mask, that runs in place of the model's attention.
"""

import math
from dataclasses import dataclass

import pytest
import torch
from fixtures.tiny_vlms import BUILDERS
from PIL import Image, ImageDraw
from transformers import (
    AttentionInterface,
    AutoModelForImageTextToText,
    AutoProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from mmsy_models.amplification import (
    AMPLIFIED_EAGER,
    AMPLIFIED_SDPA,
    amplification,
    amplification_settings,
    config_image_token_id,
    count_decoder_layers,
    disable_amplification,
    enable_amplification,
    parse_layer_spec,
)

IMAGE_TOKEN_ID = 5
PAD_TOKEN_ID = 0
NUM_LAYERS = 4
REFERENCE = "test_reference_amplified"

# Two prompts with a block of image tokens; the second is left-padded by three tokens.
PROMPTS = torch.tensor(
    [
        [1, 7, 8, 5, 5, 5, 5, 5, 5, 9, 10, 11],
        [0, 0, 0, 1, 12, 5, 5, 5, 5, 13, 14, 15],
    ]
)
PADDING = torch.tensor([[1] * 12, [0, 0, 0] + [1] * 9])


@dataclass
class ReferenceContext:
    """What the reference attention needs besides Q, K and V."""

    padding: torch.Tensor  # [batch, seq], True on real tokens
    image_keys: torch.Tensor  # [batch, seq], True on image tokens
    layers: frozenset[int]
    log_alpha: float
    layer_index: int


def reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention computed from the definition, for full-sequence forwards without a cache."""
    context = module.reference_context
    heads, kv_heads = query.shape[1], key.shape[1]
    key = key.repeat_interleave(heads // kv_heads, dim=1)  # [batch, heads, seq, head_dim]
    value = value.repeat_interleave(heads // kv_heads, dim=1)

    scores = query @ key.transpose(-1, -2) * scaling  # [batch, heads, seq, seq]
    positions = torch.arange(key.shape[2])
    causal = positions[None, :] <= positions[:, None]  # [seq, seq]
    allowed = causal & context.padding[:, None, None, :]  # [batch, 1, seq, seq]
    scores = scores.masked_fill(~allowed, float("-inf"))
    if context.layer_index in context.layers:
        scores = scores + context.log_alpha * context.image_keys[:, None, None, :].to(scores.dtype)

    # Padding queries attend to no key, so their rows become 0 instead of NaN.
    probabilities = torch.nan_to_num(scores.softmax(dim=-1), nan=0.0)
    output = probabilities @ value  # [batch, heads, seq, head_dim]
    return output.transpose(1, 2).contiguous(), probabilities


AttentionInterface.register(REFERENCE, reference_attention)


def build_llama(attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=48,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=PAD_TOKEN_ID,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM._from_config(config, attn_implementation=attn_implementation).eval()


def llama_inputs() -> dict[str, torch.Tensor]:
    return {"input_ids": PROMPTS.clone(), "attention_mask": PADDING.clone()}


def draw_image() -> Image.Image:
    image = Image.new("RGB", (48, 40), "white")
    ImageDraw.Draw(image).ellipse((6, 6, 34, 30), fill=(200, 30, 30))
    return image


def load_tiny_vlm(name: str, tmp_path):
    """Return a tiny random-weight VLM of architecture ``name`` and processor inputs for one image and question."""
    path = BUILDERS[name](tmp_path / name)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the shape?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[draw_image()], text=[text], return_tensors="pt")
    return model, dict(inputs)


def logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, use_cache=False).logits


def reference_logits(model, inputs, layers, alpha: float, image_token_id: int) -> torch.Tensor:
    """Return the logits of ``model`` with every decoder layer running ``reference_attention``."""
    input_ids = inputs["input_ids"]
    padding = inputs.get("attention_mask", torch.ones_like(input_ids)).bool()
    attention_modules = [layer.self_attn for layer in model.get_decoder().layers]
    config = attention_modules[0].config
    previous = config._attn_implementation

    for index, module in enumerate(attention_modules):
        module.reference_context = ReferenceContext(
            padding, input_ids == image_token_id, frozenset(layers), math.log(alpha), index
        )
    config._attn_implementation = REFERENCE
    try:
        return logits(model, inputs)
    finally:
        config._attn_implementation = previous
        for module in attention_modules:
            del module.reference_context


def real_positions(inputs) -> torch.Tensor:
    return inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()


@pytest.mark.parametrize(
    ("spec", "num_layers", "expected"),
    [
        ("all", 4, [0, 1, 2, 3]),
        ("low", 12, [0, 1, 2, 3]),
        ("middle", 12, [4, 5, 6, 7]),
        ("high", 12, [8, 9, 10, 11]),
        ("low", 32, list(range(0, 11))),
        ("middle", 32, list(range(11, 21))),
        ("high", 32, list(range(21, 32))),
        ("low", 3, [0]),
        ("middle", 3, [1]),
        ("high", 3, [2]),
        (" High ", 6, [4, 5]),
        ("2-4", 6, [2, 3, 4]),
        ("3-3", 6, [3]),
        ("1;3;5", 6, [1, 3, 5]),
        ("5,1,3", 6, [1, 3, 5]),
        ("1,1,2", 6, [1, 2]),
        ("0-1, 4", 6, [0, 1, 4]),
        ("0 - 2", 6, [0, 1, 2]),
    ],
)
def test_parse_layer_spec_cases(spec, num_layers, expected):
    assert parse_layer_spec(spec, num_layers) == expected


@pytest.mark.parametrize(
    ("spec", "num_layers", "message"),
    [
        ("6", 6, "layer 6 .* out of range: valid layers are 0-5"),
        ("2-9", 6, "layer 9 .* out of range"),
        ("1;7", 6, "layer 7 .* out of range"),
        ("", 6, "empty layer spec"),
        ("   ", 6, "empty layer spec"),
        ("4-2", 6, "lower layer first, as in '2-4'"),
        ("first", 6, "invalid entry 'first'"),
        ("-1", 6, "invalid entry '-1'"),
        ("1.5", 6, "invalid entry '1.5'"),
        ("1,,2", 6, "empty entry"),
        ("low", 2, "needs at least 3 layers"),
        ("all", 0, "num_layers must be at least 1"),
    ],
)
def test_parse_layer_spec_errors(spec, num_layers, message):
    with pytest.raises(ValueError, match=message):
        parse_layer_spec(spec, num_layers)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_alpha_one_equals_stock(attn_implementation):
    model = build_llama(attn_implementation)
    inputs = llama_inputs()
    stock = logits(model, inputs)

    enable_amplification(model, list(range(NUM_LAYERS)), 1.0, IMAGE_TOKEN_ID)
    amplified = logits(model, inputs)

    assert model.config._attn_implementation in (AMPLIFIED_SDPA, AMPLIFIED_EAGER)
    assert torch.allclose(amplified, stock, atol=1e-6, rtol=0)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_alpha_three_matches_reference(attn_implementation):
    model = build_llama(attn_implementation)
    inputs = llama_inputs()
    real = real_positions(inputs)
    layers = [1, 3]
    stock = logits(model, inputs)

    # The reference itself reproduces the stock model at alpha = 1.
    reference_identity = reference_logits(model, inputs, layers, 1.0, IMAGE_TOKEN_ID)
    assert torch.allclose(reference_identity[real], stock[real], atol=1e-5, rtol=0)

    expected = reference_logits(model, inputs, layers, 3.0, IMAGE_TOKEN_ID)
    enable_amplification(model, layers, 3.0, IMAGE_TOKEN_ID)
    amplified = logits(model, inputs)

    assert (amplified[real] - stock[real]).abs().max() > 1e-3
    assert torch.allclose(amplified[real], expected[real], atol=1e-5, rtol=0)


def test_alpha_below_one_matches_reference():
    model = build_llama()
    inputs = llama_inputs()
    real = real_positions(inputs)

    expected = reference_logits(model, inputs, [0, 2], 0.25, IMAGE_TOKEN_ID)
    enable_amplification(model, [0, 2], 0.25, IMAGE_TOKEN_ID)

    assert torch.allclose(logits(model, inputs)[real], expected[real], atol=1e-5, rtol=0)


def test_eager_weights_scaled_and_renormalised():
    model = build_llama("eager")
    inputs = llama_inputs()
    alpha = 3.0
    with torch.no_grad():
        stock = model(**inputs, output_attentions=True).attentions[0]  # [batch, heads, seq, seq]
        with amplification(model, [0], alpha, IMAGE_TOKEN_ID):
            amplified = model(**inputs, output_attentions=True).attentions[0]

    image_keys = (PROMPTS == IMAGE_TOKEN_ID)[:, None, None, :]  # [batch, 1, 1, seq]
    scaled = stock * torch.where(image_keys, alpha, 1.0)
    expected = scaled / scaled.sum(dim=-1, keepdim=True)
    real_queries = PADDING.bool()[:, None, :, None]  # [batch, 1, seq, 1]
    assert torch.allclose(amplified * real_queries, expected * real_queries, atol=1e-6, rtol=0)

    stock_image_mass = (stock * image_keys).sum(dim=-1)  # [batch, heads, seq]
    amplified_image_mass = (amplified * image_keys).sum(dim=-1)
    sees_image = (stock_image_mass > 0) & (stock_image_mass < 1) & PADDING.bool()[:, None, :]
    assert sees_image.any()
    assert (amplified_image_mass[sees_image] > stock_image_mass[sees_image]).all()


def test_only_chosen_layers_change_hidden_states():
    model = build_llama()
    inputs = llama_inputs()
    real = real_positions(inputs)
    with torch.no_grad():
        stock = model(**inputs, output_hidden_states=True).hidden_states
        with amplification(model, [2, 3], 2.0, IMAGE_TOKEN_ID):
            amplified = model(**inputs, output_hidden_states=True).hidden_states

    # hidden_states[0] is the embedding output and hidden_states[i + 1] the output of layer i.
    for index in range(3):
        assert torch.equal(amplified[index][real], stock[index][real]), f"hidden state {index} changed"
    for index in range(3, NUM_LAYERS + 1):
        assert (amplified[index][real] - stock[index][real]).abs().max() > 1e-4, f"hidden state {index} unchanged"


def generate(model, inputs, use_cache: bool = True, max_new_tokens: int = 6, **kwargs):
    with torch.no_grad():
        return model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=use_cache,
            return_dict_in_generate=True,
            output_scores=True,
            pad_token_id=PAD_TOKEN_ID,
            **kwargs,
        )


def build_sliding_window_mistral(attn_implementation: str = "sdpa") -> MistralForCausalLM:
    """Build a Mistral decoder whose 8-token window is shorter than the prompts, so its cache drops old keys."""
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=48,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        sliding_window=8,
        pad_token_id=PAD_TOKEN_ID,
    )
    return MistralForCausalLM._from_config(config, attn_implementation=attn_implementation).eval()


@pytest.mark.parametrize(
    ("build", "attn_implementation", "cache_implementation"),
    [
        (build_llama, "sdpa", "dynamic"),
        (build_llama, "eager", "dynamic"),
        (build_llama, "sdpa", "static"),
        (build_sliding_window_mistral, "sdpa", "dynamic"),
        (build_sliding_window_mistral, "eager", "static"),
    ],
)
def test_cached_generation_equals_recompute(build, attn_implementation, cache_implementation):
    model = build(attn_implementation)
    inputs = llama_inputs()
    enable_amplification(model, [0, 1], 4.0, IMAGE_TOKEN_ID)

    cached = generate(model, inputs, use_cache=True, max_new_tokens=8, cache_implementation=cache_implementation)
    recomputed = generate(model, inputs, use_cache=False, max_new_tokens=8)

    assert torch.equal(cached.sequences, recomputed.sequences)
    for step, (cached_scores, recomputed_scores) in enumerate(zip(cached.scores, recomputed.scores, strict=True)):
        allowed = recomputed_scores.isfinite()
        assert torch.allclose(cached_scores[allowed], recomputed_scores[allowed], atol=1e-5, rtol=0), (
            f"scores differ at step {step}"
        )


def test_left_padded_batch_equals_single():
    model = build_llama()
    enable_amplification(model, [1, 2], 4.0, IMAGE_TOKEN_ID)

    batch = generate(model, llama_inputs())
    single = generate(model, {"input_ids": PROMPTS[1:, 3:], "attention_mask": PADDING[1:, 3:]})

    new_tokens = PROMPTS.shape[1]
    assert torch.equal(batch.sequences[1, new_tokens:], single.sequences[0, new_tokens - 3 :])
    for step, (batch_scores, single_scores) in enumerate(zip(batch.scores, single.scores, strict=True)):
        assert torch.allclose(batch_scores[1], single_scores[0], atol=1e-4, rtol=0), f"scores differ at step {step}"


def test_amplified_generation_differs_from_stock():
    model = build_llama()
    stock = generate(model, llama_inputs())
    with amplification(model, list(range(NUM_LAYERS)), 8.0, IMAGE_TOKEN_ID):
        amplified = generate(model, llama_inputs())

    allowed = stock.scores[0].isfinite()  # min_new_tokens sets the end-of-sequence score to -inf
    assert (amplified.scores[0][allowed] - stock.scores[0][allowed]).abs().max() > 1e-3


def test_disable_restores_stock():
    model = build_llama()
    inputs = llama_inputs()
    stock = logits(model, inputs)

    enable_amplification(model, [0, 1], 2.0, IMAGE_TOKEN_ID)
    disable_amplification(model)

    assert model.config._attn_implementation == "sdpa"
    assert amplification_settings(model) is None
    assert not model._forward_pre_hooks
    assert not model.model._forward_pre_hooks
    assert not model._forward_hooks
    assert not model.model._forward_hooks
    assert all(not hasattr(layer.self_attn, "mmsy_amplification") for layer in model.model.layers)
    assert torch.equal(logits(model, inputs), stock)


def test_disable_without_amplification_is_noop():
    model = build_llama("eager")
    disable_amplification(model)

    assert model.config._attn_implementation == "eager"
    assert amplification_settings(model) is None


def test_enable_replaces_earlier_settings():
    model = build_llama("eager")
    enable_amplification(model, [0], 2.0, IMAGE_TOKEN_ID)
    enable_amplification(model, [1, 3], 5.0, 7)

    settings = amplification_settings(model)
    assert settings.layers == (1, 3)
    assert settings.alpha == 5.0
    assert settings.image_token_id == 7
    assert settings.base_implementation == "eager"
    assert len(model._forward_pre_hooks) == 1

    disable_amplification(model)
    assert model.config._attn_implementation == "eager"


def test_context_manager_disables_on_error():
    model = build_llama()
    with pytest.raises(KeyError), amplification(model, [0], 2.0, IMAGE_TOKEN_ID):
        assert amplification_settings(model).alpha == 2.0
        raise KeyError("inside the block")

    assert amplification_settings(model) is None
    assert model.config._attn_implementation == "sdpa"


def test_inputs_embeds_without_ids_raises():
    model = build_llama()
    inputs_embeds = model.get_input_embeddings()(PROMPTS[:1])

    with amplification(model, [0], 1.0, IMAGE_TOKEN_ID), torch.no_grad():
        model(inputs_embeds=inputs_embeds)  # alpha = 1 needs no image positions
    with amplification(model, [0], 2.0, IMAGE_TOKEN_ID), torch.no_grad():
        model(input_ids=PROMPTS[:1])
        with pytest.raises(RuntimeError, match="not inputs_embeds alone"):
            model(inputs_embeds=inputs_embeds)


@pytest.mark.parametrize("return_dict", [True, False])
def test_manual_continuation_matches_recompute(return_dict):
    model = build_llama()
    prompt = PROMPTS[:1]
    enable_amplification(model, [0, 3], 4.0, IMAGE_TOKEN_ID)

    with torch.no_grad():
        full = model(input_ids=prompt, use_cache=False).logits[:, -1]
        prefill = model(input_ids=prompt[:, :-1], use_cache=True, return_dict=return_dict)
        cache = prefill.cache if return_dict else prefill[1]
        step = model(input_ids=prompt[:, -1:], cache=cache, return_dict=return_dict)
        step_logits = step.logits if return_dict else step[0]

    assert torch.allclose(step_logits[:, -1], full, atol=1e-6, rtol=0)


def test_continuation_from_other_cache_raises():
    model = build_llama()
    prompt = PROMPTS[:1]
    enable_amplification(model, [0], 4.0, IMAGE_TOKEN_ID)

    with torch.no_grad():
        earlier = model(input_ids=prompt[:, :-1], use_cache=True)
        model(input_ids=PROMPTS[1:], use_cache=True)
        with pytest.raises(RuntimeError, match="was not returned by the last forward"):
            model(input_ids=prompt[:, -1:], cache=earlier.cache)


def test_alpha_one_accepts_any_cache():
    model = build_llama()
    prompt = PROMPTS[:1]

    with torch.no_grad():
        earlier = model(input_ids=prompt[:, :-1], use_cache=True)
        stock = model(input_ids=prompt, use_cache=False).logits[:, -1]
        with amplification(model, [0], 1.0, IMAGE_TOKEN_ID):
            step = model(input_ids=prompt[:, -1:], cache=earlier.cache).logits[:, -1]

    assert torch.allclose(step, stock, atol=1e-6, rtol=0)


def test_inner_model_call_records_image_keys():
    model = build_llama()
    inputs = llama_inputs()
    with torch.no_grad():
        with amplification(model, [1], 3.0, IMAGE_TOKEN_ID):
            through_wrapper = model(**inputs).logits
            inner_hidden = model.model(**inputs).last_hidden_state

    assert torch.allclose(model.lm_head(inner_hidden), through_wrapper, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"alpha": 0.0}, "alpha must be a finite number above 0"),
        ({"alpha": -2.0}, "alpha must be a finite number above 0"),
        ({"alpha": math.inf}, "alpha must be a finite number above 0"),
        ({"alpha": math.nan}, "alpha must be a finite number above 0"),
        ({"layers": []}, "layers is empty"),
        ({"layers": [4]}, "layer 4 is out of range: valid layers are 0-3"),
        ({"layers": [-1]}, "layer -1 is out of range"),
        ({"image_token_id": -1}, "image_token_id must be a non-negative integer"),
        ({"image_token_id": 5.0}, "image_token_id must be a non-negative integer"),
    ],
)
def test_enable_rejects_invalid_arguments(arguments, message):
    model = build_llama()
    settings = {"layers": [0], "alpha": 2.0, "image_token_id": IMAGE_TOKEN_ID, **arguments}

    with pytest.raises(ValueError, match=message):
        enable_amplification(model, **settings)
    assert amplification_settings(model) is None
    assert model.config._attn_implementation == "sdpa"


def test_enable_rejects_model_without_decoder_layers():
    with pytest.raises(ValueError, match="cannot find decoder layers"):
        enable_amplification(torch.nn.Linear(4, 4), [0], 2.0, IMAGE_TOKEN_ID)


def test_config_image_token_id_errors_for_text_config():
    with pytest.raises(ValueError, match="has no image_token_id or image_token_index"):
        config_image_token_id(LlamaConfig())


def test_llava_amplification_end_to_end(tmp_path):
    model, inputs = load_tiny_vlm("llava", tmp_path)
    image_token_id = config_image_token_id(model.config)
    num_layers = count_decoder_layers(model)
    layers = [num_layers - 1]
    stock = logits(model, inputs)
    expected = reference_logits(model, inputs, layers, 3.0, image_token_id)

    enable_amplification(model, layers, 3.0, image_token_id)
    amplified = logits(model, inputs)
    state = model.get_decoder().layers[0].self_attn.mmsy_amplification.state

    assert "pixel_values" in inputs
    assert torch.equal(state.image_key_mask, inputs["input_ids"] == image_token_id)
    assert int(state.image_key_mask.sum()) == 16
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert model.config.text_config._attn_implementation == AMPLIFIED_SDPA
    assert (amplified - stock).abs().max() > 1e-3
    assert torch.allclose(amplified, expected, atol=1e-5, rtol=0)

    # Random weights may emit the image token, which LLaVA rejects without image features for it.
    no_image_token = {"bad_words_ids": [[image_token_id]]}
    cached = generate(model, inputs, use_cache=True, **no_image_token)
    recomputed = generate(model, inputs, use_cache=False, **no_image_token)
    assert torch.equal(cached.sequences, recomputed.sequences)

    disable_amplification(model)
    assert torch.equal(logits(model, inputs), stock)


@pytest.mark.parametrize("name", ["llava_next", "qwen2_vl", "idefics3"])
def test_vlm_architectures_match_reference(name, tmp_path):
    model, inputs = load_tiny_vlm(name, tmp_path)
    image_token_id = config_image_token_id(model.config)
    last_layer = [count_decoder_layers(model) - 1]
    stock = logits(model, inputs)
    expected = reference_logits(model, inputs, last_layer, 3.0, image_token_id)

    with amplification(model, last_layer, 1.0, image_token_id):
        identity = logits(model, inputs)
    enable_amplification(model, last_layer, 3.0, image_token_id)
    amplified = logits(model, inputs)

    assert int((inputs["input_ids"] == image_token_id).sum()) >= 4
    assert torch.allclose(identity, stock, atol=1e-6, rtol=0)
    assert (amplified - stock).abs().max() > 1e-3
    assert torch.allclose(amplified, expected, atol=1e-5, rtol=0)

    no_image_token = {"bad_words_ids": [[image_token_id]]}
    cached = generate(model, inputs, use_cache=True, **no_image_token)
    recomputed = generate(model, inputs, use_cache=False, **no_image_token)
    assert torch.equal(cached.sequences, recomputed.sequences)
