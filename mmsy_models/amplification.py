"""Training-free amplification of the attention that decoder layers pay to visual tokens.

In the chosen decoder layers, the attention probabilities on image-token keys
are multiplied by ``alpha`` and each row is renormalised. Because softmax
renormalises, this equals adding ``log(alpha)`` to the attention logits of
those keys, so the mechanism is an additive key bias inside an attention
function registered with transformers' ``AttentionInterface``. ``alpha = 1``
is the identity, and amplification is off until ``enable_amplification`` runs.

How it works (transformers 5.25):

- Registration. Importing this module registers ``amplified_attention`` as
  ``"mmsy_amplified"`` (stock SDPA underneath) and ``amplified_eager_attention``
  as ``"mmsy_amplified_eager"`` (the model's eager attention underneath). Each
  name is also registered with ``AttentionMaskInterface`` (``sdpa_mask`` and
  ``eager_mask``), because ``create_causal_mask`` returns no mask at all for an
  implementation name that it does not know, which would drop padding.
- Switching. The decoder layers of one model share one config, and an
  attention module dispatches on ``config._attn_implementation``, so
  transformers offers no per-layer implementation. ``enable_amplification``
  therefore sets the text decoder's config to the amplified name, which leaves
  a vision tower on its own attention. The function itself then decides per
  layer. Layers outside the chosen range, and every layer when ``alpha == 1``,
  call the stock function with unchanged arguments, so their outputs are
  identical to those of the model without amplification.
- Settings. Each decoder attention module gets a ``mmsy_amplification``
  attribute containing the shared ``AmplificationState`` and the module's layer
  index. Nothing is kept at module level beyond the registration.
- Image-token key positions. A forward pre-hook on every model in the wrapper
  chain whose ``forward`` takes ``input_ids`` (for LLaVA: the
  ``...ForConditionalGeneration`` and the inner ``...Model``) records
  ``input_ids == image_token_id``, a boolean key mask of shape
  [batch, past + new tokens]. With an empty cache (prefill, or ``use_cache=False``)
  the mask is rebuilt from the prompt. With a filled cache (cached decoding)
  the first ``cache.get_seq_length()`` columns are kept and the new tokens are
  appended, which keeps key positions right because the KV cache keeps the
  image keys where prefill put them. A continuation must pass the cache that
  the previous amplified forward returned, as ``generate`` does. The image
  positions of any other cache (a copy, or one assembled from other calls)
  were not recorded, so the pre-hook raises for it. Left padding needs
  nothing special: padding tokens are never image tokens, and padded keys
  stay masked by the attention mask. With ``alpha == 1`` the hooks record
  nothing, because no layer reads the mask. A forward post-hook marks the recording stale when the
  forward ends, so that an amplified layer raises instead of reusing the mask
  of an earlier call (for example, a call with ``inputs_embeds`` only).

Each amplified layer matches the key mask to its key length. A static cache
returns more keys than were recorded (its unwritten slots), so the mask is
padded with False. A sliding-window cache returns only the most recent keys,
so the mask keeps its last columns.

Only positions that hold ``image_token_id`` count as visual tokens. Markers
around them (Qwen2-VL's ``<|vision_start|>``, Idefics3's
``<fake_token_around_image>`` and ``<row_i_col_j>``) and video tokens keep
their attention unchanged.
"""

import inspect
import math
import sys
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from loguru import logger
from torch import nn
from transformers import AttentionInterface, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import eager_attention_forward as llama_eager_attention_forward
from transformers.utils import ModelOutput

AMPLIFIED_SDPA = "mmsy_amplified"
AMPLIFIED_EAGER = "mmsy_amplified_eager"
BASE_IMPLEMENTATIONS = {AMPLIFIED_SDPA: "sdpa", AMPLIFIED_EAGER: "eager"}

LAYER_SPEC_NAMES = ("all", "low", "middle", "high")


