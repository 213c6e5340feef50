"""Catalogues of models, hardware and provider caching rules, loaded from TOML with validation.

Three data files ship in ``kvtier/cost/data/`` (``models.toml``, ``hardware.toml``,
``providers.toml``); every entry carries a ``source`` and an ``as_of`` date. A user file (``kvtier
cost --catalog FILE``) has the same layout and adds entries, or overrides shipped ones field by field;
each entry it touches must give its own ``source`` and ``as_of``::

    [models."my-model"]                 # a new model: every required field
    layers = 40
    ...
    [hardware."h100-sxm"]               # an override: only the fields that change
    gpu_usd_per_hour = 2.10
    source = "our 2026 reserved-instance contract"
    as_of = "2026-01-15"

KV bytes per token (:attr:`ModelSpec.kv_bytes_per_token`), for every token within the attention
window::

    mha, gqa, sliding, hybrid   2 (K and V) x layers x kv_heads x head_dim x bytes(kv_dtype)
    mla                         layers x kv_latent_dim x bytes(kv_dtype)
                                (DeepSeek-V3: 61 x (512 + 64) x 2 = 70,272)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from kvtier.errors import InvalidArgumentError

__all__ = [
    "AttentionKind",
    "CatalogError",
    "UnknownNameError",
    "ModelSpec",
    "HardwareSpec",
    "ModelPrice",
    "ProviderRules",
    "Catalog",
    "KV_DTYPE_BYTES",
    "load_catalog",
]

AttentionKind = Literal["mha", "gqa", "mla", "sliding", "hybrid"]
ATTENTION_KINDS: tuple[str, ...] = ("mha", "gqa", "mla", "sliding", "hybrid")

#: Bytes per KV element of each KV dtype name accepted in ``models.toml``.
KV_DTYPE_BYTES: Mapping[str, int] = MappingProxyType(
    {
        "float32": 4,
        "bfloat16": 2,
        "float16": 2,
        "fp8": 1,
        "float8_e4m3fn": 1,
        "float8_e5m2": 1,
        "int8": 1,
    }
)

_SECTIONS = ("models", "hardware", "providers")


class CatalogError(InvalidArgumentError):
    """A catalogue entry is malformed: the message names the file, the entry and the field."""


class UnknownNameError(CatalogError):
    """A model, hardware or provider name that the catalogue does not hold; the message lists the known ones."""

    def __init__(self, what: str, name: str, known: Iterable[str], hint: str = "", *, plural: str | None = None) -> None:
        self.what, self.name, self.known = what, name, tuple(sorted(known))
        extra = f"; {hint}" if hint else ""
        many = plural if plural is not None else {"hardware": "hardware entries"}.get(what, what + "s")
        super().__init__(f"unknown {what} {name!r}: known {many} are {', '.join(self.known) or '(none)'}{extra}")


# ------------------------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class ModelSpec:
    """An open-weight model's shape: what its KV cache and its weights cost.

    Attributes
    ----------
    name
        Catalogue name (``llama-3.1-8b``).
    layers
        Transformer layers that hold a KV cache.
    attention
        ``mha`` / ``gqa`` (K and V per KV head), ``mla`` (one compressed latent per token and
        layer), ``sliding`` (every layer sees the last ``sliding_window`` tokens) or ``hybrid``
        (``sliding_layers`` of the layers use a window, the others see everything).
    kv_dtype
        KV cache element type (a key of :data:`KV_DTYPE_BYTES`).
    total_params, active_params
        Parameters stored / used per token (equal for dense models; MoE: active < total).
    bytes_per_param
        Bytes per stored parameter (bf16 2, FP8 1, MXFP4 about 0.5).
    kv_heads, head_dim
        KV heads per layer and their dimension (all kinds but ``mla``).
    kv_latent_dim
        ``mla``: elements cached per token and layer (compressed KV + decoupled RoPE key).
    sliding_window, sliding_layers
        Window in tokens (``sliding``, ``hybrid``) and, for ``hybrid``, how many layers use it.
    heads
        Query heads, optional: checks ``mha`` (== kv_heads) and ``gqa`` (> kv_heads).
    source, as_of
        Where the figures come from and when they were read.
    """

    name: str
    layers: int
    attention: AttentionKind
    kv_dtype: str
    total_params: float
    active_params: float
    bytes_per_param: float
    source: str
    as_of: str
    kv_heads: int | None = None
    head_dim: int | None = None
    kv_latent_dim: int | None = None
    sliding_window: int | None = None
    sliding_layers: int = 0
    heads: int | None = None
    hf_id: str = ""
    notes: str = ""

    @property
    def kv_dtype_bytes(self) -> int:
        return KV_DTYPE_BYTES[self.kv_dtype]

    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        """KV bytes one token adds to one layer."""
        if self.attention == "mla":
            assert self.kv_latent_dim is not None
            return self.kv_latent_dim * self.kv_dtype_bytes
        assert self.kv_heads is not None and self.head_dim is not None
        return 2 * self.kv_heads * self.head_dim * self.kv_dtype_bytes

    @property
    def windowed_layers(self) -> int:
        """Layers whose KV is bounded by ``sliding_window``."""
        if self.attention == "sliding":
            return self.layers
        return self.sliding_layers if self.attention == "hybrid" else 0

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes per token, all layers, for a token within the window (the block size the cache stores)."""
        return self.layers * self.kv_bytes_per_token_per_layer

    def kv_bytes(self, context_tokens: int) -> int:
        """KV bytes of one sequence of ``context_tokens`` tokens (windowed layers keep only the window)."""
        n = int(context_tokens)
        if n < 0:
            raise InvalidArgumentError(f"context_tokens must be >= 0, got {n}")
        per = self.kv_bytes_per_token_per_layer
        win = self.windowed_layers
        full = self.layers - win
        kept = n if self.sliding_window is None else min(n, self.sliding_window)
        return full * per * n + win * per * kept

    @property
    def weight_bytes(self) -> float:
        """Bytes of the stored weights (``total_params x bytes_per_param``)."""
        return self.total_params * self.bytes_per_param

    @property
    def flops_per_token(self) -> float:
        """Forward FLOPs per token: 2 x active parameters (attention over the context not counted)."""
        return 2.0 * self.active_params

    @property
    def is_moe(self) -> bool:
        return self.active_params < self.total_params


