"""Time stock SDPA attention against the amplified attention function at alpha = 1 and alpha = 2.

Builds a small random-weight Llama decoder from a config (no download),
feeds prompts in which a block of positions carries the image token id, and
times one prefill forward and one cached greedy generation per setting. The
settings take turns within each repeat, in an order that rotates between
repeats, so that load from other processes spreads over all of them. The
report gives the median over repeats.

Overheads are computed from the CPU time of this process, because other
processes on a shared machine inflate it less than wall-clock time. Wall-clock
medians are printed next to them. Torch runs on one thread by default,
because several threads on a loaded two-core machine mostly wait for each other.

Run from the repository root:

    .venv/bin/python benchmarks/bench_amplification.py
    .venv/bin/python benchmarks/bench_amplification.py --repeats 15 --threads 2
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from loguru import logger
from transformers import LlamaConfig, LlamaForCausalLM

from mmsy_models.amplification import count_decoder_layers, disable_amplification, enable_amplification

IMAGE_TOKEN_ID = 3
VOCAB_SIZE = 512
TARGET_OVERHEAD = 0.15
STOCK = "stock sdpa"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-size", type=int, default=256, help="decoder hidden size")
    parser.add_argument("--layers", type=int, default=4, help="number of decoder layers (all of them are amplified)")
    parser.add_argument("--heads", type=int, default=8, help="attention heads; key/value heads are half of them (GQA)")
    parser.add_argument("--batch-size", type=int, default=2, help="prompts per batch")
    parser.add_argument("--prompt-tokens", type=int, default=384, help="tokens per prompt")
    parser.add_argument("--image-tokens", type=int, default=256, help="image tokens per prompt, a block after 16 text tokens")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per prompt")
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats per setting, after one warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=args.hidden_size,
        intermediate_size=2 * args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=max(1, args.heads // 2),
        max_position_embeddings=args.prompt_tokens + args.new_tokens + 16,
    )
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa").eval()


def build_prompts(args: argparse.Namespace) -> torch.Tensor:
    """Return input ids [batch, prompt_tokens] with ``image_tokens`` image token ids after 16 text tokens."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(16, VOCAB_SIZE, (args.batch_size, args.prompt_tokens), generator=generator)
    input_ids[:, 16 : 16 + args.image_tokens] = IMAGE_TOKEN_ID
    return input_ids


def time_seconds(work: Callable[[], object]) -> tuple[float, float]:
    """Run ``work`` once and return (CPU seconds of this process, wall-clock seconds)."""
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    work()
    return time.process_time() - cpu_start, time.perf_counter() - wall_start


def run(args: argparse.Namespace) -> dict[str, dict[str, tuple[float, float]]]:
    """Return the median (CPU seconds, wall seconds) per setting and workload."""
    model = build_model(args)
    input_ids = build_prompts(args)
    all_layers = list(range(count_decoder_layers(model)))

    settings = {
        STOCK: lambda: disable_amplification(model),
        "amplified, alpha=1": lambda: enable_amplification(model, all_layers, 1.0, IMAGE_TOKEN_ID),
        "amplified, alpha=2": lambda: enable_amplification(model, all_layers, 2.0, IMAGE_TOKEN_ID),
    }
    workloads = {
        # Generation keeps only the last position's logits in prefill too.
        "prefill forward": lambda: model(input_ids=input_ids, logits_to_keep=1),
        "generate": lambda: model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=0,
        ),
    }

    samples = {setting: {workload: [] for workload in workloads} for setting in settings}
    names = list(settings)
    with torch.inference_mode():
        for repeat in range(args.repeats + 1):
            # Each repeat starts with a different setting, so no setting always runs first.
            for setting in names[repeat % len(names) :] + names[: repeat % len(names)]:
                settings[setting]()
                for workload, work in workloads.items():
                    seconds = time_seconds(work)
                    if repeat > 0:
                        samples[setting][workload].append(seconds)
    disable_amplification(model)

    medians = {}
    for setting, per_workload in samples.items():
        medians[setting] = {
            workload: (statistics.median(cpu for cpu, _ in times), statistics.median(wall for _, wall in times))
            for workload, times in per_workload.items()
        }
    return medians


def report(args: argparse.Namespace, medians: dict[str, dict[str, tuple[float, float]]]) -> str:
    workloads = list(medians[STOCK])
    lines = [
        f"Llama decoder: hidden {args.hidden_size}, {args.layers} layers (all amplified), {args.heads} heads, "
        f"batch {args.batch_size}, {args.prompt_tokens}-token prompts with {args.image_tokens} image tokens, "
        f"{args.new_tokens} new tokens; median of {args.repeats} repeats, torch threads {torch.get_num_threads()}",
        "",
        f"{'setting':<20}" + "".join(f"{workload + ' CPU / wall (ms)':>36}" for workload in workloads),
    ]
    for setting, per_workload in medians.items():
        cells = [f"{cpu * 1000:.1f} / {wall * 1000:.1f}" for cpu, wall in per_workload.values()]
        lines.append(f"{setting:<20}" + "".join(f"{cell:>36}" for cell in cells))

    lines.append("")
    for setting, per_workload in medians.items():
        if setting == STOCK:
            continue
        for workload, (cpu, wall) in per_workload.items():
            stock_cpu, stock_wall = medians[STOCK][workload]
            overhead = cpu / stock_cpu - 1
            verdict = "within" if overhead <= TARGET_OVERHEAD else "above"
            lines.append(
                f"overhead {setting:<20} {workload:<16} CPU {overhead:+6.1%} ({verdict} the "
                f"{TARGET_OVERHEAD:.0%} target), wall {wall / stock_wall - 1:+6.1%}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logger.remove()  # enable_amplification and disable_amplification log every switch; the table is the output
    medians = run(args)
    print(report(args, medians))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
