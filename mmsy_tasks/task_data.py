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
from mmsy_tasks.builders.writer import DATASET_SPLIT, MANIFEST_NAME, load_dataset_dir

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


def ensure_dataset_dir(source: str) -> Path:
    """Return the dataset directory of ``source``, building easy-VQA there when it is missing."""
    directory = dataset_dir(source)
    if directory.exists():
        return directory

    if source not in BUILT_ON_FIRST_USE:
        raise DatasetNotFoundError(
            f"MM-SY {source} dataset not found at {directory}. Build it with `{build_command(source)}`, "
            f"or set {paths.HOME_ENV} to the MM-SY home whose data/{source} contains it."
        )

    logger.info(f"MM-SY {source} dataset not found at {directory}; building it now (first use)")
    _build_easyvqa(directory)
    return directory


def _build_easyvqa(directory: Path) -> None:
    from mmsy_tasks.builders import easyvqa
    from mmsy_tasks.builders.errors import OutputExistsError
    from mmsy_tasks.builders.writer import write_dataset_dir

    try:
        result = write_dataset_dir(easyvqa.plan_build(), directory)
    except (OutputExistsError, OSError):
        # Another process (another rank, or a parallel run) may have finished
        # the same build first, and then its directory is the one to read.
        if not (directory / MANIFEST_NAME).is_file():
            raise
        logger.info(f"MM-SY easyvqa dataset appeared at {directory} during the build; using it")
        return
    logger.info(f"MM-SY easyvqa dataset: {result.summary()}")


def load_items(source: str, category: str, split: str = DATASET_SPLIT) -> datasets.Dataset:
    """Return the items of one category from the dataset directory of ``source``.

    Raises ``DatasetNotFoundError`` for a missing TDIUC directory,
    ``DatasetDirError`` for an incomplete or inconsistent directory and
    ``ValueError`` when the split or the category has no items.
    """
    directory = ensure_dataset_dir(source)
    dataset = load_dataset_dir(directory)
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
    return _select_rows(items, rows)


def _select_rows(items: datasets.Dataset, rows: list[int]) -> datasets.Dataset:
    # mmsy build writes each category as one block of rows, which select()
    # turns into a slice of the memory-mapped table. Scattered rows would get
    # an indices mapping, which later steps flatten, and datasets writes a
    # flattened copy as a cache file beside the dataset unless it is kept in memory.
    if rows == list(range(rows[0], rows[-1] + 1)):
        return items.select(range(rows[0], rows[-1] + 1))
    return items.select(rows).flatten_indices(keep_in_memory=True)
