"""``mmsy report``: tables and plots of MM-SY metrics from lmms-eval output folders.

Each RESULTS argument is a folder that lmms-eval 0.7.3 wrote with
``--output_path RESULTS --log_samples``. lmms-eval puts its files in
``RESULTS/<model>/``, where ``<model>`` is the sanitized ``pretrained=``
(or ``model=``, ``path=`` ...) value of ``--model_args``, or directly in
RESULTS when the model arguments name none:

- ``<date>_results.json``: the aggregated results, with the run's ``config``
  and ``group_subtasks`` (each group's subtasks).
- ``<date>_samples_<task>.jsonl``: one JSON object per scored document. The
  values that ``process_results`` returned are top-level keys, so an MM-SY
  sample carries its dialogue record under ``"acc_r1"``.

The MM-SY task folder has one subtask per category, so the report pools the
subtasks of each group (for example ``mmsy_tdiuc_prefilled``) into one task
and breaks it down by the records' categories.

Usage::

    mmsy report RESULTS... [--out DIR] [--names NAME...] [--n-resamples N] [--seed S]

The report lands in ``--out`` (default ``RESULTS/mmsy_report`` of the first
folder): ``report.md``, ``summary.csv``, ``summary.json`` and, per task, PNG
plots of syc and cor by category and by tone.
"""

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from loguru import logger
from tqdm import tqdm

from mmsy_tasks import metrics
from mmsy_tasks.records import TONES

REPORT_DIRNAME = "mmsy_report"
RECORD_KEY = "acc_r1"
LEVEL = 0.95
SAMPLES_PATTERN = re.compile(r"^(?P<date>.+?)_samples_(?P<task>.+)\.jsonl$")

# Metrics of the overall and comparison tables, in display order.
OVERALL_METRICS = ("syc", "cor", "acc_r1", "acc_r2", "flip", "invalid_r1", "invalid_r2")
# Metrics that get a category x tone table and plots.
GRID_METRICS = ("syc", "cor", "acc_r1")
PLOT_METRICS = ("syc", "cor")

METRIC_TITLES = {
    "acc_r1": "round-1 accuracy (acc_r1)",
    "syc": "sycophancy rate (syc)",
    "cor": "correction rate (cor)",
    "acc_r2": "round-2 accuracy (acc_r2)",
    "flip": "flip rate (flip)",
    "invalid_r1": "invalid round-1 answers (invalid_r1)",
    "invalid_r2": "invalid round-2 answers (invalid_r2)",
}
TONE_TITLES = {metrics.ALL: "all tones", metrics.NO_TONE: "round 1 only"}


class ReportError(Exception):
    """An input problem that stops the report, with a message that states what to change."""


@dataclass
class TaskSamples:
    """The dialogue records of one MM-SY task in one run.

    ``task`` is the lmms-eval group whose subtasks produced the samples (the
    MM-SY task folder has one subtask per category), or the task itself when
    it ran outside a group.
    """

    task: str
    subtasks: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)


@dataclass
class Run:
    """One lmms-eval output folder with the MM-SY tasks it evaluated."""

    name: str
    folder: Path
    tasks: dict[str, TaskSamples] = field(default_factory=dict)
    model: str | None = None
    model_args: str | None = None


def read_samples_file(path: Path) -> list[dict] | None:
    """Return the dialogue records of a samples file, or None when it contains no MM-SY samples.

    A sample is an MM-SY sample when its ``"acc_r1"`` value is a dict. Every
    record is validated, and an invalid one raises ``ReportError`` naming the
    file and line.
    """
    records = []
    n_other = 0
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as error:
                raise ReportError(f"{path}:{line_number} is not valid JSON ({error}). Rerun lmms-eval to rewrite it") from error
            record = sample.get(RECORD_KEY) if isinstance(sample, dict) else None
            if not isinstance(record, dict):
                n_other += 1
                continue
            try:
                metrics.validate_record(record)
            except ValueError as error:
                raise ReportError(f"{path}:{line_number}: {error}") from error
            records.append(record)

    if not records:
        return None
    if n_other:
        logger.warning(f"{path}: skipped {n_other} samples without a dialogue record under {RECORD_KEY!r}")
    return records


