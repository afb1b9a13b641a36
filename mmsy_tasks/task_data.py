"""The dataset directories that the MM-SY lmms-eval tasks read.

A task names its source (``easyvqa`` or ``tdiuc``) and reads the directory
that ``mmsy build --source SOURCE`` writes by default,
``$MMSY_HOME/data/SOURCE`` (``MMSY_HOME`` defaults to ``~/.cache/mmsy``).
Setting ``MMSY_HOME`` is the one way to point the tasks at another location.

easy-VQA ships inside the ``easy-vqa`` package, so a missing easy-VQA
directory is built on first use. TDIUC is data that users bring, so a missing
TDIUC directory raises ``DatasetNotFoundError`` with the command that builds it.
"""

from pathlib import Path

import datasets
from loguru import logger

from mmsy_tasks import paths

BUILT_ON_FIRST_USE = ("easyvqa",)

BUILD_COMMANDS = {
    "easyvqa": "mmsy build --source easyvqa",
    "tdiuc": "mmsy build --source tdiuc --root /path/to/TDIUC",
}


class DatasetNotFoundError(FileNotFoundError):
    """An MM-SY dataset directory that a task needs does not exist."""


def dataset_dir(source: str) -> Path:
    """Return the directory that the tasks of ``source`` read."""
    return paths.default_dataset_dir(source)


def build_command(source: str) -> str:
    """Return the shell command that builds the dataset of ``source`` where the tasks read it."""
    return BUILD_COMMANDS.get(source, f"mmsy build --source {source}")


def is_dataset_dir(directory: Path) -> bool:
    """Return whether ``directory`` contains a saved ``datasets.DatasetDict``."""
    return (directory / "dataset_dict.json").is_file()


def ensure_dataset_dir(source: str) -> Path:
    """Return the dataset directory of ``source``, building easy-VQA there when it is missing."""
    directory = dataset_dir(source)
    if is_dataset_dir(directory):
        return directory

    if source not in BUILT_ON_FIRST_USE:
        raise DatasetNotFoundError(
            f"MM-SY {source} dataset not found at {directory}. Build it with `{build_command(source)}`, "
            f"or set {paths.HOME_ENV} to the MM-SY home whose data/{source} holds it."
        )

    logger.info(f"MM-SY {source} dataset not found at {directory}; building it now (first use)")
    _build(source, directory)
    logger.info(f"MM-SY {source} dataset built at {directory}")
    return directory


def _build(source: str, directory: Path) -> None:
    from mmsy_tasks.builders import build_dataset

    build_dataset(source=source, out=directory)


def load_items(source: str, category: str, split: str = "test") -> datasets.Dataset:
    """Return the items of one category from the dataset directory of ``source``.

    Raises ``DatasetNotFoundError`` for a missing TDIUC directory and
    ``ValueError`` when the split or the category has no items.
    """
    directory = ensure_dataset_dir(source)
    dataset = datasets.load_from_disk(str(directory))
    if split not in dataset:
        raise ValueError(
            f"MM-SY dataset at {directory} has no {split!r} split (splits: {', '.join(dataset)}); "
            f"rebuild it with `{build_command(source)}`"
        )

    items = dataset[split]
    rows = [index for index, value in enumerate(items["category"]) if value == category]
    if not rows:
        raise ValueError(
            f"MM-SY dataset at {directory} has no items of category {category!r}; "
            f"rebuild it with `{build_command(source)}`"
        )
    return items.select(rows)