@dataclass(frozen=True)
class HardwareSpec:
    """A GPU instance type and the memory tiers beside it.

    Attributes
    ----------
    gpu_usd_per_hour
        Price of one GPU-hour (the instance price divided by its GPUs).
    hbm_gb
        GPU memory per GPU, decimal GB (1e9 bytes).
    peak_flops, achievable_flops
        Dense BF16 FLOP/s per GPU from the datasheet, and what a serving engine reaches (the
        compute term uses the latter).
    host_dram_usd_per_gb_hour, nvme_usd_per_gb_hour
        Price of one GB-hour of host memory and of local NVMe (the host and disk tiers).
    gpus_per_node
        GPUs in one node: deployments up to a node are powers of two, beyond it whole nodes.
    hbm_usable_fraction
        Share of HBM for weights and KV (the rest: activations, CUDA context, fragmentation).
    """

    name: str
    gpu: str
    gpu_usd_per_hour: float
    hbm_gb: float
    peak_flops: float
    achievable_flops: float
    host_dram_usd_per_gb_hour: float
    nvme_usd_per_gb_hour: float
    source: str
    as_of: str
    gpus_per_node: int = 8
    hbm_usable_fraction: float = 0.9
    notes: str = ""

    @property
    def hbm_usd_per_gb_hour(self) -> float:
        """Imputed price of one GB-hour of HBM: the GPU-hour price over its memory."""
        return self.gpu_usd_per_hour / self.hbm_gb

    def tier_usd_per_gb_hour(self, tier: str) -> float:
        """Price per GB-hour of ``"device"``, ``"host"`` or ``"disk"``."""
        rates = {"device": self.hbm_usd_per_gb_hour, "host": self.host_dram_usd_per_gb_hour, "disk": self.nvme_usd_per_gb_hour}
        if tier not in rates:
            raise InvalidArgumentError(f"tier must be one of {', '.join(rates)}, got {tier!r}")
        return rates[tier]


