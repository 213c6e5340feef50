"""`kvtier cost`: a trace priced under providers' caching rules and as a self-hosted TCO, ranked.

::

    kvtier cost TRACE [--provider P[:MODEL],...] [--model NAME[@HARDWARE],...] [--hardware NAME]
                      [--catalog FILE]... [--format F] [--tokenizer FILE] [--block-size N]
                      [--kv-ttl S|none] [--inflight-s S] [--json]
    kvtier cost --list [--catalog FILE]...

Candidates. Each ``--provider`` is priced for every ``--model`` it has prices for, else for its
default model (``P:MODEL`` picks one). Each ``--model`` found in the models catalogue is also
costed self-hosted, on ``NAME@HARDWARE`` or ``--hardware`` (default ``h100-sxm``). With neither
option, every catalogued provider is priced for its default model.

This module imports only :mod:`argparse` and :mod:`kvtier.units` at load time; the work happens in :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvtier import units
from kvtier.config import DEFAULT_BLOCK_SIZE

if TYPE_CHECKING:
    from kvtier.cost.catalog import Catalog, HardwareSpec, ModelSpec, ProviderRules
    from kvtier.cost.providers import ProviderCost
    from kvtier.cost.rank import CostLine, Ranking
    from kvtier.cost.tco import Tco
    from kvtier.cost.trace import CostTrace

__all__ = ["add_arguments", "run", "Shortlist", "resolve_shortlist"]

DEFAULT_HARDWARE = "h100-sxm"
_FORMATS = ("auto", "mooncake", "bailian", "kvtier", "openai")


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of names, got {text!r}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Adds ``kvtier cost``'s arguments to its subparser."""
    p.add_argument("trace", nargs="?", help="request log (JSON Lines, .gz too): Mooncake, Bailian, kvtier or OpenAI chat format")
    p.add_argument(
        "--provider",
        type=_names,
        help="providers to price under, comma-separated, e.g. anthropic-5m,anthropic-1h,openai; P:MODEL picks a model",
    )
    p.add_argument(
        "--model",
        type=_names,
        help="models, comma-separated: hosted ones priced at each --provider that lists them, catalogued ones "
        "also self-hosted (NAME@HARDWARE picks the hardware)",
    )
    p.add_argument("--hardware", help=f"hardware for self-hosted models (default {DEFAULT_HARDWARE})")
    p.add_argument("--catalog", action="append", default=[], metavar="FILE", help="TOML file adding or overriding catalogue entries (repeatable)")
    p.add_argument("--format", choices=_FORMATS, default="auto", help="trace format (default: detected from the first line)")
    p.add_argument("--tokenizer", metavar="FILE", help="tokenizer.json for text and chat logs")
    p.add_argument("--block-size", type=units.tokens_type("--block-size"), default=DEFAULT_BLOCK_SIZE, metavar="TOKENS",
                   help="tokens per block for token logs: 16 or 16 tokens (default 16)")
    p.add_argument(
        "--kv-ttl",
        type=units.duration_or_never_type("--kv-ttl"),
        default=3600.0,
        metavar="DURATION",
        help="self-hosted: how long kvtier keeps an idle prefix in host memory: 3600, 1h, 5m, or 'none' (default 1h)",
    )
    p.add_argument(
        "--writes",
        choices=["all", "reused"],
        default="all",
        help="providers: cache every prompt (default), or in hindsight only the prefixes a later request reads",
    )
    p.add_argument(
        "--kv-tier",
        choices=["host", "disk"],
        default="host",
        help="self-hosted: price the cache's GB-hours at host DRAM (default) or NVMe (kvtier's disk tier) rates",
    )
    p.add_argument("--inflight-s", type=units.duration_type("--inflight-s", zero_ok=True), default=10.0, metavar="DURATION",
                   help="self-hosted: in-flight window for the KV working set in HBM: 10, 10s, 1m (default 10 s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (with --list too)")
    p.add_argument("--list", action="store_true", help="list the catalogue's models, hardware and providers, each figure with its source and date, and exit")


