"""The `kvtier` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from kvtier import __version__
from kvtier.config import Policy

__all__ = ["main"]


def _size(text: str) -> int:
    """Parses 512M, 2G, 1048576 (binary suffixes K, M, G, T)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512M, 2G)") from None


def _cmd_demo(args: argparse.Namespace) -> int:
    from kvtier.demo import DemoConfig, StepReport, restart, run_demo

    cfg = DemoConfig(
        sessions=args.sessions,
        steps=args.steps,
        system_tokens=args.system_tokens,
        step_tokens=args.step_tokens,
        step_seconds=args.step_seconds,
        capacity_bytes=args.capacity,
        policy=args.policy,
        disk_path=args.disk,
        disk_capacity_bytes=args.disk_capacity,
    )
    block_mib = cfg.kv_bytes_per_token * cfg.block_size / (1 << 20)
    print(
        f"kvtier demo: {cfg.sessions} agent sessions x {cfg.steps} steps, shared system prompt of "
        f"{cfg.system_tokens} tokens, +{cfg.step_tokens} tokens per step, {cfg.step_seconds:g} s apart\n"
        f"host tier: {cfg.capacity_bytes / (1 << 20):.0f} MiB, {cfg.policy.upper()}; disk tier: {cfg.disk_path} "
        f"({cfg.disk_capacity_bytes / (1 << 30):g} GiB, LMDB); block {cfg.block_size} tokens "
        f"= {block_mib:g} MiB of KV (Llama-3.2-1B, bf16)\n"
    )
    print(f"{'step':>4} {'session':<9} {'prompt':>7} {'hit':>7} {'hit %':>6} {'new blk':>7}  KV check")

    def emit(r: StepReport) -> None:
        pct = 100.0 * r.hit_tokens / r.prompt_tokens
        check = "ok" if r.verified else "MISMATCH"
        print(f"{r.step:>4} {r.session:<9} {r.prompt_tokens:>7} {r.hit_tokens:>7} {pct:>5.1f}% {r.new_blocks:>7}  {check}")

    store, reports, prompts = run_demo(cfg, emit)
    end = (cfg.steps - 1) * cfg.step_seconds + cfg.step_seconds
    st = store.stats()
    res = store.residency(now=end)
    disk = st.disk
    assert disk is not None
    print(
        f"\nhost tier: {st.blocks} blocks resident ({st.resident_bytes / (1 << 20):.0f} MiB of "
        f"{(st.capacity_bytes or 0) / (1 << 20):.0f} MiB), block hit ratio {st.hit_ratio:.1%}, "
        f"{st.evicted} evicted, {st.bytes_read / (1 << 30):.2f} GiB loaded instead of prefilled"
    )
    print(
        f"disk tier: {disk.blocks} blocks ({disk.resident_bytes / (1 << 20):.0f} MiB), {disk.hits} block hits, "
        f"{disk.bytes_read / (1 << 20):.0f} MiB read (checksummed), {disk.promoted} promoted back to host"
    )
    print(f"residency over {end:g} s: {res.gb_hours:.4f} GB-hours")
    for (_, session), gbh in sorted(res.by_session().items(), key=lambda kv: kv[0][1]):
        if gbh > 0:
            print(f"  {session:<9} {gbh:.4f} GB-hours")
    store.close()  # a clean shutdown writes the host tier's blocks to the folder
    store2, after = restart(cfg, prompts)
    with store2:
        rep = store2.restore_report
        assert rep is not None
        print(f"\nrestart: reopened {cfg.disk_path}: {rep.restored} blocks restored in {rep.seconds:.3f} s")
        for r in after:
            check = "ok" if r.verified else "MISMATCH"
            print(
                f"  {r.session:<9} prompt {r.prompt_tokens:>6} tokens: {r.hit_tokens:>6} hit "
                f"({100.0 * r.hit_tokens / r.prompt_tokens:.1f}%, {r.disk_tokens} from disk)  KV check {check}"
            )
    ok = all(r.verified for r in reports) and all(r.verified for r in after)
    return 0 if ok else 1