@dataclass(frozen=True)
class ModelPrice:
    """One model's per-token prices at a provider (USD per million tokens)."""

    model: str
    input_usd_per_mtok: float
    cached_input_usd_per_mtok: float
    output_usd_per_mtok: float
    source: str
    as_of: str
    min_cached_tokens: int | None = None
    storage_usd_per_mtok_hour: float | None = None
    notes: str = ""


@dataclass(frozen=True)
class ProviderRules:
    """A hosted provider's prompt-caching rules and its per-model prices.

    Attributes
    ----------
    ttl_s
        Lifetime of a cache entry in seconds (``None``: never expires within a trace). With
        ``refresh_on_hit`` it is the maximum idle time (every hit restarts it), otherwise the
        time from the write.
    refresh_on_hit
        Whether a hit restarts the TTL.
    max_age_s
        A cap on an entry's age from its write even while it is being hit (OpenAI's in-memory
        cache: idle 5-10 minutes, "up to a maximum of one hour"). Only with ``refresh_on_hit``.
    write_multiplier
        Price of a token written to the cache, as a multiple of the input price.
    min_cached_tokens
        Prompts shorter than this are neither cached nor read from cache.
    granularity_tokens
        A cached prefix counts in whole multiples of this (OpenAI 128, DeepSeek 64).
    storage_usd_per_mtok_hour
        Storage price per million tokens per hour of cache life (Gemini's explicit caches).
    prices
        Per-model prices; ``default_model`` names the one used when none is asked for.
    """

    name: str
    vendor: str
    cache: str
    ttl_s: float | None
    refresh_on_hit: bool
    write_multiplier: float
    min_cached_tokens: int
    granularity_tokens: int
    default_model: str
    prices: tuple[ModelPrice, ...]
    source: str
    as_of: str
    max_age_s: float | None = None
    storage_usd_per_mtok_hour: float = 0.0
    notes: str = ""

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(p.model for p in self.prices)

    def price(self, model: str | None = None) -> ModelPrice:
        """The prices of ``model`` (default: ``default_model``)."""
        want = self.default_model if model is None else model
        for p in self.prices:
            if p.model == want:
                return p
        raise UnknownNameError("model", want, self.models, plural=f"models at provider {self.name!r}")

    def min_tokens(self, price: ModelPrice) -> int:
        return self.min_cached_tokens if price.min_cached_tokens is None else price.min_cached_tokens

    def storage_rate(self, price: ModelPrice) -> float:
        """USD per million tokens per hour of storage for ``price``'s model."""
        if price.storage_usd_per_mtok_hour is not None:
            return price.storage_usd_per_mtok_hour
        return self.storage_usd_per_mtok_hour

    def describe_ttl(self) -> str:
        """``"5 min, refreshed on hit"`` and the like."""
        if self.ttl_s is None:
            return "no expiry"
        text = f"{_duration(self.ttl_s)}, {'refreshed on hit' if self.refresh_on_hit else 'fixed from write'}"
        if self.max_age_s is not None:
            text += f", at most {_duration(self.max_age_s)}"
        return text


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


# ------------------------------------------------------------------------------------------- catalogue
@dataclass(frozen=True)
class Catalog:
    """Models, hardware and providers by name (read-only mappings).

    Build it with :func:`load_catalog`. Lookups by an unknown name raise :class:`UnknownNameError`
    listing the known names.
    """

    models: Mapping[str, ModelSpec]
    hardware: Mapping[str, HardwareSpec]
    providers: Mapping[str, ProviderRules]
    files: tuple[str, ...] = field(default=())

    def model(self, name: str) -> ModelSpec:
        """A model by catalogue name or Hugging Face id (case-insensitive)."""
        key = name.strip().lower()
        if key in self.models:
            return self.models[key]
        for m in self.models.values():
            if m.hf_id and m.hf_id.lower() == key:
                return m
        raise UnknownNameError("model", name, self.models)

    def hardware_spec(self, name: str) -> HardwareSpec:
        key = name.strip().lower()
        if key not in self.hardware:
            raise UnknownNameError("hardware", name, self.hardware)
        return self.hardware[key]

    def provider(self, name: str) -> ProviderRules:
        key = name.strip().lower()
        if key not in self.providers:
            raise UnknownNameError("provider", name, self.providers)
        return self.providers[key]

    def has_model(self, name: str) -> bool:
        try:
            self.model(name)
        except UnknownNameError:
            return False
        return True