def parse_layer_spec(spec: str, num_layers: int) -> list[int]:
    """Parse a layer spec into sorted, 0-based decoder layer indices.

    ``spec`` is ``"all"``, ``"low"`` (first third of the layers), ``"middle"``,
    ``"high"`` (last third), an inclusive range ``"a-b"``, a list ``"a,b,c"`` or
    ``"a;b;c"``, or a list that mixes single indices and ranges (``"0-3,8"``).
    Raises ``ValueError`` naming the offending part when the spec is empty or
    malformed, or a layer is outside ``0 .. num_layers - 1``.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")

    text = spec.strip().lower()
    if not text:
        raise ValueError(f"empty layer spec: pass one of {', '.join(LAYER_SPEC_NAMES)}, a range 'a-b' or a list 'a,b,c'")
    if text in LAYER_SPEC_NAMES:
        return _named_layers(text, num_layers)

    layers = set()
    for part in text.replace(";", ",").split(","):
        layers.update(_parse_layer_part(part.strip(), spec, num_layers))
    return sorted(layers)


def _named_layers(name: str, num_layers: int) -> list[int]:
    if name == "all":
        return list(range(num_layers))
    if num_layers < 3:
        raise ValueError(
            f"layer spec '{name}' splits the decoder into thirds and needs at least 3 layers, "
            f"but the model has {num_layers}: pass explicit layers such as '0' or 'all'"
        )

    low_end = round(num_layers / 3)
    high_start = round(2 * num_layers / 3)
    ranges = {"low": range(0, low_end), "middle": range(low_end, high_start), "high": range(high_start, num_layers)}
    return list(ranges[name])


def _parse_layer_part(part: str, spec: str, num_layers: int) -> range:
    valid = f"valid layers are 0-{num_layers - 1} for a model with {num_layers} decoder layers"
    if not part:
        raise ValueError(f"empty entry in layer spec {spec!r}: separate layers with single ',' or ';'")

    first, separator, last = part.partition("-")
    if not first.strip().isdigit() or (separator and not last.strip().isdigit()):
        raise ValueError(
            f"invalid entry {part!r} in layer spec {spec!r}: use a 0-based layer index, "
            f"an inclusive range 'a-b' or one of {', '.join(LAYER_SPEC_NAMES)}"
        )

    start = int(first)
    stop = int(last) if separator else start
    if start > stop:
        raise ValueError(f"invalid range {part!r} in layer spec {spec!r}: write the lower layer first, as in '{stop}-{start}'")
    if stop >= num_layers:
        raise ValueError(f"layer {stop} in layer spec {spec!r} is out of range: {valid}")
    return range(start, stop + 1)


@dataclass(eq=False)
class AmplificationState:
    """Settings and per-forward bookkeeping of amplification on one model.

    ``image_key_mask`` is the boolean key mask [batch, past + new tokens] that
    the forward pre-hooks record. ``recording_modules`` contains the ids of the
    models whose forward is running with a recorded mask, and ``recorded_cache``
    refers to the cache that the last recorded forward returned.
    """

    layers: frozenset[int]
    alpha: float
    image_token_id: int
    base_implementation: str
    num_layers: int
    previous_implementations: list[tuple[PreTrainedConfig, str]] = field(default_factory=list)
    attention_modules: list[nn.Module] = field(default_factory=list)
    hook_handles: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)
    image_key_mask: torch.Tensor | None = None
    recording_modules: set[int] = field(default_factory=set)
    recorded_cache: weakref.ref | None = None

    @property
    def log_alpha(self) -> float:
        return math.log(self.alpha)

    def key_bias(self, batch_size: int, kv_length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Return the additive bias [batch, 1, 1, kv_length]: ``log(alpha)`` on image keys, 0 elsewhere."""
        image_keys = self._image_keys(batch_size, kv_length).to(device)
        bias = torch.zeros(image_keys.shape, dtype=dtype, device=device)
        bias = bias.masked_fill(image_keys, self.log_alpha)
        return bias[:, None, None, :]

    def _image_keys(self, batch_size: int, kv_length: int) -> torch.Tensor:
        if not self.recording_modules or self.image_key_mask is None:
            raise RuntimeError(
                "attention amplification found no image-token positions for this forward: call the model "
                "that was passed to enable_amplification (or one of its inner models) with input_ids, "
                "not inputs_embeds alone"
            )

        mask = self.image_key_mask  # [batch, recorded tokens]
        if mask.shape[0] != batch_size:
            raise RuntimeError(
                f"attention amplification recorded image-token positions for batch size {mask.shape[0]}, "
                f"but the attention layer got batch size {batch_size}"
            )

        recorded = mask.shape[1]
        if recorded < kv_length:
            # A static cache returns all of its slots, and the unwritten ones are never image keys.
            mask = nn.functional.pad(mask, (0, kv_length - recorded), value=False)
        elif recorded > kv_length:
            # A sliding-window cache returns only the most recent keys.
            mask = mask[:, recorded - kv_length :]
        return mask  # [batch, kv_length]