# ------------------------------------------------------------------------------------------- shortlist
@dataclass(frozen=True)
class Shortlist:
    """What to price: (provider, model) pairs and (model, hardware) pairs."""

    hosted: tuple[tuple[ProviderRules, str], ...]
    self_hosted: tuple[tuple[ModelSpec, HardwareSpec], ...]


def resolve_shortlist(
    catalog: Catalog, providers: list[str] | None, models: list[str] | None, hardware: str | None
) -> Shortlist:
    """Turns the command line's names into candidates (see the module docstring).

    Raises
    ------
    UnknownNameError
        A provider, model or hardware name the catalogue does not know (the message lists the known ones).
    """
    from kvtier.cost.catalog import UnknownNameError
    from kvtier.errors import InvalidArgumentError

    default_hw = catalog.hardware_spec(hardware) if hardware is not None else None
    explicit = providers is not None
    if providers is None:
        providers = list(catalog.providers)
    chosen: list[tuple[ProviderRules, str | None]] = []
    for item in providers:
        name, _, model = item.partition(":")
        rules = catalog.provider(name)
        if model:
            rules.price(model)  # raises, listing the provider's models
        chosen.append((rules, model or None))

    hosted: list[tuple[ProviderRules, str]] = []
    own: list[tuple[ModelSpec, HardwareSpec]] = []
    wanted = [m.partition("@") for m in (models or [])]
    matched: set[str] = set()
    for rules, picked in chosen:
        if picked is not None:
            hosted.append((rules, picked))
            continue
        picks = [m for m, _, _ in wanted if m in rules.models]
        matched.update(picks)
        if picks:
            hosted.extend((rules, m) for m in picks)
        elif explicit or not wanted:
            hosted.append((rules, rules.default_model))
    for m, at, hw in wanted:
        if catalog.has_model(m):
            if at and not hw:
                raise InvalidArgumentError(f"--model {m}@: name the hardware after '@' (known: {', '.join(sorted(catalog.hardware))})")
            spec = catalog.hardware_spec(hw) if hw else default_hw or catalog.hardware_spec(DEFAULT_HARDWARE)
            own.append((catalog.model(m), spec))
            matched.add(m)
        elif at:
            raise UnknownNameError("model", m, catalog.models, "only catalogued models run self-hosted (NAME@HARDWARE)")
    missing = [m for m, _, _ in wanted if m not in matched]
    if missing:
        priced = {p for rules, _ in chosen for p in rules.models}
        hint = "models priced by the chosen providers are listed too; add others with --catalog FILE"
        raise UnknownNameError("model", missing[0], set(catalog.models) | priced, hint)
    if hardware is not None and not own:
        raise InvalidArgumentError("--hardware needs a --model from the models catalogue to run self-hosted")
    # keep the first of duplicates, in order
    hosted_u = list(dict.fromkeys((r.name, m) for r, m in hosted))
    own_u = list(dict.fromkeys((m.name, h.name) for m, h in own))
    return Shortlist(
        tuple((catalog.provider(r), m) for r, m in hosted_u),
        tuple((catalog.model(m), catalog.hardware_spec(h)) for m, h in own_u),
    )


# ------------------------------------------------------------------------------------------- run
@dataclass(frozen=True)
class CostReport:
    """Everything ``kvtier cost`` prints."""

    trace: CostTrace
    catalog: Catalog
    hosted: tuple[ProviderCost, ...]
    tcos: tuple[Tco, ...]
    lines: tuple[CostLine, ...]
    ranking: Ranking


