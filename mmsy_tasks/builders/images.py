"""Reading source images for a build: embedded bytes for datasets, PIL images in memory."""

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError


class ImageReadError(Exception):
    """An image that is missing or cannot be decoded; ``reason`` is ``missing`` or ``corrupt``."""

    def __init__(self, path: Path, reason: str, detail: str):
        super().__init__(f"{reason} image {path}: {detail}")
        self.path = path
        self.reason = reason
        self.detail = detail


def read_image(path: Path) -> tuple[bytes, Image.Image]:
    """Return the file's bytes and the image decoded from them, in RGB.

    Decoding the whole image (not only its header) is what catches a
    truncated or otherwise corrupt file.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise ImageReadError(path, "missing", "file not found") from error
    except OSError as error:
        raise ImageReadError(path, "missing", str(error)) from error

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            decoded = image.convert("RGB") if image.mode != "RGB" else image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, "corrupt", str(error) or type(error).__name__) from error
    return data, decoded


def embedded_image(data: bytes) -> dict:
    """Return the ``datasets.Image`` value that stores ``data`` itself, with no source path."""
    return {"bytes": data, "path": None}
