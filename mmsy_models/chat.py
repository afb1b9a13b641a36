"""Chat messages for the adapter: normalisation, images, prompts and multi-round history.

lmms-eval chat tasks return messages from ``doc_to_messages`` as a list of
``{"role": ..., "content": [...]}`` dicts whose content items are
``{"type": "text", "text": ...}`` or ``{"type": "image", "url": ...}``
(``lmms_eval.protocol.ChatMessages``). The adapter normalises them into the
same shape with decoded RGB images under ``"image"``, renders them with the
processor's chat template, and keeps the history of a multi-round dialogue.
"""

import io
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

ROLES = ("system", "user", "assistant")
IMAGE_KEYS = ("url", "image", "path")


class InvalidImageError(ValueError):
    """An image in a request that cannot be opened or decoded."""


class MissingChatTemplateError(ValueError):
    """A processor without a chat template."""


def load_image(value) -> Image.Image:
    """Decode an image content value into a loaded RGB ``PIL.Image``.

    Accepts a ``PIL.Image``, a file path, raw bytes, or a ``datasets`` image dict
    (``{"bytes": ..., "path": ...}``). Raises ``InvalidImageError`` when the
    value cannot be decoded.
    """
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, (str, os.PathLike)):
            image = Image.open(Path(value))
        elif isinstance(value, (bytes, bytearray)):
            image = Image.open(io.BytesIO(value))
        elif isinstance(value, dict) and value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = Image.open(Path(value["path"]))
        else:
            raise InvalidImageError(f"unsupported image value of type {type(value).__name__}")
        image.load()
        return image.convert("RGB")
    except InvalidImageError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidImageError(f"{type(error).__name__}: {error}") from error


def normalize_messages(messages) -> list[dict]:
    """Return ``messages`` as a list of ``{"role", "content": [items]}`` dicts with decoded images.

    String content becomes one text item. Image items become
    ``{"type": "image", "image": PIL.Image}``. Raises ``ValueError`` for an
    unknown role or an item type other than text and image (video and audio are
    not supported), ``TypeError`` when ``messages`` is not a list, and
    ``InvalidImageError`` for an image that fails to decode.
    """
    if hasattr(messages, "model_dump"):
        messages = messages.model_dump()["messages"]
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        raise TypeError(f"doc_to_messages returned {type(messages).__name__}, expected a list of message dicts")

    normalized = []
    for message in messages:
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message role {role!r} is not one of {', '.join(ROLES)}")
        content = message.get("content")
        items = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        normalized.append({"role": role, "content": [_normalize_item(item) for item in items]})
    return normalized


def _normalize_item(item) -> dict:
    if hasattr(item, "model_dump"):
        item = item.model_dump()
    kind = item.get("type")
    if kind == "text":
        return {"type": "text", "text": str(item.get("text", ""))}
    if kind == "image":
        value = next((item[key] for key in IMAGE_KEYS if item.get(key) is not None), None)
        if value is None:
            raise InvalidImageError(f"image item has none of the keys {', '.join(IMAGE_KEYS)}")
        return {"type": "image", "image": load_image(value)}
    raise ValueError(f"content type {kind!r} is not supported by mmsy_hf: only text and image items are")


def message_images(messages: Sequence[dict]) -> list[Image.Image]:
    """Return the images of normalised ``messages`` in prompt order."""
    return [item["image"] for message in messages for item in message["content"] if item["type"] == "image"]


def template_messages(messages: Sequence[dict]) -> list[dict]:
    """Return normalised messages with image items reduced to ``{"type": "image"}`` for a chat template."""
    return [
        {
            "role": message["role"],
            "content": [item if item["type"] == "text" else {"type": "image"} for item in message["content"]],
        }
        for message in messages
    ]


def render_prompt(processor, messages: Sequence[dict]) -> str:
    """Render normalised messages with the processor's chat template, ending with the generation prompt."""
    return processor.apply_chat_template(template_messages(messages), tokenize=False, add_generation_prompt=True)


def assistant_message(text: str) -> dict:
    """Return the assistant turn that contains a generated reply."""
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _same_item(first: dict, second: dict) -> bool:
    if first["type"] != second["type"]:
        return False
    if first["type"] == "text":
        return first["text"] == second["text"]
    image_a, image_b = first["image"], second["image"]
    if image_a is image_b:
        return True
    return image_a.size == image_b.size and image_a.mode == image_b.mode and image_a.tobytes() == image_b.tobytes()


def _same_message(first: dict, second: dict) -> bool:
    if first["role"] != second["role"] or len(first["content"]) != len(second["content"]):
        return False
    return all(_same_item(a, b) for a, b in zip(first["content"], second["content"]))


def starts_with(messages: Sequence[dict], prefix: Sequence[dict]) -> bool:
    """Return whether normalised ``messages`` begin with the normalised ``prefix`` messages."""
    if len(messages) < len(prefix):
        return False
    return all(_same_message(a, b) for a, b in zip(messages, prefix))


def next_round_messages(previous: Sequence[dict], previous_output: str, returned: Sequence[dict]) -> list[dict]:
    """Return the messages of the next round from what a task's ``doc_to_messages`` returned.

    A task may return the whole dialogue so far (it then starts with the
    previous round's messages, as the MM-SY task does), which is used as it
    is. Otherwise the returned messages are the new turns, and they are
    appended to the previous messages and the model's previous answer as an
    assistant turn.
    """
    if starts_with(returned, previous):
        return list(returned)
    return [*previous, assistant_message(previous_output), *returned]


def read_chat_template(value: str) -> str:
    """Return a chat template given as a file path or as the Jinja text itself."""
    path = Path(value).expanduser()
    if "{" not in value and path.is_file():
        return path.read_text(encoding="utf-8")
    if "{" not in value:
        raise FileNotFoundError(f"chat_template file not found: {value} (pass a path to a Jinja file or the template text)")
    return value


def ensure_chat_template(processor, pretrained: str, override: str | None = None) -> None:
    """Give ``processor`` a chat template: ``override`` if set, else its own, else its tokenizer's.

    ``override`` is a Jinja file path or the template text. Raises
    ``MissingChatTemplateError`` when no template is found.
    """
    if override:
        processor.chat_template = read_chat_template(override)
        return
    if getattr(processor, "chat_template", None):
        return

    tokenizer_template = getattr(getattr(processor, "tokenizer", None), "chat_template", None)
    if tokenizer_template:
        processor.chat_template = tokenizer_template
        return
    raise MissingChatTemplateError(
        f"the processor of {pretrained} has no chat template, so mmsy_hf cannot render chat messages: "
        "pass one with --model_args pretrained=...,chat_template=PATH (a Jinja file)"
    )