def _read(path: str) -> dict[str, Any]:
    from kvtier.cost._toml import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise CatalogError(f"cannot read catalogue file {path!r}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise CatalogError(f"{path}: not valid TOML ({e})") from None
    return data


def _shipped(name: str) -> tuple[str, dict[str, Any]]:
    from kvtier.cost._toml import tomllib

    res = resources.files("kvtier.cost").joinpath("data", name)
    return f"kvtier/cost/data/{name}", tomllib.loads(res.read_text(encoding="utf-8"))


def _overlay(
    base: dict[str, dict[str, dict[str, Any]]], origin: dict[str, dict[str, str]], data: Mapping[str, Any], path: str, user: bool
) -> None:
    """Merges the sections of one file into ``base`` (entries field by field, provider prices per model)."""
    from kvtier.cost.schema import entry_where

    unknown = sorted(set(data) - set(_SECTIONS) - {"schema"})
    if unknown:
        raise CatalogError(f"{path}: unknown table [{unknown[0]}]; a catalogue has [models.NAME], [hardware.NAME], [providers.NAME]")
    if "schema" in data and data["schema"] != 1:
        raise CatalogError(f"{path}: schema = {data['schema']!r} is not supported (this kvtier reads schema = 1)")
    for section in _SECTIONS:
        entries = data.get(section, {})
        if not isinstance(entries, Mapping):
            raise CatalogError(f"{path}: [{section}] must be a table of entries")
        for raw_name, raw in entries.items():
            name = raw_name.strip().lower()
            where = entry_where(path, section, name)
            if not isinstance(raw, Mapping):
                raise CatalogError(f"{where}: expected a table, got {raw!r}")
            if user and (set(raw) - {"prices"} or name not in base[section]):
                for f in ("source", "as_of"):
                    if f not in raw:
                        raise CatalogError(f"{where} field {f!r}: missing; every entry a user file adds or overrides names its source and date")
            merged = dict(base[section].get(name, {}))
            for k, val in raw.items():
                if k == "prices" and isinstance(val, Mapping) and isinstance(merged.get("prices"), Mapping):
                    prices = dict(merged["prices"])
                    for model, p in val.items():
                        if user and isinstance(p, Mapping) and not {"source", "as_of"} <= set(p):
                            raise CatalogError(f"{where} prices.{model}: missing 'source' or 'as_of'; every price a user file sets names its source and date")
                        old = prices.get(model)
                        prices[model] = {**old, **p} if isinstance(old, Mapping) and isinstance(p, Mapping) else p
                    merged["prices"] = prices
                else:
                    merged[k] = val
            base[section][name] = merged
            origin[section][name] = path


def load_catalog(extra: Iterable[str | Path] = ()) -> Catalog:
    """Loads the shipped catalogues, then each user file in ``extra`` over them.

    Raises
    ------
    CatalogError
        A file that cannot be read, is not TOML, or holds a malformed entry (the message names
        the file, the entry and the field).
    """
    from kvtier.cost.schema import build_hardware, build_model, build_provider

    base: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in _SECTIONS}
    origin: dict[str, dict[str, str]] = {s: {} for s in _SECTIONS}
    files = []
    for fname in ("models.toml", "hardware.toml", "providers.toml"):
        path, data = _shipped(fname)
        _overlay(base, origin, data, path, user=False)
        files.append(path)
    for p in extra:
        path = str(p)
        _overlay(base, origin, _read(path), path, user=True)
        files.append(path)
    models = {n: build_model(n, r, origin["models"][n]) for n, r in base["models"].items()}
    hardware = {n: build_hardware(n, r, origin["hardware"][n]) for n, r in base["hardware"].items()}
    providers = {n: build_provider(n, r, origin["providers"][n]) for n, r in base["providers"].items()}
    return Catalog(MappingProxyType(models), MappingProxyType(hardware), MappingProxyType(providers), tuple(files))
