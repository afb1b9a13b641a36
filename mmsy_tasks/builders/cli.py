"""``mmsy build``: write an MM-SY dataset directory from easy-VQA, TDIUC or VQA-format JSON.

    mmsy build --source easyvqa
    mmsy build --source easyvqa --split train --per-category all
    mmsy build --source tdiuc --root /data/TDIUC
    mmsy build --source vqa-json --root /data/vqa2 \\
        --questions Questions/v2_OpenEnded_mscoco_val2014_questions.json \\
        --annotations Annotations/v2_mscoco_val2014_annotations.json \\
        --images val2014 --mapping vqa2_types.yaml
"""

import argparse
import sys
import textwrap
from pathlib import Path

from loguru import logger

from mmsy_tasks.builders import easyvqa, tdiuc, vqa_json
from mmsy_tasks.builders.errors import BuildError, InvalidOptionError
from mmsy_tasks.builders.plan import BuildPlan
from mmsy_tasks.builders.writer import check_output_dir, write_dataset_dir
from mmsy_tasks.options import MAX_OPTION_COUNT, MIN_OPTION_COUNT
from mmsy_tasks.paths import default_dataset_dir
from mmsy_tasks.records import EASYVQA_CATEGORIES, TDIUC_CATEGORIES

SOURCES = ("easyvqa", "tdiuc", "vqa-json")
DEFAULT_SPLITS = {"easyvqa": easyvqa.DEFAULT_SPLIT, "tdiuc": tdiuc.DEFAULT_SPLIT, "vqa-json": vqa_json.DEFAULT_SPLIT}
SPLIT_CHOICES = {"easyvqa": easyvqa.SPLITS, "tdiuc": tdiuc.SPLITS}


