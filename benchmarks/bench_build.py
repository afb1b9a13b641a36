"""Wall time and peak memory of the easy-VQA build, with side-by-side baselines.

    .venv/bin/python benchmarks/bench_build.py            # 3 timed runs per case
    .venv/bin/python benchmarks/bench_build.py --repeats 5

Cases, each measured in a fresh child process so that peak memory is its own:

- raw: read easy-VQA's test questions.json and the bytes of every test image,
  the least that any build of the split has to read.
- build-15: ``mmsy build --source easyvqa --per-category 15`` (45 items).
- build-150: the default build (450 items).

Each case reports the median wall time of the timed runs (imports excluded),
the peak of Python allocations in one extra run under tracemalloc, and the
child's maximum resident set size (``ru_maxrss``, imports included). The
closing lines give the ratios build-150 / raw and build-150 / build-15.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

CASES = ("raw", "build-15", "build-150")


def run_raw() -> int:
    from mmsy_tasks.builders import easyvqa

    root = easyvqa.default_root() / "test"
    rows = json.loads((root / "questions.json").read_text())
    total_bytes = sum(len(path.read_bytes()) for path in (root / "images").glob("*.png"))
    assert total_bytes > 0
    return len(rows)


def run_build(per_category: int) -> int:
    from mmsy_tasks.builders import easyvqa
    from mmsy_tasks.builders.writer import write_dataset_dir

    with tempfile.TemporaryDirectory() as folder:
        plan = easyvqa.plan_build(per_category=per_category)
        result = write_dataset_dir(plan, Path(folder) / "easyvqa", progress=False)
        return result.num_items


def run_case(case: str) -> int:
    if case == "raw":
        return run_raw()
    return run_build(int(case.removeprefix("build-")))


def measure_in_child(case: str, repeats: int) -> dict:
    """Import the builders, time ``repeats`` runs, trace one more, and return the numbers."""
    from loguru import logger

    logger.remove()
    import mmsy_tasks.builders.easyvqa  # noqa: F401  (imports are not part of the timed runs)
    import mmsy_tasks.builders.writer  # noqa: F401

    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = run_case(case)
        seconds.append(time.perf_counter() - start)

    tracemalloc.start()
    run_case(case)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # ru_maxrss is in KiB on Linux.
    max_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "case": case,
        "count": count,
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "traced_peak_mib": peak / 2**20,
        "max_rss_mib": max_rss_kib / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (default 3)")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure_in_child(args.child, args.repeats)))
        return 0

    results = {}
    for case in CASES:
        command = [sys.executable, __file__, "--child", case, "--repeats", str(args.repeats)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[case] = json.loads(output.strip().splitlines()[-1])

    print(f"{'case':<10} {'count':>6} {'median s':>9} {'runs s':<24} {'traced peak MiB':>16} {'max RSS MiB':>12}")
    for case, result in results.items():
        runs = ", ".join(f"{value:.2f}" for value in result["seconds"])
        print(
            f"{case:<10} {result['count']:>6} {result['median_s']:>9.2f} {runs:<24} "
            f"{result['traced_peak_mib']:>16.1f} {result['max_rss_mib']:>12.1f}"
        )
    print("count: questions read (raw) or items written (builds)")
    print(f"build-150 / raw time: {results['build-150']['median_s'] / results['raw']['median_s']:.1f}x")
    print(f"build-150 / build-15 time: {results['build-150']['median_s'] / results['build-15']['median_s']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
