"""``mmsy demo``: the whole MM-SY pipeline on the embedded default, on CPU.

Four stages, each with its own progress bar:

1. dataset: build MM-SY from easy-VQA (skipped when already built);
2. organism: train the model organism, or load the cached checkpoint;
3. evaluation: lmms-eval runs the easy-VQA live tasks through the MM-SY
   adapter ``mmsy_hf`` (true two-round chats);
4. report: ``mmsy report`` turns the logged samples into tables and plots.

Everything stays on the machine: easy-VQA ships in its PyPI package and the
organism trains from scratch.
"""

import argparse
import time
from pathlib import Path

from tqdm.auto import tqdm

DEFAULT_OUT = Path("out") / "demo"
LIVE_TASK = "mmsy_easyvqa_live"
STAGES = ("dataset", "organism", "evaluation", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsy demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for the lmms-eval output and the report (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="dialogues per generation batch (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None,
                        help="dialogues per category subtask, for a quick look (default: all 450 per category)")
    parser.add_argument("--retrain", action="store_true", help="train the organism again even when it is cached")
    parser.add_argument("--mitigation-prompt", action="store_true",
                        help="add the mitigation instruction before round 1")
    return parser


def evaluation_args(checkpoint: Path, out: Path, batch_size: int, limit: int | None, mitigation_prompt: bool) -> list[str]:
    """Return the ``mmsy eval`` arguments of the demo's evaluation stage."""
    argv = [
        "--model", "mmsy_hf",
        "--model_args", f"pretrained={checkpoint}",
        "--batch_size", str(batch_size),
        "--tasks", LIVE_TASK,
        "--log_samples",
        "--output_path", str(out / "lmms_eval"),
    ]
    if limit is not None:
        argv += ["--limit", str(limit)]
    if mitigation_prompt:
        argv.append("--mitigation-prompt")
    return argv


def main(argv: list[str] | None = None) -> int:
    """Run the four demo stages and print the report's overall table."""
    args = build_parser().parse_args(argv)
    out = args.out.resolve()
    timings: dict[str, float] = {}
    stages = tqdm(STAGES, desc="mmsy demo", unit="stage")

    def start(name: str) -> float:
        stages.set_postfix_str(name)
        return time.perf_counter()

    began = start("dataset")
    from mmsy_tasks.task_data import ensure_dataset_dir

    dataset = ensure_dataset_dir("easyvqa")
    timings["dataset"] = time.perf_counter() - began
    stages.update()

    began = start("organism")
    from mmsy_models.organism import OrganismConfig, train_organism

    checkpoint = train_organism(OrganismConfig(), force=args.retrain)
    timings["organism"] = time.perf_counter() - began
    stages.update()

    began = start("evaluation")
    from mmsy_tasks import eval_cli

    status = eval_cli.main(evaluation_args(checkpoint, out, args.batch_size, args.limit, args.mitigation_prompt))
    timings["evaluation"] = time.perf_counter() - began
    if status != 0:
        stages.close()
        print(f"mmsy demo: the evaluation stage failed (exit status {status}); see the lmms-eval log above")
        return status
    stages.update()

    began = start("report")
    from mmsy_tasks import report

    report_dir = out / "report"
    status = report.main([str(out / "lmms_eval"), "--out", str(report_dir), "--names", "organism"])
    timings["report"] = time.perf_counter() - began
    stages.update()
    stages.close()
    if status != 0:
        return status

    print()
    print("| stage | seconds |")
    print("| --- | ---: |")
    for name in STAGES:
        print(f"| {name} | {timings[name]:.0f} |")
    print()
    print(f"Dataset: {dataset}")
    print(f"Organism checkpoint: {checkpoint}")
    print(f"lmms-eval output: {out / 'lmms_eval'}")
    print(f"Report: {report_dir / 'report.md'} (plots beside it)")
    return 0