def _cmd_fsck(args: argparse.Namespace) -> int:
    import json

    from kvtier.fsck import fsck

    report = fsck(args.path, repair=args.repair, orphans=args.orphans)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    left = report.damaged + (report.problems["unreachable"] if args.orphans else 0)
    if left == 0:
        return 0
    return 1 if args.repair else 4


def _arg_list(parse: str, *extra: str) -> Callable[[str], Any]:
    """An argparse type that applies ``kvtier.analytics.sweep.<parse>(text, *extra)`` (imported when used)."""

    def convert(text: str) -> Any:
        from kvtier.analytics import sweep
        from kvtier.errors import KvtierError

        try:
            return getattr(sweep, parse)(text, *extra)
        except KvtierError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None

    convert.__name__ = parse.removeprefix("parse_")
    return convert


def _cmd_analyze(args: argparse.Namespace) -> int:
    from kvtier.analytics.analyze import AnalyzeOptions, analyze
    from kvtier.analytics.output import render_text, write_csv, write_json

    if args.json == "-" and args.csv == "-":
        print("kvtier: error: --json and --csv cannot both write to standard output", file=sys.stderr)
        return 2
    policies: list[Policy] = args.policy if args.policy is not None else ["ttl" if args.ttl else "lru"]
    opts = AnalyzeOptions(
        path=args.log,
        fmt=args.format if args.format != "auto" else None,
        tokenizer=args.tokenizer,
        capacities=args.capacity,
        policies=policies,
        ttls=args.ttl or (),
        block_sizes=args.block_size or (),
        model=args.model,
        kv_bytes_per_token=args.kv_bytes_per_token,
        timeline_points=120 if args.report else 0,
        progress=not args.no_progress,
        break_examples=args.break_examples,
        compare_paper=not args.no_paper,
    )
    try:
        if args.report:
            os.makedirs(args.report, exist_ok=True)  # fail before a long replay, not after
        a = analyze(opts)
        for dest, write in ((args.json, write_json), (args.csv, lambda an, f: write_csv(an.results, f))):
            if dest is None:
                continue
            if dest == "-":
                write(a, sys.stdout)
            else:
                with open(dest, "w", encoding="utf-8", newline="") as f:
                    write(a, f)
        if "-" not in (args.json, args.csv):
            print(render_text(a), flush=True)
        if args.report:
            from kvtier.analytics.report import write_report

            files = write_report(a, args.report)
            print(f"report: {files[-1]} ({len(files) - 1} plots)", file=sys.stderr)
    except BrokenPipeError:  # `kvtier analyze ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"kvtier: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    return 0


