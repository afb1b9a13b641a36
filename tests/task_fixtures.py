"""Small MM-SY items and dataset directories for the protocol, CLI and lmms-eval tests.

Items are built in code with PIL images. ``write_dataset_dir`` saves them in
the layout that ``mmsy build`` writes (a ``DatasetDict`` with a ``test``
split, saved with ``save_to_disk``, plus ``manifest.json``).
``lmms_eval_in_process`` is a fixture for running ``mmsy eval`` in the test
process; a test module imports it to use it.
"""

import functools
import json
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest
from loguru import logger
from PIL import Image

from mmsy_tasks.builders import BUILDER_VERSION
from mmsy_tasks.builders.writer import MANIFEST_FORMAT
from mmsy_tasks.records import FEATURES, TONES, Item

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


def make_item(
    item_id: str,
    category: str = "color",
    options: tuple[str, ...] = ("red", "green", "blue", "yellow"),
    answer_idx: int = 0,
    wrong_idx: int = 1,
    template: int = 0,
    source: str = "easyvqa",
) -> Item:
    """Return one item whose image is a square filled with the correct option's color (gray otherwise)."""
    fill = COLORS.get(options[answer_idx], (128, 128, 128))
    return Item(
        id=item_id,
        category=category,
        question=f"What is shown in image {item_id}?",
        options=list(options),
        answer_idx=answer_idx,
        wrong_idx=wrong_idx,
        tone_templates={tone: template + offset for offset, tone in enumerate(TONES)},
        image=Image.new("RGB", (24, 24), fill),
        source=source,
        source_id=item_id,
    )


def items_dataset(items: list[Item]) -> datasets.Dataset:
    """Return the items as a ``datasets.Dataset`` of ``records.FEATURES``."""
    return rows_dataset([item.to_row() for item in items])


def rows_dataset(rows: list[dict]) -> datasets.Dataset:
    """Return rows of ``records.FEATURES`` (possibly invalid ones) as a ``datasets.Dataset``."""
    return datasets.Dataset.from_list(rows, features=FEATURES)


def write_dataset_dir(directory: Path, items: list[Item], source: str) -> Path:
    """Save the items as an MM-SY dataset directory and return it."""
    dataset = datasets.DatasetDict({"test": items_dataset(items)})
    dataset.save_to_disk(str(directory))
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": source,
        "split": "test" if source == "easyvqa" else "val",
        "seed": 0,
        "builder_version": BUILDER_VERSION,
        "num_items": len(items),
        "counts": dict(Counter(item.category for item in items)),
        "option_counts": {},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return directory


def easyvqa_items(per_category: int = 2) -> list[Item]:
    """Return items of the three easy-VQA categories. The first of each category has answer (A).

    Within a category, item ``k`` has its correct option at index
    ``k % n_options``, so a model that always answers (A) is right on the
    first item and wrong on the second.
    """
    layouts = {
        "color": ("red", "green", "blue", "yellow"),
        "object_recognition": ("circle", "rectangle", "triangle"),
        "object_presence": ("yes", "no"),
    }
    items = []
    for category, options in layouts.items():
        for k in range(per_category):
            answer_idx = k % len(options)
            wrong_idx = (answer_idx + 1) % len(options)
            items.append(
                make_item(f"easyvqa-{category}-{k}", category, options, answer_idx, wrong_idx, template=k, source="easyvqa")
            )
    return items


def tdiuc_items(categories: tuple[str, ...]) -> list[Item]:
    """Return one item per TDIUC category."""
    return [make_item(f"tdiuc-{category}", category, source="tdiuc") for category in categories]


@pytest.fixture
def lmms_eval_in_process(monkeypatch):
    """Prepare in-process ``mmsy eval`` runs with the scripted models, and undo what they change.

    The runs index only the MM-SY task folder, because scanning lmms-eval's
    own tasks costs seconds per run.
    """
    import lmms_eval.__main__ as lmms_main
    from scripted_chat_model import register

    register()
    monkeypatch.setattr(lmms_main, "TaskManager", functools.partial(lmms_main.TaskManager, include_defaults=False))
    monkeypatch.delenv("MMSY_PROMPT", raising=False)
    argv = list(sys.argv)
    yield
    # cli_evaluate replaces loguru's handlers with one on this test's captured stdout.
    logger.remove()
    logger.add(sys.stderr)
    sys.argv = argv
