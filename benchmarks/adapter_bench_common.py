"""Shared setup of the mmsy_hf benchmarks: checkpoints, MM-SY requests from the real task folder, timing.

Requests come from the MM-SY lmms-eval tasks the way lmms-eval's evaluator
builds them: ``TaskManager`` indexes ``mmsy_tasks/tasks``, each task builds
its Instances with ``build_all_requests``, and the model reads docs from
``model.task_dict``. The easy-VQA dataset is built with ``mmsy build`` into a
temporary ``MMSY_HOME``, from the test split that the easy-vqa package ships.
"""

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parents[1]
CALLER_MMSY_HOME = os.environ.get("MMSY_HOME")
EASYVQA_CATEGORIES = ("color", "object_recognition", "object_presence")


def prepare_environment(threads: int | None) -> Path:
    """Set offline mode and torch threads, point ``MMSY_HOME`` at a new temporary folder, and return it."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        torch.set_num_threads(threads)
    home = Path(tempfile.mkdtemp(prefix="mmsy_bench_"))
    os.environ["MMSY_HOME"] = str(home)
    return home


def build_easyvqa(per_category: int) -> None:
    """Build the easy-VQA MM-SY dataset with ``per_category`` items per category into ``$MMSY_HOME``."""
    from mmsy_tasks.builders.cli import main as build_main

    status = build_main(["--source", "easyvqa", "--per-category", str(per_category), "--no-progress"])
    if status != 0:
        raise SystemExit(f"mmsy build --source easyvqa failed with status {status}")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that choose the benchmarked checkpoint."""
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the cached organism, else a random LLaVA)")
    parser.add_argument("--image-size", type=int, default=112, help="random LLaVA: image side in pixels, 8-pixel patches (default 112)")
    parser.add_argument("--text-hidden-size", type=int, default=256, help="random LLaVA: language model width (default 256)")
    parser.add_argument("--text-layers", type=int, default=4, help="random LLaVA: language model layers (default 4)")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that every adapter benchmark shares: data size, CPU threads and device."""
    parser.add_argument("--per-category", type=int, default=8, help="easy-VQA items per category (default 8)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="device (default cpu)")


def choose_checkpoint(args: argparse.Namespace, home: Path) -> tuple[Path, str]:
    """Return the checkpoint to benchmark and a description of it for the record.

    ``--model`` wins. Otherwise the cached model organism of the default
    config, and when none is cached, a random-weight LLaVA written by the test
    fixture builder with the sizes from the command line.
    """
    if args.model:
        return args.model, f"checkpoint {args.model}"
    organism = organism_checkpoint()
    if organism is not None:
        return organism, f"model organism {organism}"

    sys.path.insert(0, str(REPOSITORY / "tests"))
    from fixtures.tiny_vlms import build_tiny_llava

    checkpoint = build_tiny_llava(
        home / "random-llava",
        image_size=args.image_size,
        patch_size=8,
        text_hidden_size=args.text_hidden_size,
        text_layers=args.text_layers,
    )
    description = (
        f"random-weight LLaVA-1.5 layout (no cached organism): {(args.image_size // 8) ** 2} visual tokens per image, "
        f"language model {args.text_layers} layers x {args.text_hidden_size} wide, "
        f"{_parameter_count(checkpoint) / 1e6:.1f}M parameters"
    )
    return checkpoint, description


def _parameter_count(checkpoint: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as weights:
        for name in weights.keys():  # noqa: SIM118 (a safetensors file handle is not a dict)
            count = 1
            for size in weights.get_slice(name).get_shape():
                count *= size
            total += count
    return total


def organism_checkpoint() -> Path | None:
    """Return the cached model organism of the default config, or None when it is not trained yet.

    The organism is looked up under ``$MMSY_ORGANISM_HOME`` when that is set,
    else under the ``MMSY_HOME`` of the caller's environment before
    ``prepare_environment`` replaced it.
    """
    try:
        from mmsy_models.organism import (
            OrganismConfig,
            default_checkpoint_dir,
            is_complete,
        )
    except ImportError:
        return None

    benchmark_home = os.environ["MMSY_HOME"]
    os.environ["MMSY_HOME"] = os.environ.get("MMSY_ORGANISM_HOME") or CALLER_MMSY_HOME or str(Path.home() / ".cache" / "mmsy")
    try:
        checkpoint = default_checkpoint_dir(OrganismConfig())
    finally:
        os.environ["MMSY_HOME"] = benchmark_home
    return checkpoint if is_complete(checkpoint) else None


def task_requests(model, protocol: str, gen_kwargs: dict) -> list:
    """Build the Instances of the three easy-VQA subtasks of ``protocol`` and register their docs on ``model``."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    from mmsy_tasks.paths import task_folder

    names = [f"mmsy_easyvqa_{protocol}_{category}" for category in EASYVQA_CATEGORIES]
    manager = TaskManager(include_path=str(task_folder()), include_defaults=False)
    tasks = get_task_dict(names, manager, task_type="chat")

    requests = []
    model.task_dict = {}
    for name in names:
        task = tasks[name]
        task.set_config(key="generation_kwargs", value=gen_kwargs, update=True)
        task.build_all_requests(limit=None, rank=0, world_size=1)
        model.task_dict[name] = task.dataset
        requests.extend(task.instances)
    return requests


def machine_description() -> str:
    """Return one line about the CPU, the torch threads and the load average."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads, load average {load:.1f} at the start"
    )
