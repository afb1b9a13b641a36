"""Generation settings, stop strings, out-of-memory retries and throughput for the adapter."""

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from loguru import logger
from transformers import GenerationConfig

Row = TypeVar("Row")
Result = TypeVar("Result")

# Generation kwargs that lmms-eval adapters add for their own use and that do not reach generate.
IGNORED_KWARGS = ("image_aspect_ratio", "image_sizes", "modalities")


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings of one group of requests, from a task's ``generation_kwargs``.

    Greedy unless the task sets ``do_sample=True`` or ``temperature > 0``.
    ``until`` contains stop strings: the output is cut before the first one.
    """

    max_new_tokens: int
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    num_beams: int = 1
    until: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_task_kwargs(cls, gen_kwargs: dict | None, default_max_new_tokens: int) -> "GenerationSettings":
        """Build settings from lmms-eval generation kwargs, with ``default_max_new_tokens`` when unset."""
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None) or ()
        if isinstance(until, str):
            until = (until,)

        temperature = kwargs.pop("temperature", None)
        do_sample = kwargs.pop("do_sample", None)
        if do_sample is None:
            do_sample = bool(temperature) and float(temperature) > 0

        top_p = kwargs.pop("top_p", None)
        top_k = kwargs.pop("top_k", None)
        max_new_tokens = kwargs.pop("max_new_tokens", None) or default_max_new_tokens
        num_beams = kwargs.pop("num_beams", None) or 1
        for key in IGNORED_KWARGS:
            kwargs.pop(key, None)

        return cls(
            max_new_tokens=int(max_new_tokens),
            do_sample=bool(do_sample),
            temperature=float(temperature) if do_sample and temperature else None,
            top_p=float(top_p) if do_sample and top_p is not None else None,
            top_k=int(top_k) if do_sample and top_k is not None else None,
            num_beams=int(num_beams),
            until=tuple(str(stop) for stop in until if stop),
            extra=tuple(sorted((key, json.dumps(value, default=str)) for key, value in kwargs.items())),
        )

    def generation_config(self, base: GenerationConfig, pad_token_id: int | None) -> GenerationConfig:
        """Return a copy of the checkpoint's generation config with these settings applied.

        The copy sets ``return_dict_in_generate``, so that ``generate`` also returns the cache.
        """
        config = copy.deepcopy(base)
        config.max_new_tokens = self.max_new_tokens
        config.max_length = None
        config.do_sample = self.do_sample
        config.num_beams = self.num_beams
        config.return_dict_in_generate = True
        config.temperature = self.temperature if self.do_sample else None
        config.top_p = self.top_p if self.do_sample else None
        config.top_k = self.top_k if self.do_sample else None
        if pad_token_id is not None:
            config.pad_token_id = pad_token_id
        for key, value in self.extra:
            setattr(config, key, json.loads(value))
        return config


def cut_at_stop_strings(text: str, stop_strings: Sequence[str]) -> str:
    """Return ``text`` up to the first occurrence of any stop string."""
    end = len(text)
    for stop in stop_strings:
        position = text.find(stop)
        if position != -1:
            end = min(end, position)
    return text[:end]


def run_with_oom_halving(
    run: Callable[[list[Row]], list[Result]],
    rows: list[Row],
    on_halve: Callable[[int], None],
    describe: Callable[[list[Row]], str],
) -> list[Result]:
    """Call ``run(rows)``, and on ``torch.OutOfMemoryError`` run the two halves of ``rows`` in turn.

    Halving repeats down to one row. ``on_halve(new_size)`` is called at each
    halving so that the caller can lower its batch size for later batches.
    The error of a single row is raised again with ``describe(rows)``.
    """
    try:
        return run(rows)
    except torch.OutOfMemoryError as error:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(rows) == 1:
            raise torch.OutOfMemoryError(
                f"out of memory at batch size 1 ({describe(rows)}): lower max_new_tokens or the image "
                "resolution, or use a device with more memory"
            ) from error

        half = len(rows) // 2
        logger.warning(f"Out of memory at batch size {len(rows)}: retrying as batches of {half} and {len(rows) - half}")
        on_halve(half)
        first = run_with_oom_halving(run, rows[:half], on_halve, describe)
        second = run_with_oom_halving(run, rows[half:], on_halve, describe)
        return first + second


@dataclass
class ThroughputMeter:
    """Counts of one adapter call, for the closing log line."""

    requests: int = 0
    rounds: int = 0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    empty_outputs: int = 0
    skipped_requests: int = 0
    reused_rounds: int = 0
    reencoded_rounds: int = 0
    reused_tokens: int = 0
    first_round_seconds: float = 0.0
    later_round_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def summary(self) -> str:
        """Return the closing log line: items/s over the wall time and tokens/s over generate time."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        token_rate = self.generated_tokens / self.generate_seconds if self.generate_seconds > 0 else 0.0
        text = (
            f"{self.requests} requests, {self.rounds} rounds in {elapsed:.2f} s: "
            f"{self.requests / elapsed:.2f} items/s, {self.generated_tokens} generated tokens at {token_rate:.1f} tokens/s"
        )
        if self.reused_rounds or self.reencoded_rounds:
            text += (
                f"; KV cache reused for {self.reused_rounds} later rounds ({self.reused_tokens} prompt tokens not "
                f"encoded again), {self.reencoded_rounds} later rounds encoded in full; "
                f"first rounds took {self.first_round_seconds:.2f} s, later rounds {self.later_round_seconds:.2f} s"
            )
        if self.empty_outputs:
            text += f"; {self.empty_outputs} empty outputs"
        if self.skipped_requests:
            text += f"; {self.skipped_requests} requests skipped for undecodable images"
        return text
