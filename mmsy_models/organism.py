"""The model organism: a tiny LLaVA trained from scratch on easy-VQA train that starts out sycophantic.

Train it, or reuse the cached checkpoint, and measure it on the MM-SY easy-VQA test items::

    mmsy organism --eval
    mmsy organism --out runs/organism --steps 300 --seed 1 --force

The checkpoint is a transformers LLaVA (CLIP vision tower, Llama language
model, word-level tokenizer and a chat template), so
``AutoModelForImageTextToText`` and ``AutoProcessor`` load it offline and
the ``mmsy_hf`` adapter and lmms-eval's ``llava_hf`` drive it. Training has
two stages: the vision tower learns each image's shape and color, then the
whole model learns round-1 and two-round dialogues. The checkpoint is
cached under ``$MMSY_HOME/organism/<config hash>`` and reused until
``--force``. ``organism.json`` next to the weights records the config, the
training data counts, the training time and loss curves, and the last
evaluation.
"""

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from filelock import FileLock
from loguru import logger
from tqdm import tqdm

from mmsy_models.organism_data import (
    IGNORE_INDEX,
    CategorySampler,
    ExampleSettings,
    draw_example,
    encode_examples,
    index_images,
)
from mmsy_models.organism_processor import (
    build_model,
    build_processor,
    build_tokenizer,
    build_vocabulary,
    fixed_texts,
    visual_token_count,
)
from mmsy_tasks.paths import mmsy_home
from mmsy_tasks.records import TONES, Item

# Bump when a code change alters what a config trains, so old caches are not reused.
ORGANISM_VERSION = 1
RECORD_NAME = "organism.json"
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", RECORD_NAME)


