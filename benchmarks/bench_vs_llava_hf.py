"""Benchmark: mmsy_hf against lmms-eval's built-in llava_hf on the prefilled MM-SY tasks and one checkpoint.

Both adapters generate replies to the same prefilled easy-VQA requests
(``mmsy_easyvqa_prefilled_*``), built by lmms-eval from the MM-SY task
folder, with the same greedy settings. ``--model llava_hf`` resolves to
lmms-eval 0.7.3's chat class ``lmms_eval.models.chat.llava_hf.LlavaHf``,
which runs one request at a time, so mmsy_hf is timed at batch size 1 (the
same work) and at a larger batch size. The script also reports whether both
adapters produced the same outputs at batch size 1.

    .venv/bin/python benchmarks/bench_vs_llava_hf.py --per-category 8 --repeats 3

Without ``--model`` it uses the cached model organism (``mmsy organism``) when
one exists, and otherwise a random-weight LLaVA with 196 visual tokens per
image and a 4-layer, 256-wide language model. The output names the checkpoint that ran.
The checkpoint must be a LLaVA or LLaVA-NeXT, the architectures llava_hf loads.
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
    parser.add_argument("--batch-size", type=int, default=16, help="the larger mmsy_hf batch size (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens generated per dialogue (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per adapter (default 3)")
    return parser.parse_args()


def load_llava_hf(checkpoint, device: str):
    from lmms_eval.models import get_model

    model_class = get_model("llava_hf")
    # llava_hf passes device_map to from_pretrained, where transformers 5.25 rejects its default "".
    adapter = model_class(pretrained=str(checkpoint), device=device, device_map=device, dtype="float32", batch_size=1)
    return adapter, model_class


def time_adapter(adapter, gen_kwargs: dict, repeats: int) -> tuple[list[float], list[str]]:
    """Return the items/s of each timed run and the outputs of the first run."""
    rates, first_outputs = [], None
    for _ in range(repeats):
        requests = task_requests(adapter, "prefilled", dict(gen_kwargs))
        started = time.perf_counter()
        results = adapter.generate_until(requests)
        rates.append(len(requests) / (time.perf_counter() - started))
        if first_outputs is None:
            first_outputs = [result.text if hasattr(result, "text") else result for result in results]
    return rates, first_outputs


def main() -> int:
    args = parse_args()
    home = prepare_environment(args.threads)
    build_easyvqa(args.per_category)
    checkpoint, model_description = choose_checkpoint(args, home)
    gen_kwargs = {"max_new_tokens": args.max_new_tokens, "temperature": 0, "until": []}

    llava_hf, llava_hf_class = load_llava_hf(checkpoint, args.device)
    mmsy_hf = MMSYHF(pretrained=str(checkpoint), device=args.device, dtype="float32", batch_size=1)
    time_adapter(llava_hf, gen_kwargs, 1)  # warm-up
    time_adapter(mmsy_hf, gen_kwargs, 1)

    rows = {}
    llava_rates, llava_outputs = time_adapter(llava_hf, gen_kwargs, args.repeats)
    rows[f"llava_hf ({llava_hf_class.__module__}), batch 1"] = llava_rates
    mmsy_rates, mmsy_outputs = time_adapter(mmsy_hf, gen_kwargs, args.repeats)
    rows["mmsy_hf, batch 1"] = mmsy_rates
    mmsy_hf.batch_size_per_device = args.batch_size
    batched_rates, _ = time_adapter(mmsy_hf, gen_kwargs, args.repeats)
    rows[f"mmsy_hf, batch {args.batch_size}"] = batched_rates

    print(f"model: {model_description}")
    print(f"machine: {machine_description()}")
    print(f"{len(llava_outputs)} prefilled dialogues, max_new_tokens {args.max_new_tokens}, {args.repeats} timed runs per row")
    width = max(len(label) for label in rows)
    print(f"{'adapter':<{width}} {'items/s (median)':>17}  runs")
    for label, rates in rows.items():
        listed = ", ".join(f"{rate:.1f}" for rate in rates)
        print(f"{label:<{width}} {statistics.median(rates):>17.2f}  {listed}")

    baseline = statistics.median(llava_rates)
    print(f"mmsy_hf batch 1 / llava_hf: {statistics.median(mmsy_rates) / baseline:.2f}x")
    print(f"mmsy_hf batch {args.batch_size} / llava_hf: {statistics.median(batched_rates) / baseline:.2f}x")
    same = [a.strip() == b.strip() for a, b in zip(llava_outputs, mmsy_outputs)]
    print(f"outputs equal to llava_hf at batch 1: {sum(same)} of {len(same)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
