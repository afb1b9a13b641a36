"""Benchmark: mmsy_hf throughput at batch size 1 against batch size 16 on the prefilled MM-SY tasks.

Runs the prefilled easy-VQA tasks (``mmsy_easyvqa_prefilled_*``, one
generation per dialogue) through ``generate_until`` at both batch sizes on
the same requests, and reports dialogues per second and generated tokens per
second. The greedy outputs of both batch sizes must be equal, which the
script checks.

    .venv/bin/python benchmarks/bench_batching.py --per-category 8 --repeats 3
    .venv/bin/python benchmarks/bench_batching.py --model PATH --device cuda

Without ``--model`` it uses the cached model organism (``mmsy organism``) when
one exists, and otherwise a random-weight LLaVA with 196 visual tokens per
image and a 4-layer, 256-wide language model. The output names the checkpoint that ran.
"""

import argparse
import statistics
import time

from adapter_bench_common import (
    add_model_arguments,
    add_run_arguments,
    build_easyvqa,
    choose_checkpoint,
    machine_description,
    prepare_environment,
    task_requests,
)

from mmsy_models.adapter import MMSYHF


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    add_run_arguments(parser)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16], help="batch sizes to compare (default 1 16)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens generated per dialogue (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch size (default 3)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    home = prepare_environment(args.threads)
    build_easyvqa(args.per_category)
    checkpoint, model_description = choose_checkpoint(args, home)

    adapter = MMSYHF(pretrained=str(checkpoint), device=args.device)
    requests = task_requests(adapter, "prefilled", {"max_new_tokens": args.max_new_tokens, "temperature": 0, "until": []})
    adapter.batch_size_per_device = max(args.batch_sizes)
    adapter.generate_until(requests[: max(args.batch_sizes)])  # warm-up

    rates = {}
    outputs = {}
    for batch_size in args.batch_sizes:
        runs = []
        for _ in range(args.repeats):
            adapter.batch_size_per_device = batch_size
            started = time.perf_counter()
            results = adapter.generate_until(requests)
            elapsed = time.perf_counter() - started
            runs.append((len(requests) / elapsed, adapter.last_meter.generated_tokens / elapsed))
            outputs.setdefault(batch_size, [result.text for result in results])
        rates[batch_size] = runs

    print(f"model: {model_description}")
    print(f"machine: {machine_description()}")
    print(f"{len(requests)} prefilled dialogues, max_new_tokens {args.max_new_tokens}, {args.repeats} timed runs per batch size")
    print(f"{'batch size':<11} {'items/s (median)':>17} {'tokens/s (median)':>18}  items/s runs")
    for batch_size, runs in rates.items():
        items = [item_rate for item_rate, _ in runs]
        tokens = [token_rate for _, token_rate in runs]
        listed = ", ".join(f"{value:.1f}" for value in items)
        print(f"{batch_size:<11} {statistics.median(items):>17.2f} {statistics.median(tokens):>18.1f}  {listed}")

    smallest, largest = min(args.batch_sizes), max(args.batch_sizes)
    ratio = statistics.median(r for r, _ in rates[largest]) / statistics.median(r for r, _ in rates[smallest])
    same_outputs = all(outputs[batch_size] == outputs[smallest] for batch_size in args.batch_sizes)
    print(f"throughput ratio, batch {largest} / batch {smallest}: {ratio:.2f}x")
    print(f"outputs equal across batch sizes: {same_outputs}")
    return 0 if same_outputs else 1


if __name__ == "__main__":
    raise SystemExit(main())