def build_parser() -> argparse.ArgumentParser:
    epilog = textwrap.fill(
        "Question-type mapping for --source vqa-json: a JSON or YAML object, or --map flags, that maps "
        "each question type (the annotations' --type-field) to one of the categories "
        f"{', '.join(TDIUC_CATEGORIES)}. A type mapped to null (or --map TYPE=) is left out, and a type "
        "that the mapping does not name is skipped and counted.",
        width=79,
    )
    parser = argparse.ArgumentParser(
        prog="mmsy build",
        description=textwrap.fill(
            "Build the MM-SY dataset: multiple-choice questions with seeded options, proposed wrong "
            "options and round-2 templates, written as a datasets directory that the MM-SY lmms-eval "
            "tasks load. Rebuilding with the same input and seed writes identical files.",
            width=79,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog + "\n\nExample YAML mapping:\n  what color is the: color\n  how many: counting\n"
        "  is there a: object_presence",
    )
    parser.add_argument("--source", required=True, choices=SOURCES, help="the data source to build from")
    parser.add_argument(
        "--root",
        type=Path,
        metavar="DIR",
        help=(
            "source folder. easyvqa: a folder laid out like the easy-vqa package's data folder "
            "(default: the installed package); tdiuc: the TDIUC folder that holds Questions/, "
            "Annotations/ and Images/ (required); vqa-json: the folder that relative --questions, "
            "--annotations and --images are resolved against"
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help=(
            "output dataset directory (default: $MMSY_HOME/data/SOURCE, or data/SOURCE-SPLIT for a "
            "split other than the source's default)"
        ),
    )
    parser.add_argument(
        "--split",
        metavar="NAME",
        help="source split: easyvqa test|train (default test), tdiuc val|train (default val), "
        "vqa-json a label for item ids and the manifest (default val)",
    )
    parser.add_argument(
        "--per-category",
        type=_per_category,
        default=150,
        metavar="N|all",
        help="questions per category, or 'all' for every question of the split (default 150)",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the question selection and option draws (default 0)")
    parser.add_argument(
        "--option-count",
        action="append",
        default=[],
        metavar="[CATEGORY=]N",
        help=(
            f"options per question, {MIN_OPTION_COUNT} to {MAX_OPTION_COUNT}, for every category (N) or one "
            "(CATEGORY=N); repeatable. Default 4, and 3 for easy-VQA's object_recognition (it has 3 shapes). "
            "Yes/no questions always get 2 options"
        ),
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing MM-SY dataset at --out")
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")

    vqa = parser.add_argument_group("vqa-json source")
    vqa.add_argument("--questions", type=Path, metavar="FILE", help="VQA-format questions JSON file")
    vqa.add_argument("--annotations", type=Path, metavar="FILE", help="VQA-format annotations JSON file")
    vqa.add_argument("--images", type=Path, metavar="DIR", help="folder of the image files")
    vqa.add_argument("--mapping", type=Path, metavar="FILE", help="JSON or YAML file mapping question types to MM-SY categories")
    vqa.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="TYPE=CATEGORY",
        help="one question-type mapping; repeatable, and added to --mapping",
    )
    vqa.add_argument(
        "--image-pattern",
        metavar="PATTERN",
        default=vqa_json.DEFAULT_IMAGE_PATTERN,
        help="image file name as a Python format string with {image_id} and {question_id} "
        f"(default {vqa_json.DEFAULT_IMAGE_PATTERN!r})",
    )
    vqa.add_argument(
        "--type-field",
        metavar="FIELD",
        default=vqa_json.DEFAULT_TYPE_FIELD,
        help=f"annotation field that contains the question type (default {vqa_json.DEFAULT_TYPE_FIELD!r})",
    )
    return parser


def _per_category(value: str) -> int | None:
    if value == "all":
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is invalid; pass a positive number of questions or 'all'")
    return number


def parse_option_counts(flags: list[str], categories: tuple[str, ...]) -> dict[str, int]:
    """Turn ``--option-count`` flags into ``{category: count}``; a bare ``N`` sets every category."""
    counts: dict[str, int] = {}
    for flag in flags:
        category, separator, number = flag.rpartition("=")
        try:
            count = int(number)
        except ValueError:
            raise InvalidOptionError(f"--option-count {flag!r} is invalid; write N or CATEGORY=N") from None
        if not separator:
            counts.update({name: count for name in categories})
        elif category in categories:
            counts[category] = count
        else:
            raise InvalidOptionError(
                f"--option-count {flag!r} names category {category!r}, which this build does not have; "
                f"use one of {', '.join(categories)}"
            )
    return counts


def _plan(args: argparse.Namespace, parser: argparse.ArgumentParser) -> BuildPlan:
    if args.source == "easyvqa":
        option_counts = parse_option_counts(args.option_count, EASYVQA_CATEGORIES)
        return easyvqa.plan_build(args.split, args.per_category, args.seed, args.root, option_counts)

    if args.source == "tdiuc":
        if args.root is None:
            parser.error(f"--source tdiuc needs --root: {tdiuc.ROOT_FIX.removeprefix('pass --root to ')}")
        option_counts = parse_option_counts(args.option_count, TDIUC_CATEGORIES)
        return tdiuc.plan_build(args.root, args.split, args.per_category, args.seed, option_counts)

    missing = [flag for flag in ("questions", "annotations", "images") if getattr(args, flag) is None]
    if missing or not (args.mapping or args.map):
        needed = [f"--{flag}" for flag in missing] + ([] if args.mapping or args.map else ["--mapping or --map"])
        parser.error(f"--source vqa-json needs {', '.join(needed)}")
    mapping = vqa_json.read_mapping(_under_root(args.root, args.mapping)) if args.mapping else {}
    if args.map:
        mapping.update(vqa_json.parse_map_flags(args.map))
    categories = tuple(category for category in TDIUC_CATEGORIES if category in set(mapping.values()))
    return vqa_json.plan_build(
        _under_root(args.root, args.questions),
        _under_root(args.root, args.annotations),
        _under_root(args.root, args.images),
        mapping,
        image_pattern=args.image_pattern,
        type_field=args.type_field,
        split=args.split,
        per_category=args.per_category,
        seed=args.seed,
        option_counts=parse_option_counts(args.option_count, categories),
    )


def _under_root(root: Path | None, path: Path) -> Path:
    return path if root is None or path.is_absolute() else root / path


def _check_split(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    choices = SPLIT_CHOICES.get(args.source)
    if choices is not None and args.split not in choices:
        parser.error(f"--split {args.split!r} is invalid for --source {args.source}; use one of {', '.join(choices)}")


def default_out(source: str, split: str) -> Path:
    """Return the default output directory of a build of ``source`` and ``split``."""
    if split == DEFAULT_SPLITS[source]:
        return default_dataset_dir(source)
    return default_dataset_dir(f"{source}-{split}")


def main(argv: list[str] | None = None) -> int:
    """Run ``mmsy build``; returns 0 on success, 1 when the build fails and 2 for invalid arguments."""
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)

    args.split = args.split or DEFAULT_SPLITS[args.source]
    out = args.out if args.out is not None else default_out(args.source, args.split)
    try:
        _check_split(args, parser)
        check_output_dir(out, args.overwrite)
        plan = _plan(args, parser)
        logger.info(
            f"building {plan.source} {plan.split}: {plan.target_count} items in {len(plan.categories)} categories "
            f"(seed {plan.seed}, option counts {plan.option_counts})"
        )
        result = write_dataset_dir(plan, out, overwrite=args.overwrite, progress=not args.no_progress)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    except (BuildError, ValueError) as error:
        logger.error(f"mmsy build failed: {error}")
        return 1

    print(result.summary())
    return 0
