"""Benchmark: live MM-SY round 2 with KV cache reuse against re-encoding the whole history.

Runs the live easy-VQA tasks (``mmsy_easyvqa_live_*``) through mmsy_hf twice
on the same requests, once with ``kv_reuse=True`` and once with
``kv_reuse=False``, and compares the time spent in round 2, where the two
settings differ. Round 1 is the same work in both runs. The outputs of the
two runs must be equal, which the script checks.

    .venv/bin/python benchmarks/bench_kv_reuse.py --per-category 8 --batch-size 8 --repeats 3
    .venv/bin/python benchmarks/bench_kv_reuse.py --model PATH   # any image-text-to-text checkpoint

Without ``--model`` it uses the cached model organism (``mmsy organism``) when
one exists, and otherwise a random-weight LLaVA with 196 visual tokens per
image (112x112 pixels in 8x8 patches) and a 4-layer, 256-wide language model.
The output names the checkpoint that ran.
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
    parser.add_argument("--batch-size", type=int, default=8, help="mmsy_hf batch size (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens generated per round (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (default 3)")
    return parser.parse_args()


def timed_run(adapter: MMSYHF, requests: list, kv_reuse: bool) -> tuple[float, float, list]:
    """Run the dialogues once and return (round-2 seconds, total seconds, outputs)."""
    adapter.kv_reuse = kv_reuse
    started = time.perf_counter()
    outputs = adapter.generate_until_multi_round(requests)
    total = time.perf_counter() - started
    return adapter.last_meter.later_round_seconds, total, outputs


def main() -> int:
    args = parse_args()
    home = prepare_environment(args.threads)
    build_easyvqa(args.per_category)
    checkpoint, model_description = choose_checkpoint(args, home)

    adapter = MMSYHF(pretrained=str(checkpoint), device=args.device, batch_size=args.batch_size)
    requests = task_requests(adapter, "live", {"max_new_tokens": args.max_new_tokens, "temperature": 0, "until": []})
    timed_run(adapter, requests[: args.batch_size], kv_reuse=True)  # warm-up

    results = {True: [], False: []}
    reference = {}
    for _ in range(args.repeats):
        for kv_reuse in (True, False):
            round2, total, outputs = timed_run(adapter, requests, kv_reuse)
            results[kv_reuse].append((round2, total))
            reference.setdefault(kv_reuse, outputs)

    same_outputs = reference[True] == reference[False]
    print(f"model: {model_description}")
    print(f"machine: {machine_description()}")
    print(
        f"{len(requests)} live dialogues, batch size {args.batch_size}, max_new_tokens {args.max_new_tokens}, "
        f"{args.repeats} timed runs per setting"
    )
    print(f"{'setting':<14} {'round 2 s (median)':>19} {'dialogues s (median)':>21}  round 2 runs s")
    for kv_reuse, label in ((True, "kv_reuse"), (False, "re-encode")):
        round2_runs = [round2 for round2, _ in results[kv_reuse]]
        total_runs = [total for _, total in results[kv_reuse]]
        runs = ", ".join(f"{value:.2f}" for value in round2_runs)
        print(f"{label:<14} {statistics.median(round2_runs):>19.3f} {statistics.median(total_runs):>21.3f}  {runs}")

    reuse_round2 = statistics.median(round2 for round2, _ in results[True])
    full_round2 = statistics.median(round2 for round2, _ in results[False])
    reuse_total = statistics.median(total for _, total in results[True])
    full_total = statistics.median(total for _, total in results[False])
    print(f"round 2 speed-up (re-encode / kv_reuse): {full_round2 / reuse_round2:.2f}x")
    print(f"whole dialogue speed-up: {full_total / reuse_total:.2f}x")
    print(f"outputs equal with and without reuse: {same_outputs}")
    return 0 if same_outputs else 1


if __name__ == "__main__":
    raise SystemExit(main())
