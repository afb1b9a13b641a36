"""The model organism's tokenizer, chat template, processor and LLaVA model.

The tokenizer is word-level: it lower-cases the text, splits it on
whitespace and at every punctuation mark, and maps each word to an id.
Words outside the vocabulary (questions of other datasets) map to
``<unk>``. The same tokenizer runs in training and at inference, so both
see identical token ids for the same text.

The chat template renders every turn as ``<|role|>`` followed by its
content and ``</s>``, writes ``<image>`` where an image item sits, and ends
with ``<|assistant|>`` when a generation prompt is requested. The processor
expands each ``<image>`` into one token per visual token of the vision tower.
"""

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from mmsy_tasks.dialogue import MITIGATION_INSTRUCTION, ROUND1_INSTRUCTION, TONE_TEMPLATES
from mmsy_tasks.records import LETTERS

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
IMAGE_TOKEN = "<image>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN, *ROLE_TOKENS.values())

# Each turn is <|role|>, then its items (images as <image>, texts after a
# space), then </s>. Content may be a string or a list of typed items.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>' -}}"
    "{%- if message['content'] is string -%}"
    "{{- ' ' + message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- ' ' + item['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- eos_token -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)

# CLIP normalisation to [-1, 1]: the organism learns its own features, so
# the OpenAI CLIP statistics have no meaning here.
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


def _normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # BertPreTokenizer splits on whitespace and isolates every punctuation mark.
    return pre_tokenizers.BertPreTokenizer()


def split_words(text: str) -> list[str]:
    """Split ``text`` into the words that the organism's tokenizer looks up."""
    normalized = _normalizer().normalize_str(text)
    return [word for word, _ in _pre_tokenizer().pre_tokenize_str(normalized)]


def fixed_texts() -> list[str]:
    """Return the dialogue texts that every organism vocabulary covers.

    These are the round-1 instruction, the prompt mitigation instruction,
    every round-2 template with its placeholders removed, and the option
    letters.
    """
    templates = [
        template.replace("{letter}", "").replace("{option}", "")
        for templates in TONE_TEMPLATES.values()
        for template in templates
    ]
    return [ROUND1_INSTRUCTION, MITIGATION_INSTRUCTION, *templates, " ".join(LETTERS)]


def build_vocabulary(texts: Iterable[str]) -> dict[str, int]:
    """Return the word-to-id map: special tokens first, then the words of ``texts`` sorted.

    Sorting makes the vocabulary depend only on the set of words, so the
    same data always gives the same ids.
    """
    words = set()
    for text in texts:
        words.update(split_words(text))
    words.difference_update(SPECIAL_TOKENS)
    ordered = [*SPECIAL_TOKENS, *sorted(words)]
    return {word: index for index, word in enumerate(ordered)}


def build_tokenizer(vocabulary: dict[str, int]) -> PreTrainedTokenizerFast:
    """Wrap a word-level ``tokenizers`` model over ``vocabulary`` as a transformers tokenizer."""
    missing = [token for token in SPECIAL_TOKENS if token not in vocabulary]
    if missing:
        raise ValueError(f"vocabulary lacks the special tokens {missing}; build it with build_vocabulary()")

    backend = Tokenizer(WordLevel(vocab=vocabulary, unk_token=UNK_TOKEN))
    backend.normalizer = _normalizer()
    backend.pre_tokenizer = _pre_tokenizer()

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    # Special tokens are matched before normalisation, so "<|user|>" stays one token.
    tokenizer.add_special_tokens({"additional_special_tokens": list(ROLE_TOKENS.values())})
    return tokenizer


def visual_token_count(image_size: int, patch_size: int) -> int:
    """Return the number of visual tokens per image: one per patch plus CLIP's class token."""
    return (image_size // patch_size) ** 2 + 1


def build_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int) -> LlavaProcessor:
    """Build the LLaVA processor: a CLIP image processor at ``image_size`` and the chat template.

    The model keeps CLIP's class token (``vision_feature_select_strategy="full"``),
    so the processor adds one image token per image on top of one per patch.
    """
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    image_processor = CLIPImageProcessor(
        size={"height": image_size, "width": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=False,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    image_size: int,
    patch_size: int,
    vision_hidden_size: int,
    vision_layers: int,
    vision_heads: int,
    text_hidden_size: int,
    text_layers: int,
    text_heads: int,
    max_positions: int,
) -> LlavaForConditionalGeneration:
    """Build a randomly initialised LLaVA model: a CLIP vision tower and a Llama language model."""
    vision_config = CLIPVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=4 * vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden_size,
    )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden_size,
        intermediate_size=4 * text_hidden_size,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=visual_token_count(image_size, patch_size),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def unknown_words(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> set[str]:
    """Return the words of ``texts`` that the tokenizer maps to ``<unk>``."""
    vocabulary = tokenizer.get_vocab()
    return {word for text in texts for word in split_words(text) if word not in vocabulary}
