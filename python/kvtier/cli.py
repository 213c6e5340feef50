"""The `kvtier` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from kvtier import __version__, units
from kvtier.config import Policy

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from kvtier.demo import DemoConfig, default_folder, main

    cfg = DemoConfig(
        sessions=args.sessions,
        steps=args.steps,
        system_tokens=args.system_tokens,
        step_tokens=args.step_tokens,
        step_seconds=args.step_seconds,
        capacity_bytes=args.capacity,
        policy=args.policy,
        disk_path=args.disk if args.disk is not None else default_folder(),
        disk_capacity_bytes=args.disk_capacity,
        seed=args.seed,
    )
    return main(cfg, keep=args.keep)


def _cmd_fsck(args: argparse.Namespace) -> int:
    import json

    from kvtier.fsck import fsck

    if args.orphans and not args.repair:
        print("kvtier: error: --orphans only applies with --repair (unreachable blocks are always reported)",
              file=sys.stderr)
        return 2
    report = fsck(args.path, repair=args.repair, orphans=args.orphans)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    # Exit status: damage decides it; unreachable blocks are not damage (removed only when asked).
    if report.damaged:
        return 1 if args.repair else 4
    return 1 if report.removed else 0


def _parse_policies(text: str) -> list[Policy]:
    from kvtier.analytics.sweep import parse_policies  # imported when used

    return parse_policies(text)


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
    created = False
    if args.report:
        from kvtier.analytics.report import missing_packages

        missing = missing_packages()
        if missing:
            print(
                f"kvtier: error: --report needs {' and '.join(missing)} (the analytics extra): "
                "pip install 'kvtier[analytics]'",
                file=sys.stderr,
            )
            return 2
    try:
        if args.report:
            created = not os.path.exists(args.report)
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
            print(f"report: {files[-1]} ({units.plural(len(files) - 1, 'plot')})", file=sys.stderr)
    except BaseException as e:
        if created and os.path.isdir(args.report) and not os.listdir(args.report):
            os.rmdir(args.report)  # leave no empty folder behind a failed run
        if not isinstance(e, OSError) or isinstance(e, BrokenPipeError):
            raise  # main() reports kvtier's errors and handles a closed pipe
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
    d.add_argument("--sessions", type=units.count_type("--sessions"), default=3, metavar="N",
                   help="concurrent agent sessions, a count (default 3)")
    d.add_argument("--steps", type=units.count_type("--steps"), default=8, metavar="N",
                   help="steps per session, a count (default 8)")
    d.add_argument("--system-tokens", type=units.tokens_type("--system-tokens"), default=2048, metavar="TOKENS",
                   help="shared system prompt, tokens: 2048 or 2k tokens (default 2048)")
    d.add_argument("--step-tokens", type=units.tokens_type("--step-tokens"), default=384, metavar="TOKENS",
                   help="tokens added per step: 384 or 384 tokens (default 384)")
    d.add_argument("--step-seconds", type=units.duration_type("--step-seconds"), default=30.0, metavar="DURATION",
                   help="time between steps on the demo's clock: 30, 30s, 2m (default 30 s)")
    d.add_argument("--capacity", type=units.bytes_type("--capacity"), default=128 << 20, metavar="BYTES",
                   help="host tier, bytes: 512MiB, 2G (binary), or a plain number of bytes (default 128MiB)")
    d.add_argument("--policy", choices=["lru", "lfu"], default="lru", help="eviction policy (default lru)")
    d.add_argument("--disk", metavar="DIR",
                   help="disk tier folder (LMDB; default: demo/ in your cache directory, printed when it runs)")
    d.add_argument("--disk-capacity", type=units.bytes_type("--disk-capacity"), default=4 << 30, metavar="BYTES",
                   help="disk tier, bytes: 4GiB, 500M (binary), or a plain number of bytes (default 4GiB)")
    d.add_argument("--seed", type=units.count_type("--seed", minimum=0), default=0, metavar="N",
                   help="seed of the generated tokens: the same seed and options give the same figures (default 0)")
    d.add_argument("--keep", action="store_true",
                   help="reuse what an earlier run left in the folder (default: start with it emptied)")
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
    a.add_argument("--capacity", default=[None], metavar="LIST",
                   type=units.amount_list_type("--capacity", ("blocks", "tokens", "bytes"), "blocks", unlimited=True),
                   help="cache capacities, each in blocks (a plain number, or 10k blocks), tokens (1M tokens) or "
                   "bytes of KV (32GiB, 512M: binary; needs --model or --kv-bytes-per-token); inf = unlimited "
                   "(default inf), e.g. 1000,10k blocks,1M tokens,inf")
    a.add_argument("--policy", type=units.argtype(_parse_policies, "list"), metavar="LIST",
                   help="eviction policies: lru, lfu, ttl (default lru; ttl when only --ttl is given)")
    a.add_argument("--ttl", type=units.duration_list_type("--ttl"), metavar="LIST",
                   help="maximum idle times for the ttl policy, e.g. 5m,1h,6h (s, m, h, d; plain: seconds)")
    a.add_argument("--block-size", type=units.tokens_list_type("--block-size"), metavar="LIST",
                   help="tokens per block, for logs with tokens or text (default 16), e.g. 16,32,64")
    a.add_argument("--model", metavar="NAME", help="model whose KV bytes per token give GB-hours "
                   "(a name from `kvtier cost --list`, or its Hugging Face id)")
    a.add_argument("--kv-bytes-per-token", type=units.bytes_type("--kv-bytes-per-token"), metavar="BYTES",
                   help="KV bytes per token (all layers) for GB-hours and byte capacities: 131072 or 128KiB")
    a.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write results as JSON (to stdout without PATH)")
    a.add_argument("--csv", nargs="?", const="-", metavar="PATH", help="write one CSV row per configuration (stdout without PATH)")
    a.add_argument("--report", metavar="DIR", help="write PNG plots and a self-contained report.html into DIR")
    a.add_argument("--break-examples", type=units.count_type("--break-examples", minimum=0), default=3, metavar="N",
                   help="prefix-break examples kept per cause, a count (default 3)")
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
        description="Exit status: 0 no damage (unreachable blocks are reported, not damage), 1 damage found and "
        "repaired (or unreachable blocks removed with --orphans), 4 damage left, 2 a usage error or not a folder.",
    )
    f.add_argument("path", help="the folder given as DiskConfig(path=...)")
    f.add_argument("--repair", action="store_true", help="remove damaged entries (safe beside running stores)")
    f.add_argument("--orphans", action="store_true", help="with --repair, also remove unreachable blocks (not damage)")
    f.add_argument("--json", action="store_true", help="print the report as JSON")
    f.set_defaults(func=_cmd_fsck)

    r = sub.add_parser(
        "remote",
        help="what a remote tier's server holds: blocks, bytes and oldest entry per namespace (docs/remote.md)",
        description="Walks every kvtier block on a Redis / Valkey server or Redis Cluster (SCAN, then the 56-byte "
        "header of each value, 1,000 a round trip). Exit status: 0 read, 2 a usage error or the server cannot be read.",
    )
    r.add_argument("url", help="as RemoteConfig(url=...): redis://HOST:PORT/DB, rediss://..., redis+cluster://SEED:PORT "
                   "(a password from the URL or $KVTIER_REDIS_PASSWORD)")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.set_defaults(func=_cmd_remote)

    g = sub.add_parser(
        "cuda",
        help="whether kvtier can use CUDA here (driver, devices, batched copies), and why not",
        description="Exit status: 0 CUDA is usable, 1 it is not (the reason is printed).",
    )
    g.add_argument("--json", action="store_true", help="print the status as JSON")
    g.set_defaults(func=_cmd_cuda)
    return p


def _cmd_remote(args: argparse.Namespace) -> int:
    import json

    from kvtier.tiers.remote_io import parse_url
    from kvtier.tiers.remote_report import survey

    parse_url(args.url)  # a usage error before any connection
    report = survey(args.url)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    return 0


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
        rc = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not in Python's exit flush
        return rc
    except KvtierError as e:
        print(f"kvtier: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`kvtier ... | head`): stop quietly. Python's exit flush would hit the closed
        # pipe again, so standard output is pointed at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
