"""Validation of catalogue entries: TOML tables checked field by field into frozen dataclasses.

Every error is a :class:`~kvtier.cost.catalog.CatalogError` naming the file, the entry and the field,
and saying what was expected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from kvtier.cost.catalog import (
    ATTENTION_KINDS,
    KV_DTYPE_BYTES,
    CatalogError,
    HardwareSpec,
    ModelPrice,
    ModelSpec,
    ProviderRules,
)

__all__ = ["entry_where", "build_model", "build_hardware", "build_provider"]

_DATE = re.compile(r"^\d{4}-\d{2}(-\d{2})?$")


def entry_where(origin: str, section: str, name: str, fld: str | None = None) -> str:
    """``FILE: [section.name]`` (and the field), for error messages."""
    entry = f"[{section}.{name!r}]" if " " in name or "." in name else f"[{section}.{name}]"
    return f"{origin}: {entry}" + (f" field {fld!r}" if fld else "")


def _check_str(value: object, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise CatalogError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _check_int(value: object, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CatalogError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _check_num(value: object, where: str, *, positive: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = math.isfinite(v) and (v > 0 if positive else v >= 0)
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise CatalogError(f"{where}: expected a finite number {bound}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise CatalogError(f"{where}: expected true or false, got {value!r}")
    return value


def _check_date(value: object, where: str) -> str:
    text = _check_str(value, where)
    if not _DATE.match(text):
        raise CatalogError(f"{where}: expected a date YYYY-MM-DD (or YYYY-MM), got {text!r}")
    return text


_MODEL_FIELDS: dict[str, str] = {
    "layers": "int1",
    "attention": "kind",
    "kv_dtype": "dtype",
    "total_params": "pos",
    "active_params": "pos",
    "bytes_per_param": "pos",
    "source": "str",
    "as_of": "date",
    "kv_heads": "int1?",
    "head_dim": "int1?",
    "kv_latent_dim": "int1?",
    "sliding_window": "int1?",
    "sliding_layers": "int0?",
    "heads": "int1?",
    "hf_id": "str?",
    "notes": "str?",
}
_HARDWARE_FIELDS: dict[str, str] = {
    "gpu": "str",
    "gpu_usd_per_hour": "pos",
    "hbm_gb": "pos",
    "peak_flops": "pos",
    "achievable_flops": "pos",
    "host_dram_usd_per_gb_hour": "nonneg",
    "nvme_usd_per_gb_hour": "nonneg",
    "source": "str",
    "as_of": "date",
    "gpus_per_node": "int1?",
    "hbm_usable_fraction": "pos?",
    "notes": "str?",
}
_PROVIDER_FIELDS: dict[str, str] = {
    "vendor": "str",
    "cache": "str",
    "ttl_s": "pos?",
    "refresh_on_hit": "bool",
    "write_multiplier": "nonneg",
    "min_cached_tokens": "int0",
    "granularity_tokens": "int1",
    "default_model": "str",
    "prices": "table",
    "source": "str",
    "as_of": "date",
    "max_age_s": "pos?",
    "storage_usd_per_mtok_hour": "nonneg?",
    "notes": "str?",
}
_PRICE_FIELDS: dict[str, str] = {
    "input_usd_per_mtok": "nonneg",
    "cached_input_usd_per_mtok": "nonneg",
    "output_usd_per_mtok": "nonneg",
    "source": "str",
    "as_of": "date",
    "min_cached_tokens": "int0?",
    "storage_usd_per_mtok_hour": "nonneg?",
    "notes": "str?",
}


def _convert(raw: Mapping[str, Any], schema: Mapping[str, str], where: str) -> dict[str, Any]:
    """Checks ``raw`` against ``schema`` (field -> kind, ``?`` = optional) and returns the converted values."""
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise CatalogError(f"{where}: unknown field {unknown[0]!r}; fields are {', '.join(schema)}")
    out: dict[str, Any] = {}
    for name, kind in schema.items():
        optional = kind.endswith("?")
        kind = kind.rstrip("?")
        at = f"{where} field {name!r}"
        if name not in raw:
            if not optional:
                raise CatalogError(f"{at}: missing (required)")
            continue
        v = raw[name]
        if kind == "str":
            out[name] = _check_str(v, at, empty=optional)
        elif kind == "date":
            out[name] = _check_date(v, at)
        elif kind in ("int0", "int1"):
            out[name] = _check_int(v, at, int(kind[-1]))
        elif kind == "pos":
            out[name] = _check_num(v, at, positive=True)
        elif kind == "nonneg":
            out[name] = _check_num(v, at, positive=False)
        elif kind == "bool":
            out[name] = _check_bool(v, at)
        elif kind == "kind":
            if v not in ATTENTION_KINDS:
                raise CatalogError(f"{at}: expected one of {', '.join(ATTENTION_KINDS)}, got {v!r}")
            out[name] = v
        elif kind == "dtype":
            if v not in KV_DTYPE_BYTES:
                raise CatalogError(f"{at}: expected one of {', '.join(KV_DTYPE_BYTES)}, got {v!r}")
            out[name] = v
        elif kind == "table":
            if not isinstance(v, Mapping):
                raise CatalogError(f"{at}: expected a table of entries, got {v!r}")
            out[name] = v
        else:  # pragma: no cover - schema typo
            raise AssertionError(kind)
    return out


def build_model(name: str, raw: Mapping[str, Any], origin: str) -> ModelSpec:
    where = entry_where(origin, "models", name)
    v = _convert(raw, _MODEL_FIELDS, where)
    kind = v["attention"]
    need = {"mla": ("kv_latent_dim",), "sliding": ("kv_heads", "head_dim", "sliding_window")}.get(
        kind, ("kv_heads", "head_dim", "sliding_window", "sliding_layers") if kind == "hybrid" else ("kv_heads", "head_dim")
    )
    for f in need:
        if f not in v:
            raise CatalogError(f"{where} field {f!r}: missing (required for attention = {kind!r})")
    banned = {"mla": ("kv_heads", "head_dim", "sliding_window"), "mha": ("kv_latent_dim", "sliding_window"), "gqa": ("kv_latent_dim", "sliding_window")}.get(kind, ("kv_latent_dim",))
    for f in banned:
        if f in v:
            raise CatalogError(f"{where} field {f!r}: not used with attention = {kind!r}; remove it")
    if kind != "hybrid" and v.get("sliding_layers"):
        raise CatalogError(f"{where} field 'sliding_layers': only for attention = 'hybrid'")
    if kind == "hybrid" and not 0 < v["sliding_layers"] < v["layers"]:
        raise CatalogError(f"{where} field 'sliding_layers': expected 1 .. layers-1 = {v['layers'] - 1}, got {v['sliding_layers']}")
    heads = v.get("heads")
    if heads is not None and "kv_heads" in v:
        if kind == "mha" and heads != v["kv_heads"]:
            raise CatalogError(f"{where}: attention 'mha' needs kv_heads == heads, got {v['kv_heads']} and {heads} (use 'gqa')")
        if kind == "gqa" and (v["kv_heads"] >= heads or heads % v["kv_heads"]):
            raise CatalogError(f"{where}: attention 'gqa' needs kv_heads < heads dividing it, got {v['kv_heads']} and {heads}")
    if v["active_params"] > v["total_params"]:
        raise CatalogError(f"{where}: active_params {v['active_params']:g} exceeds total_params {v['total_params']:g}")
    return ModelSpec(name=name, **v)


def build_hardware(name: str, raw: Mapping[str, Any], origin: str) -> HardwareSpec:
    where = entry_where(origin, "hardware", name)
    v = _convert(raw, _HARDWARE_FIELDS, where)
    if v["achievable_flops"] > v["peak_flops"]:
        raise CatalogError(f"{where}: achievable_flops {v['achievable_flops']:g} exceeds peak_flops {v['peak_flops']:g}")
    if not 0 < v.get("hbm_usable_fraction", 0.9) <= 1:
        raise CatalogError(f"{where} field 'hbm_usable_fraction': expected a fraction in (0, 1], got {v['hbm_usable_fraction']}")
    return HardwareSpec(name=name, **v)


def build_provider(name: str, raw: Mapping[str, Any], origin: str) -> ProviderRules:
    where = entry_where(origin, "providers", name)
    v = _convert(raw, _PROVIDER_FIELDS, where)
    prices = []
    for model, praw in v.pop("prices").items():
        pw = f"{where} prices.{model}"
        if not isinstance(praw, Mapping):
            raise CatalogError(f"{pw}: expected a table, got {praw!r}")
        p = _convert(praw, _PRICE_FIELDS, pw)
        if p["cached_input_usd_per_mtok"] > p["input_usd_per_mtok"]:
            raise CatalogError(f"{pw}: cached_input_usd_per_mtok {p['cached_input_usd_per_mtok']} exceeds input_usd_per_mtok {p['input_usd_per_mtok']}")
        prices.append(ModelPrice(model=model, **p))
    if not prices:
        raise CatalogError(f"{where} field 'prices': no model is priced; add [providers.{name}.prices.MODEL]")
    if v["default_model"] not in {p.model for p in prices}:
        raise CatalogError(f"{where} field 'default_model': {v['default_model']!r} is not among its prices ({', '.join(p.model for p in prices)})")
    if v.get("max_age_s") is not None and not v["refresh_on_hit"]:
        raise CatalogError(f"{where} field 'max_age_s': only with refresh_on_hit = true (without refresh, ttl_s is already the age limit)")
    if v.get("max_age_s") is not None and v.get("ttl_s") is not None and v["max_age_s"] < v["ttl_s"]:
        raise CatalogError(f"{where} field 'max_age_s': {v['max_age_s']:g} is below ttl_s {v['ttl_s']:g}")
    v.setdefault("ttl_s", None)
    return ProviderRules(name=name, prices=tuple(prices), **v)
