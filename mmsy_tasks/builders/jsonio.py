"""Reading source JSON files with errors that name the file and the fix."""

import json
from pathlib import Path
from typing import Any

from mmsy_tasks.builders.errors import MalformedSourceError, SourceNotFoundError


def require_dir(path: Path, description: str, fix: str) -> Path:
    """Return ``path`` when it is a directory, else raise ``SourceNotFoundError`` with ``fix``."""
    if not path.is_dir():
        raise SourceNotFoundError(f"{description} not found at {path}: {fix}")
    return path


def read_json(path: Path, description: str, fix: str) -> Any:
    """Parse the JSON file at ``path``; ``description`` and ``fix`` go into the error messages."""
    if not path.is_file():
        raise SourceNotFoundError(f"{description} not found at {path}: {fix}")
    try:
        with path.open("r", encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise MalformedSourceError(
            f"{description} at {path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
            "replace the file with an intact copy"
        ) from error
    except UnicodeDecodeError as error:
        raise MalformedSourceError(f"{description} at {path} is not UTF-8 text ({error}); replace the file") from error


def malformed_row(path: Path, row_index: int, row: Any, problem: str) -> MalformedSourceError:
    """Return the error for row ``row_index`` of ``path``, quoting the start of the row."""
    excerpt = repr(row)
    if len(excerpt) > 200:
        excerpt = excerpt[:200] + "..."
    return MalformedSourceError(f"{path}: row {row_index} {problem}: {excerpt}")