def cost_report(
    trace: CostTrace,
    catalog: Catalog,
    shortlist: Shortlist,
    *,
    kv_ttl_s: float | None = 3600.0,
    inflight_s: float = 10.0,
    kv_tier: str = "host",
    writes: str = "all",
) -> CostReport:
    """Prices ``trace`` for every candidate of ``shortlist`` and ranks them."""
    from kvtier.cost.cachesim import CacheReplay, CacheRule, replay_cache
    from kvtier.cost.providers import price_provider
    from kvtier.cost.rank import line_of, rank
    from kvtier.cost.tco import TcoAssumptions, compute_tco
    from kvtier.errors import InvalidArgumentError

    if writes not in ("all", "reused"):
        raise InvalidArgumentError(f"writes must be 'all' or 'reused', got {writes!r}")
    reuse = writes == "reused"
    replays: dict[tuple[CacheRule, bool], CacheReplay] = {}
    hosted = []
    for rules, model in shortlist.hosted:
        rule = CacheRule.of(rules)
        need_storage = rules.storage_rate(rules.price(model)) > 0
        key = (rule, need_storage)
        if key not in replays:
            replays[key] = replay_cache(trace, rule, storage=need_storage, reuse=reuse)
        hosted.append(price_provider(trace, rules, model, writes="reused" if reuse else "all", replay=replays[key]))
    assumptions = TcoAssumptions(kv_ttl_s=kv_ttl_s, inflight_s=inflight_s, kv_tier=kv_tier)
    tcos = [compute_tco(trace, m, h, assumptions) for m, h in shortlist.self_hosted]
    tasks = trace.num_tasks
    lines = [line_of(r, tasks) for r in hosted] + [line_of(r, tasks) for r in tcos]
    return CostReport(trace, catalog, tuple(hosted), tuple(tcos), tuple(lines), rank(lines))