def _samples_files(folder: Path) -> list[Path]:
    """List the lmms-eval samples files in ``folder`` and in its direct subfolders (one per model)."""
    candidates = list(folder.glob("*_samples_*.jsonl")) + list(folder.glob("*/*_samples_*.jsonl"))
    return sorted(path for path in candidates if SAMPLES_PATTERN.match(path.name))


def _read_results(results_file: Path) -> dict:
    """Return lmms-eval's aggregated results JSON, or an empty dict when it is missing or unreadable."""
    if not results_file.is_file():
        return {}
    try:
        results = json.loads(results_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning(f"could not read the run configuration from {results_file}: {error}")
        return {}
    return results if isinstance(results, dict) else {}


def _parent_groups(results: dict) -> dict[str, str]:
    """Map each subtask to its group, from the ``group_subtasks`` entry of a results JSON."""
    parents = {}
    for group, children in (results.get("group_subtasks") or {}).items():
        for child in children or []:
            parents[child] = group
    return parents


def load_run(path: Path, name: str) -> Run:
    """Read the MM-SY samples of one lmms-eval output folder (or one samples file).

    When a task was evaluated more than once into the same folder, the newest
    samples file is used and the older ones are named in a warning.
    """
    path = Path(path)
    if path.is_file() and not SAMPLES_PATTERN.match(path.name):
        raise ReportError(
            f"{path} is not an lmms-eval samples file (*_samples_<task>.jsonl). "
            "Pass the output folder that lmms-eval's --output_path named, or one of its samples files"
        )
    if path.is_file():
        files, folder = [path], path.parent
    elif path.is_dir():
        files, folder = _samples_files(path), path
    else:
        raise ReportError(f"results folder {path} not found. Pass the folder that lmms-eval's --output_path named")
    if not files:
        raise ReportError(
            f"no lmms-eval samples files (*_samples_<task>.jsonl) in {path}. "
            "Rerun lmms-eval with --log_samples and --output_path, then pass that output folder"
        )

    found: dict[str, list[tuple[str, Path, list[dict]]]] = defaultdict(list)
    other_tasks = []
    for file in files:
        match = SAMPLES_PATTERN.match(file.name)
        date, task = (match["date"], match["task"]) if match else ("", file.stem)
        records = read_samples_file(file)
        if records is None:
            other_tasks.append(task)
            continue
        found[task].append((date, file, records))
    if not found:
        raise ReportError(
            f"no MM-SY samples in {path} (samples of tasks: {', '.join(sorted(set(other_tasks)))}). "
            "Rerun lmms-eval with an MM-SY task and --log_samples"
        )

    model_folders = sorted({str(file.parent) for versions in found.values() for _, file, _ in versions})
    if len(model_folders) > 1:
        raise ReportError(
            f"{path} contains MM-SY samples of several models ({', '.join(model_folders)}). "
            "Pass each model folder as its own RESULTS argument"
        )

    model_folder = Path(model_folders[0])
    # A subtask rerun on its own keeps the group that an earlier run of the
    # whole group recorded, so newer results files only add or override entries.
    parents: dict[str, str] = {}
    all_results = {}
    for results_file in sorted(model_folder.glob("*_results.json")):
        all_results[results_file.name] = _read_results(results_file)
        parents.update(_parent_groups(all_results[results_file.name]))

    run = Run(name=name, folder=folder)
    for subtask, versions in sorted(found.items()):
        versions.sort(key=lambda version: version[0])
        date, file, records = versions[-1]
        if len(versions) > 1:
            older = ", ".join(str(older_file) for _, older_file, _ in versions[:-1])
            logger.warning(f"{folder}: task {subtask} was evaluated {len(versions)} times, so {file} is used and {older} is ignored")

        task = parents.get(subtask, subtask)
        samples = run.tasks.setdefault(task, TaskSamples(task=task))
        samples.subtasks.append(subtask)
        samples.paths.append(file)
        samples.records.extend(records)

        config = all_results.get(f"{date}_results.json", {}).get("config") or {}
        run.model = run.model or config.get("model")
        if config.get("model_args") and not run.model_args:
            run.model_args = str(config["model_args"])
    return run


def default_names(paths: list[Path]) -> list[str]:
    """Name each run by its folder, with the parent folder's name in front where folder names repeat."""
    paths = [Path(p).resolve() for p in paths]
    short = [p.stem if p.is_file() else p.name for p in paths]
    return [f"{path.parent.name}/{name}" if short.count(name) > 1 else name for path, name in zip(paths, short)]


def _check_names(names: list[str], n_runs: int) -> None:
    if len(names) != n_runs:
        raise ReportError(f"--names got {len(names)} names for {n_runs} RESULTS folders. Pass one name per folder")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ReportError(f"run names {', '.join(duplicates)} appear more than once. Pass distinct names with --names")


def summarize_runs(runs: list[Run], n_resamples: int, seed: int) -> pd.DataFrame:
    """Return ``metrics.summarize`` of every (run, task), with ``run`` and ``task`` columns in front."""
    frames = []
    pairs = [(run, task) for run in runs for task in run.tasks.values()]
    for run, task in tqdm(pairs, desc="bootstrap intervals", unit="task", disable=len(pairs) < 2):
        frame = metrics.summarize(task.records, n_resamples=n_resamples, seed=seed, level=LEVEL)
        frame.insert(0, "task", task.task)
        frame.insert(0, "run", run.name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """Render a GitHub-flavoured markdown table."""

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _row(summary: pd.DataFrame, run: str, task: str, category: str, tone: str, average: str) -> pd.Series | None:
    selected = summary[
        (summary["run"] == run)
        & (summary["task"] == task)
        & (summary["category"] == category)
        & (summary["tone"] == tone)
        & (summary["average"] == average)
    ]
    return None if selected.empty else selected.iloc[0]


def _interval_text(row: pd.Series | None, metric: str) -> str:
    if row is None:
        return "n/a"
    return metrics.format_interval(row[f"{metric}_value"], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"])


def _better_mark(metric: str) -> str:
    return metrics.BETTER[metric] or "-"


def overall_table(summary: pd.DataFrame, run: str, task: str) -> str:
    """Markdown table of every metric of one run and task, micro and macro, with 95% intervals."""
    micro = _row(summary, run, task, metrics.ALL, metrics.ALL, "micro")
    macro = _row(summary, run, task, metrics.ALL, metrics.ALL, "macro")
    header = ["metric", "better", "micro [95% CI]", "macro [95% CI]", "n"]
    rows = [
        [metric, _better_mark(metric), _interval_text(micro, metric), _interval_text(macro, metric), str(int(micro[f"{metric}_n"]))]
        for metric in OVERALL_METRICS
    ]
    return markdown_table(header, rows)


def _tones_of(summary: pd.DataFrame, run: str, task: str) -> list[str]:
    present = set(summary[(summary["run"] == run) & (summary["task"] == task)]["tone"])
    return [tone for tone in (*TONES, metrics.NO_TONE) if tone in present]


def _categories_of(summary: pd.DataFrame, run: str, task: str) -> list[str]:
    present = set(summary[(summary["run"] == run) & (summary["task"] == task)]["category"])
    return sorted(present - {metrics.ALL})


def grid_table(summary: pd.DataFrame, run: str, task: str, metric: str) -> str:
    """Markdown table of one metric by category (rows) and tone (columns), with 95% intervals.

    A tone whose records never enter the metric's denominator (such as
    round-1-only records for syc) gets no column.
    """
    tones = [
        tone
        for tone in _tones_of(summary, run, task)
        if _row(summary, run, task, metrics.ALL, tone, "micro")[f"{metric}_n"] > 0
    ]
    columns = tones + [metrics.ALL]
    header = ["category"] + [TONE_TITLES.get(tone, tone) for tone in columns]
    rows = []
    for category in _categories_of(summary, run, task):
        rows.append([category] + [_interval_text(_row(summary, run, task, category, tone, "micro"), metric) for tone in columns])
    for average in metrics.AVERAGES:
        label = f"all categories ({average})"
        rows.append([label] + [_interval_text(_row(summary, run, task, metrics.ALL, tone, average), metric) for tone in columns])
    return markdown_table(header, rows)


def comparison_table(summary: pd.DataFrame, runs: list[Run], task: str, average: str) -> str:
    """Markdown table with one row per run and the overall metrics of one task as columns."""
    header = ["run"] + [f"{metric} ({_better_mark(metric)})" for metric in OVERALL_METRICS]
    rows = []
    for run in runs:
        if task not in run.tasks:
            continue
        row = _row(summary, run.name, task, metrics.ALL, metrics.ALL, average)
        rows.append([run.name] + [_interval_text(row, metric) for metric in OVERALL_METRICS])
    return markdown_table(header, rows)


def _denominator(summary: pd.DataFrame, run: str, task: str, metric: str) -> int:
    return int(_row(summary, run, task, metrics.ALL, metrics.ALL, "micro")[f"{metric}_n"])


def _file_stem(task: str) -> str:
    return re.sub(r"[^\w.-]+", "_", task)


def plot_grouped_bars(summary: pd.DataFrame, runs: list[str], task: str, by: str, path: Path) -> None:
    """Save a PNG of syc and cor as grouped bars (one bar per run) by category or by tone, with interval error bars."""
    # Figure without pyplot, so the plot uses the Agg canvas and leaves the global backend alone.
    from matplotlib.figure import Figure

    task_rows = summary[(summary["task"] == task) & (summary["average"] == "micro")]
    if by == "category":
        groups = sorted(set(task_rows["category"]) - {metrics.ALL})
        keys = [(group, metrics.ALL) for group in groups]
        labels = groups
    else:
        present = set(task_rows["tone"])
        groups = [tone for tone in TONES if tone in present]
        keys = [(metrics.ALL, group) for group in groups]
        labels = groups

    width_inches = min(30.0, 3.0 + len(groups) * max(1.2, 0.35 * len(runs)))
    figure = Figure(figsize=(max(6.0, width_inches), 7.0), layout="constrained")
    axes = figure.subplots(len(PLOT_METRICS), 1, sharex=True, squeeze=False)[:, 0]
    width = 0.8 / max(1, len(runs))
    for axis, metric in zip(axes, PLOT_METRICS):
        for position, run in enumerate(runs):
            values, lower, upper, undefined = [], [], [], []
            for category, tone in keys:
                row = _row(summary, run, task, category, tone, "micro")
                value = math.nan if row is None else row[f"{metric}_value"]
                low = math.nan if row is None else row[f"{metric}_ci_low"]
                high = math.nan if row is None else row[f"{metric}_ci_high"]
                values.append(0.0 if math.isnan(value) else value)
                undefined.append(math.isnan(value))
                lower.append(0.0 if math.isnan(low) or math.isnan(value) else value - low)
                upper.append(0.0 if math.isnan(high) or math.isnan(value) else high - value)
            offsets = [index - 0.4 + width * (position + 0.5) for index in range(len(groups))]
            axis.bar(offsets, values, width=width, label=run, yerr=[lower, upper], capsize=3)
            # An empty denominator draws no bar, so label it instead of showing a rate of 0.
            for offset, is_undefined in zip(offsets, undefined):
                if is_undefined:
                    axis.text(offset, 0.02, "n/a", ha="center", va="bottom", fontsize=8, rotation=90)
        axis.set_ylim(0.0, 1.05)
        axis.set_ylabel(metric)
        axis.set_title(f"{METRIC_TITLES[metric]} by {by}, {task}")
        axis.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(groups)), labels, rotation=30, ha="right")
    figure.legend(*axes[0].get_legend_handles_labels(), title="run", loc="outside right upper")
    figure.savefig(path, dpi=100)


def _json_value(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return _json_value(value.item())
    return value


def write_report(runs: list[Run], summary: pd.DataFrame, out: Path, n_resamples: int, seed: int) -> list[Path]:
    """Write report.md, summary.csv, summary.json and the plots to ``out``, and return the plot paths."""
    out.mkdir(parents=True, exist_ok=True)
    tasks = sorted({task for run in runs for task in run.tasks})

    sections = [
        "# MM-SY report",
        "",
        f"Rates with {LEVEL:.0%} percentile bootstrap intervals over items ({n_resamples} resamples, seed {seed}). "
        "Micro rates pool the dialogues, macro rates average the categories. "
        "n is the metric's denominator, and n/a marks an empty one.",
        "",
        "## Runs",
        "",
        markdown_table(
            ["run", "folder", "model", "model_args", "task", "subtasks", "dialogues"],
            [
                [run.name, str(run.folder), run.model or "", run.model_args or "", task.task, str(len(task.subtasks)), str(len(task.records))]
                for run in runs
                for task in run.tasks.values()
            ],
        ),
    ]

    plots = []
    for task in tasks:
        task_runs = [run for run in runs if task in run.tasks]
        sections += ["", f"## Task {task}"]
        if len(task_runs) > 1:
            for average in metrics.AVERAGES:
                sections += ["", f"### Comparison of runs ({average})", "", comparison_table(summary, task_runs, task, average)]
        for run in task_runs:
            sections += ["", f"### Overall: {run.name}", "", overall_table(summary, run.name, task)]
        for run in task_runs:
            for metric in GRID_METRICS:
                if _denominator(summary, run.name, task, metric) == 0:
                    continue
                sections += ["", f"### {METRIC_TITLES[metric]} by category and tone: {run.name}", ""]
                sections += [grid_table(summary, run.name, task, metric)]

        if not any(_denominator(summary, run.name, task, metric) for run in task_runs for metric in PLOT_METRICS):
            continue
        sections += ["", "### Plots", ""]
        for by in ("category", "tone"):
            path = out / f"{_file_stem(task)}_syc_cor_by_{by}.png"
            plot_grouped_bars(summary, [run.name for run in task_runs], task, by, path)
            plots.append(path)
            sections.append(f"![syc and cor by {by}, {task}]({path.name})")
            sections.append("")

    (out / "report.md").write_text("\n".join(sections).rstrip() + "\n", encoding="utf-8")
    summary.to_csv(out / "summary.csv", index=False)
    machine = {
        "level": LEVEL,
        "n_resamples": n_resamples,
        "seed": seed,
        "runs": [
            {
                "name": run.name,
                "folder": str(run.folder),
                "model": run.model,
                "model_args": run.model_args,
                "tasks": {
                    task.task: {"subtasks": task.subtasks, "samples_files": [str(p) for p in task.paths], "dialogues": len(task.records)}
                    for task in run.tasks.values()
                },
            }
            for run in runs
        ],
        "summary": [{key: _json_value(value) for key, value in row.items()} for row in summary.to_dict(orient="records")],
    }
    (out / "summary.json").write_text(json.dumps(machine, indent=2) + "\n", encoding="utf-8")
    return plots


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmsy report",
        description="Write MM-SY tables and plots from lmms-eval output folders written with --log_samples.",
    )
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS", help="lmms-eval output folder (its --output_path), one per run")
    parser.add_argument("--out", type=Path, default=None, help=f"report folder (default: the first RESULTS folder + /{REPORT_DIRNAME})")
    parser.add_argument("--names", nargs="+", default=None, metavar="NAME", help="run labels, one per RESULTS folder (default: folder names)")
    parser.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples per interval (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mmsy report`` and return 0 on success, or 1 when the input cannot be reported."""
    args = build_parser().parse_args(argv)
    try:
        if args.n_resamples < 1:
            raise ReportError(f"--n-resamples {args.n_resamples} is invalid. Pass a positive number such as 1000")
        names = args.names if args.names is not None else default_names(args.results)
        _check_names(names, len(args.results))
        runs = [load_run(path, name) for path, name in zip(args.results, names)]
    except ReportError as error:
        print(f"mmsy report: error: {error}", file=sys.stderr)
        return 1

    summary = summarize_runs(runs, n_resamples=args.n_resamples, seed=args.seed)
    first = args.results[0]
    out = args.out
    if out is None:
        out = (first.parent if first.is_file() else first) / REPORT_DIRNAME
    plots = write_report(runs, summary, out, n_resamples=args.n_resamples, seed=args.seed)

    for run in runs:
        for task in run.tasks:
            print(f"## {run.name}: {task}\n")
            print(overall_table(summary, run.name, task))
            print()
    print(f"MM-SY report written to {out}: report.md, summary.csv, summary.json and {len(plots)} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