@dataclass(frozen=True)
class AmplificationSettings:
    """Public view of the amplification that is enabled on a model."""

    layers: tuple[int, ...]
    alpha: float
    image_token_id: int
    base_implementation: str


@dataclass(frozen=True)
class _LayerBinding:
    state: AmplificationState
    layer_index: int

    @property
    def amplifies(self) -> bool:
        return self.state.alpha != 1.0 and self.layer_index in self.state.layers


BINDING_ATTRIBUTE = "mmsy_amplification"


def amplified_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run SDPA attention with ``log(alpha)`` added to the logits of image-token keys in the chosen layers.

    Shapes follow transformers: query [batch, heads, q_len, head_dim], key and
    value [batch, kv_heads, kv_len, head_dim]. Modules without amplification
    settings, layers outside the chosen range and ``alpha == 1`` call the stock
    SDPA function with unchanged arguments.
    """
    stock = ALL_ATTENTION_FUNCTIONS["sdpa"]
    binding = getattr(module, BINDING_ATTRIBUTE, None)
    if binding is None or not binding.amplifies:
        return stock(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)

    batch_size, _, q_length, _ = query.shape
    kv_length = key.shape[2]
    key_bias = binding.state.key_bias(batch_size, kv_length, query.dtype, query.device)  # [batch, 1, 1, kv_len]

    is_causal = kwargs.pop("is_causal", None)
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    biased_mask = _sdpa_mask_with_bias(attention_mask, key_bias, q_length, kv_length, is_causal and q_length > 1)

    # A float mask turns off SDPA's is_causal shortcut, and the stock function repeats key/value heads for GQA.
    return stock(module, query, key, value, biased_mask, dropout=dropout, scaling=scaling, **kwargs)


def amplified_eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the model's eager attention with ``log(alpha)`` added to the logits of image-token keys in the chosen layers.

    Used for models loaded with ``attn_implementation="eager"``, whose masks are
    float [batch, 1, q_len, kv_len] tensors of 0 and the dtype's minimum. The
    returned attention weights include the amplification, so
    ``output_attentions=True`` reports the amplified probabilities.
    """
    stock = _eager_attention_of(module)
    binding = getattr(module, BINDING_ATTRIBUTE, None)
    if binding is None or not binding.amplifies:
        return stock(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    batch_size, kv_length = query.shape[0], key.shape[2]
    key_bias = binding.state.key_bias(batch_size, kv_length, query.dtype, query.device)  # [batch, 1, 1, kv_len]
    biased_mask = key_bias if attention_mask is None else attention_mask + key_bias  # [batch, 1, q_len, kv_len]
    return stock(module, query, key, value, biased_mask, scaling=scaling, dropout=dropout, **kwargs)


def _eager_attention_of(module: nn.Module):
    """Return the eager attention function of the modeling file that defines ``module``'s class.

    That is the function the stock model falls back to for ``"eager"``; the
    Llama one is used for classes whose modeling file defines none.
    """
    modeling_file = sys.modules.get(type(module).__module__)
    return getattr(modeling_file, "eager_attention_forward", llama_eager_attention_forward)


def _sdpa_mask_with_bias(
    attention_mask: torch.Tensor | None,
    key_bias: torch.Tensor,
    q_length: int,
    kv_length: int,
    causal: bool,
) -> torch.Tensor:
    """Merge an SDPA attention mask and a key bias into one float mask [batch, 1, q_len or 1, kv_len].

    ``attention_mask`` is what ``sdpa_mask`` produced: None (causal when
    ``causal`` is set, otherwise full attention), a boolean mask (True attends),
    or a float additive mask.
    """
    blocked = torch.finfo(key_bias.dtype).min

    if attention_mask is None and not causal:
        return key_bias
    if attention_mask is None:
        # Upper-left alignment, as SDPA's is_causal: query i attends to keys 0..i, also when a static cache has more slots.
        attends = torch.ones(q_length, kv_length, dtype=torch.bool, device=key_bias.device).tril()
        return key_bias.masked_fill(~attends, blocked)  # [batch, 1, q_len, kv_len]
    if attention_mask.dtype == torch.bool:
        return torch.where(attention_mask, key_bias, blocked)  # [batch, 1, q_len, kv_len]
    return attention_mask + key_bias


def register_amplified_attention() -> None:
    """Register both amplified attention functions and their mask builders with transformers (idempotent)."""
    AttentionInterface.register(AMPLIFIED_SDPA, amplified_attention)
    AttentionInterface.register(AMPLIFIED_EAGER, amplified_eager_attention)
    AttentionMaskInterface.register(AMPLIFIED_SDPA, sdpa_mask)
    AttentionMaskInterface.register(AMPLIFIED_EAGER, eager_mask)


register_amplified_attention()


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Return the text decoder's layer list, whose positions are the layer indices that a layer spec names.

    Works for models whose ``get_decoder()`` returns a module with a ``layers``
    list of layers that have a ``self_attn`` module (Llama, Mistral, Qwen2 and the
    text decoders of LLaVA, LLaVA-NeXT, Qwen2-VL and Idefics3).
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not all(hasattr(layer, "self_attn") for layer in layers):
        raise ValueError(
            f"cannot find decoder layers with a self_attn module in {type(model).__name__} "
            f"(get_decoder() returned {type(decoder).__name__}): attention amplification supports "
            "decoders laid out as decoder.layers[i].self_attn"
        )
    return layers


def count_decoder_layers(model: nn.Module) -> int:
    """Return the number of text decoder layers, the ``num_layers`` that ``parse_layer_spec`` expects."""
    return len(decoder_layers(model))


def config_image_token_id(config: PreTrainedConfig) -> int:
    """Return the image token id of a VLM config (``image_token_id``, else ``image_token_index``).

    Raises ``ValueError`` for configs with neither, such as text-only models.
    """
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(
        f"{type(config).__name__} has no image_token_id or image_token_index: pass the image token id "
        "of the processor's tokenizer explicitly"
    )


def enable_amplification(model: nn.Module, layers: Sequence[int], alpha: float, image_token_id: int) -> None:
    """Amplify attention to image-token keys by ``alpha`` in the given 0-based decoder ``layers`` of ``model``.

    Replaces the settings of an earlier call. Models loaded with eager attention
    keep eager attention underneath. Every other implementation (SDPA, flash,
    flex) runs on SDPA while amplification is enabled, because of these only
    SDPA and eager accept an additive float mask. ``disable_amplification``
    restores the previous implementation.
    """
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number above 0, got {alpha}: 1 leaves attention unchanged")
    if isinstance(image_token_id, bool) or not isinstance(image_token_id, int) or image_token_id < 0:
        raise ValueError(f"image_token_id must be a non-negative integer token id, got {image_token_id!r}")

    disable_amplification(model)
    layer_list = decoder_layers(model)
    chosen = _validated_layers(layers, len(layer_list))
    attention_modules = [layer.self_attn for layer in layer_list]
    configs = _unique_configs(attention_modules)

    previous = configs[0]._attn_implementation
    base = BASE_IMPLEMENTATIONS.get(previous, previous)
    if base not in ("sdpa", "eager"):
        logger.warning(
            f"attention implementation {previous!r} takes no additive mask: "
            "attention amplification runs every decoder layer on SDPA until disable_amplification"
        )
        base = "sdpa"

    state = AmplificationState(
        layers=frozenset(chosen),
        alpha=float(alpha),
        image_token_id=image_token_id,
        base_implementation=base,
        num_layers=len(layer_list),
        previous_implementations=[(config, config._attn_implementation) for config in configs],
        attention_modules=attention_modules,
    )
    for index, module in enumerate(attention_modules):
        setattr(module, BINDING_ATTRIBUTE, _LayerBinding(state, index))
    state.hook_handles = _register_recording_hooks(model, state)

    implementation = AMPLIFIED_EAGER if base == "eager" else AMPLIFIED_SDPA
    for config in configs:
        config._attn_implementation = implementation

    logger.info(
        f"Attention amplification enabled: alpha={state.alpha} on decoder layers {chosen} "
        f"of {state.num_layers}, image token id {image_token_id}, {base} attention underneath"
    )


def disable_amplification(model: nn.Module) -> None:
    """Restore the attention implementation that ``model`` had before ``enable_amplification``.

    Does nothing on a model without amplification.
    """
    state = _state_of(model)
    if state is None:
        return

    for handle in state.hook_handles:
        handle.remove()
    for module in state.attention_modules:
        delattr(module, BINDING_ATTRIBUTE)
    for config, implementation in state.previous_implementations:
        config._attn_implementation = implementation

    state.image_key_mask = None
    logger.info(f"Attention amplification disabled: decoder attention is {state.previous_implementations[0][1]} again")


def amplification_settings(model: nn.Module) -> AmplificationSettings | None:
    """Return the amplification enabled on ``model``, or None when it is off."""
    state = _state_of(model)
    if state is None:
        return None
    return AmplificationSettings(
        layers=tuple(sorted(state.layers)),
        alpha=state.alpha,
        image_token_id=state.image_token_id,
        base_implementation=state.base_implementation,
    )


@contextmanager
def amplification(model: nn.Module, layers: Sequence[int], alpha: float, image_token_id: int) -> Iterator[nn.Module]:
    """Enable amplification for the duration of a ``with`` block, then disable it (also on errors)."""
    enable_amplification(model, layers, alpha, image_token_id)
    try:
        yield model
    finally:
        disable_amplification(model)


def _state_of(model: nn.Module) -> AmplificationState | None:
    try:
        layer_list = decoder_layers(model)
    except ValueError:
        return None
    binding = getattr(layer_list[0].self_attn, BINDING_ATTRIBUTE, None) if len(layer_list) else None
    return binding.state if binding is not None else None


def _validated_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    chosen = sorted(set(layers))
    if not chosen:
        raise ValueError("layers is empty: pass at least one decoder layer, for example parse_layer_spec('all', n)")
    for layer in chosen:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < num_layers:
            raise ValueError(
                f"layer {layer!r} is out of range: valid layers are 0-{num_layers - 1} "
                f"for a model with {num_layers} decoder layers"
            )
    return chosen


def _unique_configs(attention_modules: Sequence[nn.Module]) -> list[PreTrainedConfig]:
    configs = []
    for module in attention_modules:
        config = getattr(module, "config", None)
        if config is None:
            raise ValueError(f"attention module {type(module).__name__} has no config: it cannot switch implementations")
        if all(config is not seen for seen in configs):
            configs.append(config)
    return configs


def _register_recording_hooks(model: nn.Module, state: AmplificationState) -> list[torch.utils.hooks.RemovableHandle]:
    """Hook every model in ``model``'s wrapper chain whose ``forward`` takes ``input_ids``."""
    handles = []
    for module in model.modules():
        if module is not model and not isinstance(module, PreTrainedModel):
            continue
        parameters = list(inspect.signature(module.forward).parameters)
        if "input_ids" not in parameters:
            continue

        positions = {name: parameters.index(name) for name in ("input_ids", "cache", "past_key_values") if name in parameters}
        handles.append(module.register_forward_pre_hook(_ImageKeyRecorder(state, positions), with_kwargs=True))
        handles.append(module.register_forward_hook(_RecordingEnd(state), with_kwargs=True, always_call=True))
    return handles


@dataclass(frozen=True, eq=False)
class _ImageKeyRecorder:
    """Forward pre-hook that updates ``state.image_key_mask`` from ``input_ids`` and the cache length."""

    state: AmplificationState
    positions: dict[str, int]

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = self._argument("input_ids", args, kwargs)
        if input_ids is None or self.state.alpha == 1.0:
            return

        cache = self._argument("cache", args, kwargs)
        if cache is None:
            cache = self._argument("past_key_values", args, kwargs)
        past_length = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0

        new_keys = input_ids == self.state.image_token_id  # [batch, new tokens]
        if past_length == 0:
            self.state.image_key_mask = new_keys
        else:
            past_keys = self._past_keys(cache, new_keys.shape[0], past_length)  # [batch, past tokens]
            self.state.image_key_mask = torch.cat([past_keys, new_keys], dim=1)
        self.state.recording_modules.add(id(module))

    def _argument(self, name: str, args: tuple, kwargs: dict):
        if name in kwargs:
            return kwargs[name]
        position = self.positions.get(name)
        if position is not None and position < len(args):
            return args[position]
        return None

    def _past_keys(self, cache, batch_size: int, past_length: int) -> torch.Tensor:
        recorded_cache = self.state.recorded_cache() if self.state.recorded_cache is not None else None
        if recorded_cache is not cache:
            raise RuntimeError(
                f"the {type(cache).__name__} passed for cached decoding was not returned by the last forward "
                "under attention amplification, so the image-token positions of its keys are unknown: continue "
                "from the cache of the previous amplified call, or run the full prompt without a cache"
            )

        previous = self.state.image_key_mask  # [batch, recorded tokens]
        if previous is None or previous.shape[0] != batch_size or previous.shape[1] < past_length:
            recorded = "none" if previous is None else f"{tuple(previous.shape)}"
            raise RuntimeError(
                f"the cache contains {past_length} tokens for batch size {batch_size}, but attention amplification "
                f"recorded image-token positions of shape {recorded}: run the prefill through the model "
                "after enable_amplification, with input_ids"
            )
        return previous[:, :past_length]


@dataclass(frozen=True, eq=False)
class _RecordingEnd:
    """Forward post-hook that marks the recorded mask stale and remembers the cache that the forward returned."""

    state: AmplificationState

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output) -> None:
        if id(module) not in self.state.recording_modules:
            return
        self.state.recording_modules.discard(id(module))

        cache = _returned_cache(output)
        self.state.recorded_cache = weakref.ref(cache) if cache is not None else None


def _returned_cache(output) -> Cache | None:
    """Return the cache in a model output (a ``ModelOutput`` or, with ``return_dict=False``, a tuple)."""
    if isinstance(output, ModelOutput):
        values = output.values()
    elif isinstance(output, tuple):
        values = output
    else:
        values = ()
    return next((value for value in values if isinstance(value, Cache)), None)