def run(args: argparse.Namespace) -> int:
    """Runs ``kvtier cost``; raises :class:`kvtier.KvtierError` on bad input (the CLI exits 2)."""
    from kvtier.cost.catalog import load_catalog
    from kvtier.cost.trace import read_trace
    from kvtier.errors import InvalidArgumentError

    catalog = load_catalog(args.catalog)
    if args.list:
        if args.json:
            json.dump(catalog_json(catalog), sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            print(render_catalog(catalog))
        return 0
    if args.trace is None:
        raise InvalidArgumentError("kvtier cost needs a TRACE file (or --list)")
    shortlist = resolve_shortlist(catalog, args.provider, args.model, args.hardware)
    if not os.path.isfile(args.trace):
        raise InvalidArgumentError(f"cannot read trace {args.trace!r}: no such file")
    fmt = None if args.format == "auto" else args.format
    try:
        trace = read_trace(args.trace, fmt=fmt, tokenizer=args.tokenizer, block_size=args.block_size)
    except OSError as e:
        raise InvalidArgumentError(f"cannot read trace {args.trace!r}: {e.strerror or e}") from None
    report = cost_report(
        trace, catalog, shortlist, kv_ttl_s=args.kv_ttl, inflight_s=args.inflight_s, kv_tier=args.kv_tier, writes=args.writes
    )
    if args.json:
        json.dump(report_json(report), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(render_text(report))
    return 0


# ------------------------------------------------------------------------------------------- output
def _usd(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:,.2f}"
    return f"{x:#.4g}"


def _trace_json(t: CostTrace) -> dict[str, Any]:
    return {
        "path": t.name,
        "format": t.source_format or None,
        "requests": t.num_requests,
        "tasks": t.num_tasks,
        "task": "session" if t.has_sessions else "request",
        "sessions": len(t.session_table) if t.has_sessions else None,
        "tenants": len(t.tenant_table) if t.tenants is not None else None,
        "input_tokens": int(t.input_tokens.sum()),
        "output_tokens": int(t.output_tokens.sum()),
        "duration_s": t.duration_s,
        "block_tokens": t.block_tokens,
    }


def _sessions_json(trace: CostTrace, naive: Any, aware: Any) -> list[dict[str, Any]] | None:
    if not trace.has_sessions:
        return None
    tenants = trace.tenant_of_task()
    out = []
    for i, name in enumerate(trace.session_table):
        ten = trace.tenant_table[tenants[i]] if tenants[i] >= 0 else ""
        out.append({"session": name, "tenant": ten, "naive_usd": float(naive[i]), "cache_aware_usd": float(aware[i])})
    return out


def _ledger_json(tco: Tco) -> dict[str, Any]:
    led = tco.ledger
    return {
        "attribution": led.attribution,
        "until_s": led.until,
        "gb_hours": led.gb_hours,
        "by_tier_gb_hours": led.by_tier(),
        "priced_as_tier": tco.assumptions.kv_tier,
        "by_tier_usd": led.usd_by_tier(tco.hardware, as_tier=tco.assumptions.kv_tier),
        "by_tenant_gb_hours": led.by_tenant(),
        "by_session_gb_hours": [{"tenant": t, "session": s, "gb_hours": g} for (t, s), g in sorted(led.by_session().items())],
    }


def report_json(rep: CostReport) -> dict[str, Any]:
    """The JSON document of ``kvtier cost --json``."""
    t = rep.trace
    results: list[dict[str, Any]] = []
    for pc, line in zip(rep.hosted, rep.lines):
        naive, aware = pc.by_task(t)
        r = pc.rules
        results.append(
            {
                "kind": "hosted",
                "provider": pc.provider,
                "model": pc.model,
                "hardware": None,
                "naive_usd": pc.naive_usd,
                "cache_aware_usd": pc.cache_aware_usd,
                "naive_per_task_usd": line.naive_per_task,
                "cache_aware_per_task_usd": line.cache_aware_per_task,
                "cached_ratio": pc.cached_ratio,
                "breakdown": {
                    "input_usd": pc.input_usd,
                    "cache_write_usd": pc.write_usd,
                    "cache_read_usd": pc.read_usd,
                    "output_usd": pc.output_usd,
                    "storage_usd": pc.storage_usd,
                    "input_tokens": pc.input_tokens,
                    "cached_tokens": pc.cached_tokens,
                    "written_tokens": pc.written_tokens,
                    "output_tokens": pc.output_tokens,
                    "storage_mtok_hours": pc.storage_mtok_hours,
                },
                "rules": {
                    "ttl_s": r.ttl_s,
                    "refresh_on_hit": r.refresh_on_hit,
                    "max_age_s": r.max_age_s,
                    "write_multiplier": r.write_multiplier,
                    "min_cached_tokens": r.min_tokens(pc.price),
                    "granularity_tokens": r.granularity_tokens,
                    "storage_usd_per_mtok_hour": r.storage_rate(pc.price),
                    "input_usd_per_mtok": pc.price.input_usd_per_mtok,
                    "cached_input_usd_per_mtok": pc.price.cached_input_usd_per_mtok,
                    "output_usd_per_mtok": pc.price.output_usd_per_mtok,
                    "engine": pc.engine,
                    "writes": pc.writes,
                    "source": r.source,
                    "price_source": pc.price.source,
                    "as_of": pc.price.as_of,
                },
                "sessions": _sessions_json(t, naive, aware),
            }
        )
    for tco, line in zip(rep.tcos, rep.lines[len(rep.hosted) :]):
        naive, aware = tco.by_task(t)
        m, h = tco.model, tco.hardware
        results.append(
            {
                "kind": "self-hosted",
                "provider": "self-hosted",
                "model": m.name,
                "hardware": h.name,
                "naive_usd": tco.naive_usd,
                "cache_aware_usd": tco.cache_aware_usd,
                "naive_per_task_usd": line.naive_per_task,
                "cache_aware_per_task_usd": line.cache_aware_per_task,
                "cached_ratio": tco.cached_ratio,
                "breakdown": {
                    "kv_residency_usd": tco.kv_residency_usd,
                    "compute_usd": tco.compute_usd,
                    "footprint_usd": tco.footprint_usd,
                    "gpu_usd": tco.gpu_usd,
                    "dominant": tco.dominant,
                    "kv_bytes_per_token": m.kv_bytes_per_token,
                    "kv_gb_hours": tco.ledger.gb_hours,
                    "prefill_tokens": tco.prefill_tokens,
                    "cached_tokens": tco.cached_tokens,
                    "output_tokens": tco.output_tokens,
                    "flops": tco.flops,
                    "compute_gpu_hours": tco.compute_gpu_hours,
                    "active_params": m.active_params,
                    "total_params": m.total_params,
                    "weight_bytes": tco.weight_bytes,
                    "kv_working_set_bytes": tco.kv_working_set_bytes,
                    "gpus": tco.gpus,
                    "duration_s": tco.duration_s,
                    "kv_ttl_s": tco.assumptions.kv_ttl_s,
                    "inflight_s": tco.assumptions.inflight_s,
                    "kv_tier": tco.assumptions.kv_tier,
                    "kv_usd_per_gb_hour": tco.hardware.tier_usd_per_gb_hour(tco.assumptions.kv_tier),
                },
                "ledger": _ledger_json(tco),
                "sessions": _sessions_json(t, naive, aware),
            }
        )
    rk = rep.ranking
    return {
        "trace": _trace_json(t),
        "catalog_files": list(rep.catalog.files),
        "results": results,
        "ranking": {
            "cache_aware": [x.label for x in rk.lines],
            "sticker": sorted(rk.sticker_rank, key=lambda k: rk.sticker_rank[k]),
            "disagreements": [{"winner": d.winner, "loser": d.loser, "reason": d.reason} for d in rk.disagreements],
        },
    }


def render_text(rep: CostReport) -> str:
    """The text report of ``kvtier cost``."""
    t = rep.trace
    out: list[str] = []
    task = "session" if t.has_sessions else "request; the trace names no sessions"
    out.append(
        f"kvtier cost: {os.path.basename(t.name) or 'trace'}{f' ({t.source_format})' if t.source_format else ''}: {t.num_requests:,} requests over {t.duration_s / 60:,.1f} min, "
        f"{t.num_tasks:,} task{'s' if t.num_tasks != 1 else ''} (a task = a {task})"
    )
    out.append(
        f"input {int(t.input_tokens.sum()):,} tokens, output {int(t.output_tokens.sum()):,} tokens, "
        f"prefix blocks of {t.block_tokens} tokens"
    )
    if rep.hosted:
        out.append("")
        how = "every prompt cached" if rep.hosted[0].writes == "all" else "hindsight: only prefixes a later request reads are cached"
        out.append(f"hosted providers (USD; cache-aware = the trace replayed under each provider's caching rules; {how})")
        hdr = f"{'provider':<16} {'model':<18} {'cache TTL':<37} {'cached':>7} {'naive':>10} {'cache-aware':>12} {'per task':>10}"
        out += [hdr, "-" * len(hdr)]
        for pc, line in zip(rep.hosted, rep.lines):
            out.append(
                f"{pc.provider:<16} {pc.model:<18} {pc.rules.describe_ttl():<37} {pc.cached_ratio:>6.1%} "
                f"{_usd(pc.naive_usd):>10} {_usd(pc.cache_aware_usd):>12} {_usd(line.cache_aware_per_task):>10}"
            )
            parts = [f"read {_usd(pc.read_usd)}", f"write {_usd(pc.write_usd)}", f"plain input {_usd(pc.input_usd)}", f"output {_usd(pc.output_usd)}"]
            if pc.storage_usd:
                parts.append(f"storage {_usd(pc.storage_usd)} ({pc.storage_mtok_hours:,.1f} Mtok-h)")
            out.append(f"{'':<16} {', '.join(parts)}")
    if rep.tcos:
        out.append("")
        out.append("self-hosted TCO (USD; total = KV residency + max(compute, footprint))")
        hdr = f"{'model':<16} {'hardware':<10} {'KV B/tok':>9} {'cached':>7} {'KV GB-h':>9} {'KV $':>8} {'compute $':>10} {'GPUs':>5} {'footprint $':>12} {'total':>10} {'naive':>10}"
        out += [hdr, "-" * len(hdr)]
        for tco in rep.tcos:
            out.append(
                f"{tco.model.name:<16} {tco.hardware.name:<10} {tco.model.kv_bytes_per_token:>9,} {tco.cached_ratio:>6.1%} "
                f"{tco.ledger.gb_hours:>9,.1f} {_usd(tco.kv_residency_usd):>8} {_usd(tco.compute_usd):>10} {tco.gpus:>5} "
                f"{_usd(tco.footprint_usd):>12} {_usd(tco.total_usd):>10} {_usd(tco.naive_usd):>10}"
            )
        for tco in rep.tcos:
            m = tco.model
            out.append(
                f"  {m.name}: {m.active_params / 1e9:g}B active params -> {tco.flops:.3g} FLOPs = {tco.compute_gpu_hours:,.2f} GPU-h; "
                f"{m.total_params / 1e9:g}B params x {m.bytes_per_param:g} B + {tco.kv_working_set_bytes / 1e9:,.1f} GB KV in flight "
                f"-> {tco.gpus} x {tco.hardware.name} for {tco.duration_s / 3600:,.2f} h; {tco.dominant}-bound"
            )
        out.append("")
        a = rep.tcos[0].assumptions
        rate = rep.tcos[0].hardware.tier_usd_per_gb_hour(a.kv_tier)
        out.append(
            f"residency ledger (first-writer attribution; kvtier TTL {_ttl(a.kv_ttl_s)}; "
            f"priced at the {a.kv_tier} rate, ${rate:g}/GB-h)"
        )
        for tco in rep.tcos:
            led = tco.ledger
            tiers = ", ".join(f"{k} {v:,.2f} GB-h" for k, v in led.by_tier().items())
            text = f"  {tco.model.name}: {tiers}"
            tenants = {k: v for k, v in led.by_tenant().items() if k}
            if tenants:
                text += "; tenants: " + ", ".join(f"{k} {v:,.2f}" for k, v in sorted(tenants.items()))
            out.append(text)
            sessions = sorted(((v, s) for (_, s), v in led.by_session().items() if s), reverse=True)
            if sessions:
                top = ", ".join(f"{s} {v:,.2f}" for v, s in sessions[:5])
                out.append(f"    top sessions (GB-h): {top}" + (f" ... ({len(sessions)} sessions)" if len(sessions) > 5 else ""))
    rk = rep.ranking
    if rk.lines:
        out.append("")
        out.append("ranking by cache-aware cost per task (sticker rank in brackets)")
        for line in rk.lines:
            out.append(
                f"{rk.cache_aware_rank[line.label]:>3}. {line.label:<36} ${line.cache_aware_per_task:<10.4g} [sticker #{rk.sticker_rank[line.label]}: ${line.naive_per_task:.4g}]"
            )
        if rk.disagreements:
            out.append("")
            n = len(rk.disagreements)
            out.append(f"where the rankings disagree ({n} pair{'s' if n != 1 else ''}):")
            for d in rk.disagreements:
                out.append(f"  - {d.reason}")
        else:
            out.append("the sticker ranking agrees with the cache-aware one (no pair is ordered the other way)")
    return "\n".join(out)


def _ttl(s: float | None) -> str:
    return "none" if s is None else f"{s:g} s"


def render_catalog(catalog: Catalog) -> str:
    """``kvtier cost --list``: every entry with its figures, source and date."""
    out = ["models (KV bytes/token, params total/active):"]
    for m in catalog.models.values():
        out.append(
            f"  {m.name:<18} {m.attention:<7} {m.kv_bytes_per_token:>9,} B/token  {m.total_params / 1e9:>7g}B / {m.active_params / 1e9:g}B"
        )
        out.append(f"      source: {m.source} ({m.as_of})")
    out.append("hardware ($/GPU-h, HBM GB):")
    for h in catalog.hardware.values():
        out.append(f"  {h.name:<18} {h.gpu:<40} ${h.gpu_usd_per_hour:<6g} {h.hbm_gb:g} GB")
        out.append(f"      source: {h.source} ({h.as_of})")
    out.append("providers (cache rule; models, USD per million tokens input / cached input / output):")
    for p in catalog.providers.values():
        out.append(f"  {p.name:<18} {p.describe_ttl()}")
        out.append(f"      rules: {p.source} ({p.as_of})")
        for price in p.prices:
            out.append(
                f"      {price.model:<18} ${price.input_usd_per_mtok:g} / ${price.cached_input_usd_per_mtok:g} / "
                f"${price.output_usd_per_mtok:g}  source: {price.source} ({price.as_of})"
            )
    out.append("files: " + ", ".join(catalog.files))
    return "\n".join(out)


def catalog_json(catalog: Catalog) -> dict[str, Any]:
    """``kvtier cost --list --json``: every catalogue entry's fields (sources and dates included)."""
    import dataclasses

    models = [{**dataclasses.asdict(m), "kv_bytes_per_token": m.kv_bytes_per_token} for m in catalog.models.values()]
    return {
        "models": models,
        "hardware": [dataclasses.asdict(h) for h in catalog.hardware.values()],
        "providers": [dataclasses.asdict(p) for p in catalog.providers.values()],
        "files": list(catalog.files),
    }
