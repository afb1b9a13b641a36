"""The MM-SY dataset directory: writing it in one step and loading it back.

A dataset directory is a ``datasets.DatasetDict`` with one split, ``test``,
saved with ``save_to_disk``, with every image embedded as bytes so that
nothing points back into the source folder. ``manifest.json`` beside it
records the source, split, seed, builder version, option counts, and the
counts of items per category and of skipped and excluded questions.

A build writes into a hidden sibling folder and renames it into place only
after the manifest is written, so an interrupted build leaves no directory
under the output name. ``load_dataset_dir`` treats a directory without a
valid manifest as incomplete.
"""

import errno
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from mmsy_tasks.builders import BUILDER_VERSION
from mmsy_tasks.builders.errors import BuildError, DatasetDirError, OutputExistsError
from mmsy_tasks.builders.plan import BuildPlan
from mmsy_tasks.records import FEATURES, validate_row

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "mmsy-dataset"
DATASET_SPLIT = "test"
REQUIRED_MANIFEST_KEYS = ("format", "source", "split", "seed", "builder_version", "num_items", "counts", "option_counts")
REBUILD_HINT = "mmsy build --source easyvqa|tdiuc|vqa-json"


@dataclass(frozen=True)
class BuildResult:
    """The directory that a build wrote, with its items per category and the questions it left out."""

    path: Path
    counts: dict[str, int]
    skipped: dict[str, int]
    excluded: dict[str, int]

    @property
    def num_items(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """Return the closing line of a build."""
        counts = ", ".join(f"{category} {count}" for category, count in self.counts.items())
        line = f"wrote {self.num_items} items to {self.path} ({counts})"
        line += f"; skipped {sum(self.skipped.values())} questions"
        if self.skipped:
            line += " (" + ", ".join(f"{reason} {count}" for reason, count in self.skipped.items()) + ")"
        if self.excluded:
            excluded = ", ".join(f"{question_type} {count}" for question_type, count in self.excluded.items())
            line += f"; left out {sum(self.excluded.values())} questions of unused types ({excluded})"
        return line


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Raise ``OutputExistsError`` unless ``out`` is free or may be replaced.

    With ``overwrite``, only an earlier MM-SY dataset directory (one with a
    manifest) or an empty directory is replaced, so a mistyped ``--out``
    cannot delete an unrelated folder.
    """
    out = Path(out)
    if not out.exists():
        return
    if not overwrite:
        raise OutputExistsError(f"output directory {out} already exists; pass --overwrite to replace it or choose another --out")
    if not out.is_dir():
        raise OutputExistsError(f"output path {out} is a file, not a dataset directory; choose another --out")
    if not (out / MANIFEST_NAME).is_file() and any(out.iterdir()):
        raise OutputExistsError(
            f"output directory {out} is not empty and has no {MANIFEST_NAME}, so it is not an MM-SY dataset "
            "and --overwrite does not replace it; choose another --out"
        )


def write_dataset_dir(plan: BuildPlan, out: Path, overwrite: bool = False, progress: bool = True) -> BuildResult:
    """Build the items of ``plan`` and write them as a dataset directory at ``out``.

    Returns what was written; ``BuildResult.summary()`` is the line to show
    the user.
    """
    out = Path(out).expanduser().absolute()
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _give_default_permissions(staging)
        rows, counts = _collect_rows(plan, progress)
        dataset = datasets.Dataset.from_list(rows, features=FEATURES)
        _save(datasets.DatasetDict({DATASET_SPLIT: dataset}), staging, progress)
        result = BuildResult(
            path=out,
            counts={category: counts[category] for category in plan.categories},
            skipped=plan.skips.as_dict(),
            excluded=dict(sorted(plan.excluded.items())),
        )
        _write_manifest(staging, plan, result)
        check_output_dir(out, overwrite)
        _move_into_place(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    return result


def _give_default_permissions(directory: Path) -> None:
    # mkdtemp creates the directory readable by its owner only; a dataset
    # directory gets the permissions of any new directory under the umask.
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)


def _save(dataset_dict: datasets.DatasetDict, directory: Path, progress: bool) -> None:
    was_disabled = datasets.utils.are_progress_bars_disabled()
    if not progress:
        datasets.utils.disable_progress_bars()
    try:
        dataset_dict.save_to_disk(str(directory))
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()


def _collect_rows(plan: BuildPlan, progress: bool) -> tuple[list[dict], Counter]:
    # NOTE: every row, image bytes included, stays in memory until the
    # dataset is written. That suits builds of a few thousand items, but
    # --per-category all on a large source needs RAM for all its images.
    rows = []
    counts: Counter = Counter()
    for item in plan.iter_items(image_mode="bytes", progress=progress):
        row = item.to_row()
        validate_row(row)
        rows.append(row)
        counts[item.category] += 1

    if not rows:
        raise BuildError(
            f"no items were built from {plan.source} {plan.split}: every question was skipped "
            f"({plan.skips.as_dict() or 'no questions in the mapped categories'}); "
            "check the log above for the reasons and the source folder"
        )
    return rows, counts


def _write_manifest(directory: Path, plan: BuildPlan, result: BuildResult) -> None:
    # No timestamp or absolute path goes in, so that rebuilding the same
    # input writes the same bytes.
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": plan.source,
        "split": plan.split,
        "seed": plan.seed,
        "per_category": plan.per_category,
        "builder_version": BUILDER_VERSION,
        "dataset_split": DATASET_SPLIT,
        "num_items": result.num_items,
        "counts": result.counts,
        "option_counts": plan.option_counts,
        "skipped": result.skipped,
        "excluded": result.excluded,
    }
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _move_into_place(staging: Path, out: Path, overwrite: bool) -> None:
    if not (overwrite and out.exists()):
        try:
            os.rename(staging, out)
        except OSError as error:
            # Another build (a parallel run or another rank) wrote ``out``
            # after check_output_dir looked.
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise OutputExistsError(f"output directory {out} was written by another build meanwhile") from error
            raise
        return

    previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.previous-", dir=out.parent))
    previous.rmdir()
    os.rename(out, previous)
    try:
        os.rename(staging, out)
    except OSError:
        os.rename(previous, out)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def read_manifest(path: Path) -> dict[str, Any]:
    """Return the manifest of the dataset directory ``path``, raising ``DatasetDirError`` if it is invalid."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetDirError(f"no MM-SY dataset directory at {path}; build it with `{REBUILD_HINT} --out {path}`")

    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise DatasetDirError(
            f"{path} has no {MANIFEST_NAME}, so it is not a complete MM-SY dataset (an interrupted build or "
            f"another folder); rebuild it with `{REBUILD_HINT} --out {path} --overwrite`"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetDirError(
            f"{manifest_path} is not valid JSON ({error}); rebuild with `{REBUILD_HINT} --out {path} --overwrite`"
        ) from error

    missing = [key for key in REQUIRED_MANIFEST_KEYS if not isinstance(manifest, dict) or key not in manifest]
    if missing or manifest.get("format") != MANIFEST_FORMAT:
        raise DatasetDirError(
            f"{manifest_path} is not an MM-SY manifest (missing {', '.join(missing) or 'nothing'}, "
            f"format {manifest.get('format') if isinstance(manifest, dict) else None!r}); "
            f"rebuild with `{REBUILD_HINT} --out {path} --overwrite`"
        )
    return manifest


def load_dataset_dir(path: Path) -> datasets.DatasetDict:
    """Load a dataset directory written by ``mmsy build``, after checking it against its manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    rebuild = f"mmsy build --source {manifest['source']} --out {path} --overwrite"

    try:
        dataset_dict = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise DatasetDirError(f"dataset at {path} cannot be loaded ({error}); rebuild it with `{rebuild}`") from error
    if not isinstance(dataset_dict, datasets.DatasetDict) or DATASET_SPLIT not in dataset_dict:
        raise DatasetDirError(f"dataset at {path} has no {DATASET_SPLIT!r} split; rebuild it with `{rebuild}`")

    split = dataset_dict[DATASET_SPLIT]
    missing_columns = sorted(set(FEATURES) - set(split.column_names))
    if missing_columns:
        raise DatasetDirError(f"dataset at {path} lacks columns {missing_columns}; rebuild it with `{rebuild}`")
    if split.num_rows != manifest["num_items"]:
        raise DatasetDirError(
            f"dataset at {path} has {split.num_rows} rows but its manifest lists {manifest['num_items']}; "
            f"rebuild it with `{rebuild}`"
        )
    return dataset_dict