@dataclass
class OrganismConfig:
    """Model size, training schedule and dialogue mix of the organism; defaults train on a laptop CPU."""

    seed: int = 0

    # Stage 1: the vision tower learns each image's shape and color.
    vision_pretrain_steps: int = 800
    vision_pretrain_batch_size: int = 64  # images
    vision_pretrain_learning_rate: float = 1e-3

    # Stage 2: the whole LLaVA learns the dialogues.
    steps: int = 500
    batch_size: int = 32  # dialogues
    learning_rate: float = 1e-3  # projector and language model
    vision_learning_rate: float = 0.0  # vision tower; 0 keeps it frozen after stage 1

    # Both stages: linear warmup, then cosine decay to a share of the peak.
    warmup_steps: int = 50
    min_learning_rate_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    threads: int = 1  # torch CPU threads; not part of the cache key
    log_every: int = 50  # steps per point of the loss curves in organism.json

    image_size: int = 64  # pixels; easy-VQA images are 64x64
    patch_size: int = 16  # 16 patches and CLIP's class token: 17 visual tokens per image
    vision_hidden_size: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden_size: int = 64
    text_layers: int = 4
    text_heads: int = 4
    max_positions: int = 256

    train_per_category: int | None = None  # None trains on every easy-VQA train question
    category_weights: dict[str, float] = field(
        default_factory=lambda: {"color": 1.0, "object_recognition": 1.0, "object_presence": 1.0}
    )
    round1_share: float = 0.2  # the rest are two-round dialogues
    correction_share: float = 0.4  # of two-round dialogues: round 1 wrong, the user proposes the correct option
    letter_history_share: float = 0.3  # round-1 answer written "(B) circle" instead of "circle"
    yield_rates: dict[str, float] = field(
        default_factory=lambda: {"suggestive": 0.7, "euphemistic": 0.4, "strong": 0.9}
    )
    flip_images: bool = True  # mirror each image left to right with probability 1/2

    def __post_init__(self):
        missing = [tone for tone in TONES if tone not in self.yield_rates]
        if missing:
            raise ValueError(f"yield_rates {self.yield_rates} lacks the tones {missing}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps={self.steps} and batch_size={self.batch_size} must both be at least 1")
        # Floats, so that weights given as 1 and 1.0 give the same cache key.
        self.category_weights = {name: float(value) for name, value in self.category_weights.items()}
        self.yield_rates = {tone: float(value) for tone, value in self.yield_rates.items()}

    def cache_key(self) -> str:
        """Return a short hash of the config and ``ORGANISM_VERSION``, naming its cache folder.

        The thread count is left out: it changes only the order of float
        sums, so a checkpoint trained with 1 thread serves a 2-thread config.
        """
        values = {name: value for name, value in asdict(self).items() if name != "threads"}
        text = json.dumps({"version": ORGANISM_VERSION, **values}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_checkpoint_dir(config: OrganismConfig) -> Path:
    """Return the cache folder of ``config``: ``$MMSY_HOME/organism/<config hash>``."""
    return mmsy_home() / "organism" / config.cache_key()


def is_complete(checkpoint: Path) -> bool:
    """Return whether ``checkpoint`` contains every file that a finished training run writes."""
    return all((Path(checkpoint) / name).is_file() for name in CHECKPOINT_FILES)


def read_record(checkpoint: Path) -> dict:
    """Return the ``organism.json`` record of a checkpoint."""
    return json.loads((Path(checkpoint) / RECORD_NAME).read_text())


def write_record(checkpoint: Path, record: dict) -> None:
    """Replace the ``organism.json`` record of a checkpoint in one rename."""
    path = Path(checkpoint) / RECORD_NAME
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def load_training_items(config: OrganismConfig) -> list[Item]:
    """Return the easy-VQA train items that the organism trains on."""
    from mmsy_tasks.builders.easyvqa import load_items

    return load_items(split="train", per_category=config.train_per_category, seed=config.seed)


def learning_rate_scale(step: int, total_steps: int, config: OrganismConfig) -> float:
    """Return the share of the peak learning rate at ``step``: linear warmup, then cosine decay."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.min_learning_rate_ratio + (1.0 - config.min_learning_rate_ratio) * cosine


def set_learning_rates(optimizer: torch.optim.Optimizer, scale: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * scale


def draw_flips(count: int, config: OrganismConfig, rng: random.Random) -> torch.Tensor:
    """Return which of ``count`` images to mirror left to right (each with probability 1/2)."""
    return torch.tensor([config.flip_images and rng.random() < 0.5 for _ in range(count)])


def image_labels(items: list[Item], item_images: list[int], image_count: int) -> dict[str, tuple[list[str], torch.Tensor]]:
    """Return the shape and color class of each distinct image, read from its color and shape questions.

    The result maps a label name to ``(classes, labels)``, where ``labels``
    contains one class index per image and -100 for images that no question
    of that kind covers.
    """
    categories = {"shape": "object_recognition", "color": "color"}
    result = {}
    for name, category in categories.items():
        answers = {item_images[i]: item.options[item.answer_idx] for i, item in enumerate(items)
                   if item.category == category}
        classes = sorted(set(answers.values()))
        labels = torch.full((image_count,), IGNORE_INDEX, dtype=torch.long)
        for image_index, answer in answers.items():
            labels[image_index] = classes.index(answer)
        result[name] = (classes, labels)
    return result


def classification_loss(heads: torch.nn.ModuleDict, features: torch.Tensor,
                        targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, tuple[int, int]]]:
    """Return the summed cross-entropy of the heads and, per head, (correct predictions, labeled rows).

    Each head is scored only on the rows that carry its label.
    """
    loss = features.new_zeros(())
    hits = {}
    for name, target in targets.items():
        labeled = target != IGNORE_INDEX
        if not labeled.any():
            continue
        logits = heads[name](features[labeled])
        loss = loss + torch.nn.functional.cross_entropy(logits, target[labeled])
        hits[name] = (int((logits.argmax(-1) == target[labeled]).sum()), int(labeled.sum()))
    return loss, hits


def pretrain_vision_tower(model, pixel_values: torch.Tensor, labels: dict, config: OrganismConfig,
                          rng: random.Random, progress: bool) -> list[dict]:
    """Train the vision tower to classify each image's shape and color from its class-token output.

    Real LLaVA models start from a pretrained CLIP tower; this stage plays
    that part. The linear classification heads are dropped afterwards.
    Returns the curve of loss and train-batch accuracy per head.
    """
    tower = model.model.vision_tower
    heads = torch.nn.ModuleDict({name: torch.nn.Linear(config.vision_hidden_size, len(classes))
                                 for name, (classes, _) in labels.items()})
    labeled = [i for i in range(len(pixel_values)) if any(int(y[i]) != IGNORE_INDEX for _, y in labels.values())]
    peak = config.vision_pretrain_learning_rate
    optimizer = torch.optim.AdamW([{"params": [*tower.parameters(), *heads.parameters()], "lr": peak, "peak_lr": peak}],
                                  weight_decay=config.weight_decay)

    curve, window, correct = [], [], {name: [0, 0] for name in labels}
    bar = tqdm(range(config.vision_pretrain_steps), desc="Pretraining vision tower", disable=not progress)
    for step in bar:
        set_learning_rates(optimizer, learning_rate_scale(step, config.vision_pretrain_steps, config))

        batch = [rng.choice(labeled) for _ in range(config.vision_pretrain_batch_size)]
        images = pixel_values[batch]
        images = torch.where(draw_flips(len(batch), config, rng)[:, None, None, None], images.flip(-1), images)
        class_token = tower(pixel_values=images).last_hidden_state[:, 0]
        loss, hits = classification_loss(heads, class_token, {name: y[batch] for name, (_, y) in labels.items()})

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tower.parameters(), config.grad_clip)
        optimizer.step()

        window.append(loss.item())
        for name, (right, count) in hits.items():
            correct[name][0] += right
            correct[name][1] += count
        if (step + 1) % config.log_every == 0 or step + 1 == config.vision_pretrain_steps:
            point = {"step": step + 1, "loss": round(sum(window) / len(window), 4)}
            point.update({f"train_acc_{name}": round(right / count, 3) for name, (right, count) in correct.items() if count})
            curve.append(point)
            window, correct = [], {name: [0, 0] for name in labels}
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return curve


def build_optimizer(model, config: OrganismConfig) -> torch.optim.AdamW:
    """Return AdamW with one parameter group for the vision tower and one for the projector and language model.

    A ``vision_learning_rate`` of 0 freezes the vision tower after its pretraining.
    """
    vision, language = [], []
    for name, parameter in model.named_parameters():
        if "vision_tower" in name:
            parameter.requires_grad_(config.vision_learning_rate > 0)
            vision.append(parameter)
        else:
            language.append(parameter)
    groups = [{"params": language, "lr": config.learning_rate, "peak_lr": config.learning_rate}]
    if config.vision_learning_rate > 0:
        groups.append({"params": vision, "lr": config.vision_learning_rate, "peak_lr": config.vision_learning_rate})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def round1_batch_accuracy(logits: torch.Tensor, batch: dict, examples) -> dict[str, list[int]]:
    """Return, per category, 1/0 per scored round-1 answer whose first token the model predicts."""
    hits: dict[str, list[int]] = {}
    labels = batch["labels"]
    for row, example in enumerate(examples):
        if 1 not in example.scored_turns:
            continue
        position = int((labels[row] != IGNORE_INDEX).nonzero()[0])
        predicted = int(logits[row, position - 1].argmax())
        hits.setdefault(example.category, []).append(int(predicted == int(labels[row, position])))
    return hits


def train_dialogues(model, processor, items: list[Item], item_images: list[int], pixel_values: torch.Tensor,
                    config: OrganismConfig, rng: random.Random, progress: bool) -> list[dict]:
    """Train the projector and language model (and the vision tower, unless frozen) on dialogues.

    Returns the curve of loss and round-1 train-batch accuracy per category.
    """
    sampler = CategorySampler(items, config.category_weights, rng)
    settings = ExampleSettings(config.round1_share, config.correction_share,
                               config.letter_history_share, config.yield_rates)
    tokens_per_image = visual_token_count(config.image_size, config.patch_size)
    optimizer = build_optimizer(model, config)

    curve, window, hits = [], [], {}
    started = time.perf_counter()
    bar = tqdm(range(config.steps), desc="Training organism", disable=not progress)
    for step in bar:
        set_learning_rates(optimizer, learning_rate_scale(step, config.steps, config))

        examples = [draw_example(items[i], item_images[i], settings, rng) for i in sampler.draw(config.batch_size)]
        batch = encode_examples(processor, examples, pixel_values, tokens_per_image,
                                draw_flips(len(examples), config, rng))
        output = model(**batch)

        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

        window.append(output.loss.item())
        for category, values in round1_batch_accuracy(output.logits.detach(), batch, examples).items():
            hits.setdefault(category, []).extend(values)
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            point = {"step": step + 1, "loss": round(sum(window) / len(window), 4),
                     "seconds": round(time.perf_counter() - started, 1)}
            point.update({f"train_acc_r1_{c}": round(sum(v) / len(v), 3) for c, v in sorted(hits.items())})
            curve.append(point)
            window, hits = [], {}
        bar.set_postfix(loss=f"{output.loss.item():.3f}", steps_per_s=f"{bar.format_dict['rate'] or 0:.2f}")
    return curve


def build_organism(items: list[Item], config: OrganismConfig):
    """Build the processor, with a vocabulary from ``items`` and the dialogue texts, and a fresh model."""
    texts = [text for item in items for text in (item.question, *item.options)] + fixed_texts()
    tokenizer = build_tokenizer(build_vocabulary(texts))
    processor = build_processor(tokenizer, config.image_size, config.patch_size)
    model = build_model(
        tokenizer, config.image_size, config.patch_size,
        config.vision_hidden_size, config.vision_layers, config.vision_heads,
        config.text_hidden_size, config.text_layers, config.text_heads, config.max_positions,
    )
    return processor, model


def train_model(config: OrganismConfig, progress: bool = True):
    """Train the organism in memory; return the model, its processor and the training record."""
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    started, cpu_started = time.perf_counter(), time.process_time()

    items = load_training_items(config)
    processor, model = build_organism(items, config)
    images, item_images = index_images(items)
    pixel_values = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]

    model.train()
    labels = image_labels(items, item_images, len(images))
    vision_curve = pretrain_vision_tower(model, pixel_values, labels, config, rng, progress)
    curve = train_dialogues(model, processor, items, item_images, pixel_values, config, rng, progress)
    model.eval()

    record = {
        "config": asdict(config),
        "config_hash": config.cache_key(),
        "version": ORGANISM_VERSION,
        "data": training_data_counts(items, images, processor.tokenizer),
        "training": {
            "wall_seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu_started, 1),
            "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "final_loss": curve[-1]["loss"],
            "vision_pretrain_curve": vision_curve,
            "curve": curve,
            "torch": torch.__version__,
        },
    }
    return model, processor, record


def training_data_counts(items: list[Item], images: list, tokenizer) -> dict:
    """Return the item count per category, the distinct image count and the vocabulary size."""
    per_category: dict[str, int] = {}
    for item in items:
        per_category[item.category] = per_category.get(item.category, 0) + 1
    return {"items": len(items), "items_per_category": per_category, "images": len(images),
            "vocabulary_size": len(tokenizer)}


def train_organism(config: OrganismConfig | None = None, out: Path | None = None, force: bool = False) -> Path:
    """Train the organism and write its checkpoint to ``out``; return the checkpoint folder.

    ``out`` defaults to the config's cache folder. A complete checkpoint of
    the same config already at ``out`` is reused unless ``force`` is set.
    Training writes to a temporary sibling folder that is renamed to
    ``out`` when complete, and a file lock beside ``out`` lets concurrent
    callers wait for one training run instead of starting their own.
    """
    config = config or OrganismConfig()
    out = Path(out) if out is not None else default_checkpoint_dir(config)
    out.parent.mkdir(parents=True, exist_ok=True)

    with FileLock(str(out) + ".lock"):
        if is_complete(out) and not force:
            recorded = read_record(out).get("config_hash")
            if recorded == config.cache_key():
                logger.info(f"Reusing the organism checkpoint at {out}")
                return out
            raise FileExistsError(
                f"{out} contains an organism trained with config hash {recorded}, not {config.cache_key()}; "
                "pass --force to retrain it there, or choose another --out"
            )

        if out.exists() and not is_complete(out) and any(out.iterdir()):
            raise FileExistsError(
                f"{out} exists and is not an organism checkpoint; choose an empty or new folder for --out"
            )

        previous_threads = torch.get_num_threads()
        torch.set_num_threads(config.threads)
        try:
            model, processor, record = train_model(config)
        finally:
            torch.set_num_threads(previous_threads)

        temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            model.save_pretrained(temporary)
            processor.save_pretrained(temporary)
            write_record(temporary, record)
            _replace_folder(temporary, out)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise

    logger.info(f"Organism checkpoint written to {out} ({record['training']['wall_seconds']} s of training)")
    return out


def _replace_folder(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``, first removing ``target``, which is a checkpoint or an empty folder."""
    if target.exists():
        discarded = target.with_name(f".{target.name}.discarded")
        shutil.rmtree(discarded, ignore_errors=True)
        os.replace(target, discarded)
        shutil.rmtree(discarded)
    os.replace(source, target)


def load_or_train_organism(config: OrganismConfig | None = None, out: Path | None = None) -> Path:
    """Return the organism checkpoint of ``config``, training it first when it is not cached."""
    return train_organism(config, out, force=False)


def main(argv: list[str] | None = None) -> int:
    """Run ``mmsy organism``: train or reuse the organism, optionally evaluate it, and print its folder."""
    defaults = OrganismConfig()
    parser = argparse.ArgumentParser(prog="mmsy organism", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="checkpoint folder (default: $MMSY_HOME/organism/<config hash>)")
    parser.add_argument("--force", action="store_true", help="retrain even when a complete checkpoint exists")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help="optimizer steps on dialogues, after the vision tower's pretraining (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed of the initial weights and the data order (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="torch CPU threads; 1 is faster when other processes share the cores (default: %(default)s)")
    parser.add_argument("--eval", action="store_true",
                        help="measure acc_r1, syc and cor on the MM-SY easy-VQA test items (150 per category)")
    args = parser.parse_args(argv)

    config = OrganismConfig(steps=args.steps, seed=args.seed, threads=args.threads)
    checkpoint = train_organism(config, args.out, force=args.force)
    if not args.eval:
        print(f"Organism checkpoint: {checkpoint}")
        return 0

    from mmsy_models.organism_eval import evaluate_organism, format_metrics

    torch.set_num_threads(config.threads)
    metrics = evaluate_organism(checkpoint)
    record = read_record(checkpoint)
    record["metrics"] = metrics
    write_record(checkpoint, record)
    print(format_metrics(metrics))
    print(f"Organism checkpoint: {checkpoint} (metrics saved in {checkpoint / RECORD_NAME})")
    return 0