def _cmd_cost(args: argparse.Namespace) -> int:
    from kvtier.cost.command import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvtier", description="A tiered KV prefix-cache store for LLM serving.")
    p.add_argument("--version", action="version", version=f"kvtier {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo",
        help="run agent sessions through the host and disk tiers, restart, and print hits and residency",
    )
    d.add_argument("--sessions", type=int, default=3, help="concurrent agent sessions (default 3)")
    d.add_argument("--steps", type=int, default=8, help="steps per session (default 8)")
    d.add_argument("--system-tokens", type=int, default=2048, help="shared system prompt length (default 2048)")
    d.add_argument("--step-tokens", type=int, default=384, help="tokens added per step (default 384)")
    d.add_argument("--step-seconds", type=float, default=30.0, help="simulated seconds between steps (default 30)")
    d.add_argument("--capacity", type=_size, default=128 << 20, help="host tier bytes, e.g. 512M, 2G (default 128M)")
    d.add_argument("--policy", choices=["lru", "lfu"], default="lru", help="eviction policy (default lru)")
    d.add_argument(
        "--disk", default="kvtier-demo-cache", help="disk tier folder (LMDB; default ./kvtier-demo-cache)"
    )
    d.add_argument("--disk-capacity", type=_size, default=4 << 30, help="disk tier bytes (default 4G)")
    d.set_defaults(func=_cmd_demo)

    a = sub.add_parser(
        "analyze",
        help="replay request logs through the cache: hit rates, residency, cost, prefix breaks",
        description="Replay a request log through kvtier's metadata-only store under each capacity, policy, TTL and "
        "block size, and report hit ratios, residency (GB-hours with a model) and where sessions' prefixes break. "
        "Formats: Mooncake and Bailian traces, kvtier's own JSONL, OpenAI-style chat logs (docs/analyze.md).",
    )
    a.add_argument("log", help="request log, JSON Lines (.gz is read too)")
    a.add_argument("--format", choices=["auto", "mooncake", "bailian", "kvtier", "openai"], default="auto",
                   help="log format (default: detected from the first record)")
    a.add_argument("--tokenizer", metavar="FILE", help="tokenizer.json (Hugging Face tokenizers) for text and chat logs")
    a.add_argument("--capacity", type=_arg_list("parse_capacities"), default=[None], metavar="LIST",
                   help="cache capacities in blocks, k/M/G = 1e3/1e6/1e9, inf = unlimited (default inf), e.g. 1k,10k,100k,inf")
    a.add_argument("--policy", type=_arg_list("parse_policies"), metavar="LIST",
                   help="eviction policies: lru, lfu, ttl (default lru; ttl when only --ttl is given)")
    a.add_argument("--ttl", type=_arg_list("parse_durations"), metavar="LIST",
                   help="maximum idle times for the ttl policy, e.g. 5m,1h,6h (s, m, h, d)")
    a.add_argument("--block-size", type=_arg_list("parse_ints", "--block-size"), metavar="LIST",
                   help="tokens per block, for logs with tokens or text (default 16), e.g. 16,32,64")
    a.add_argument("--model", metavar="NAME", help="model whose KV bytes per token give GB-hours "
                   "(a name from `kvtier cost --list`, or its Hugging Face id)")
    a.add_argument("--kv-bytes-per-token", type=int, metavar="N", help="KV bytes per token (all layers) for GB-hours")
    a.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write results as JSON (to stdout without PATH)")
    a.add_argument("--csv", nargs="?", const="-", metavar="PATH", help="write one CSV row per configuration (stdout without PATH)")
    a.add_argument("--report", metavar="DIR", help="write PNG plots and a self-contained report.html into DIR")
    a.add_argument("--break-examples", type=int, default=3, metavar="N", help="prefix-break examples kept per cause (default 3)")
    a.add_argument("--no-paper", action="store_true", help="skip the comparison with the Mooncake FAST'25 figures")
    a.add_argument("--no-progress", action="store_true", help="no progress bars")
    a.set_defaults(func=_cmd_analyze)

    from kvtier.cost.command import add_arguments as _cost_arguments  # argparse only; the work is in run()

    c = sub.add_parser(
        "cost",
        help="price a trace: residency GB-hours, self-hosted TCO, providers' cache pricing, ranked (docs/cost.md)",
        description="Price a request log under hosted providers' prompt-caching rules (naive per-token against "
        "cache-aware) and as a self-hosted three-part TCO (KV residency + compute + shard footprint), and rank the "
        "candidates by cache-aware cost per task next to their sticker price (docs/cost.md).",
    )
    _cost_arguments(c)
    c.set_defaults(func=_cmd_cost)

    f = sub.add_parser(
        "fsck",
        help="check a disk-tier folder block by block (records, keys, payloads, checksums); --repair removes damage",
        description="Exit status: 0 clean, 1 damage found and repaired, 4 damage left.",
    )
    f.add_argument("path", help="the folder given as DiskConfig(path=...)")
    f.add_argument("--repair", action="store_true", help="remove damaged entries (safe beside running stores)")
    f.add_argument("--orphans", action="store_true", help="with --repair, also remove unreachable blocks")
    f.add_argument("--json", action="store_true", help="print the report as JSON")
    f.set_defaults(func=_cmd_fsck)

    g = sub.add_parser(
        "cuda",
        help="whether kvtier can use CUDA here (driver, devices, batched copies), and why not",
        description="Exit status: 0 CUDA is usable, 1 it is not (the reason is printed).",
    )
    g.add_argument("--json", action="store_true", help="print the status as JSON")
    g.set_defaults(func=_cmd_cuda)
    return p


def _cmd_cuda(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from kvtier.device import cuda_available

    status = cuda_available()
    if args.json:
        print(json.dumps(dataclasses.asdict(status), indent=2))
    else:
        print(status)
    return 0 if status else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kvtier.errors import KvtierError

    try:
        return int(args.func(args))
    except KvtierError as e:
        print(f"kvtier: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
