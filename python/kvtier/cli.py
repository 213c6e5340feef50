"""The `kvtier` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kvtier import __version__

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
    from kvtier.demo import DemoConfig, StepReport, run_demo

    cfg = DemoConfig(
        sessions=args.sessions,
        steps=args.steps,
        system_tokens=args.system_tokens,
        step_tokens=args.step_tokens,
        step_seconds=args.step_seconds,
        capacity_bytes=args.capacity,
        policy=args.policy,
    )
    block_mib = cfg.kv_bytes_per_token * cfg.block_size / (1 << 20)
    print(
        f"kvtier demo: {cfg.sessions} agent sessions x {cfg.steps} steps, shared system prompt of "
        f"{cfg.system_tokens} tokens, +{cfg.step_tokens} tokens per step, {cfg.step_seconds:g} s apart\n"
        f"host tier: {cfg.capacity_bytes / (1 << 20):.0f} MiB, {cfg.policy.upper()}, block {cfg.block_size} tokens "
        f"= {block_mib:g} MiB of KV (Llama-3.2-1B, bf16)\n"
    )
    print(f"{'step':>4} {'session':<9} {'prompt':>7} {'hit':>7} {'hit %':>6} {'new blk':>7}  KV check")

    def emit(r: StepReport) -> None:
        pct = 100.0 * r.hit_tokens / r.prompt_tokens
        check = "ok" if r.verified else "MISMATCH"
        print(f"{r.step:>4} {r.session:<9} {r.prompt_tokens:>7} {r.hit_tokens:>7} {pct:>5.1f}% {r.new_blocks:>7}  {check}")

    store, reports = run_demo(cfg, emit)
    with store:
        end = (cfg.steps - 1) * cfg.step_seconds + cfg.step_seconds
        st = store.stats()
        res = store.residency(now=end)
        print(
            f"\nhost tier: {st.blocks} blocks resident ({st.resident_bytes / (1 << 20):.0f} MiB of "
            f"{(st.capacity_bytes or 0) / (1 << 20):.0f} MiB), block hit ratio {st.hit_ratio:.1%}, "
            f"{st.evicted} evicted, {st.bytes_read / (1 << 30):.2f} GiB loaded instead of prefilled"
        )
        print(f"residency over {end:g} s: {res.gb_hours:.4f} GB-hours")
        for (_, session), gbh in sorted(res.by_session().items(), key=lambda kv: kv[0][1]):
            if gbh > 0:
                print(f"  {session:<9} {gbh:.4f} GB-hours")
    return 0 if all(r.verified for r in reports) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvtier", description="A tiered KV prefix-cache store for LLM serving.")
    p.add_argument("--version", action="version", version=f"kvtier {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run an agent-like session through the host tier and print hits and residency")
    d.add_argument("--sessions", type=int, default=3, help="concurrent agent sessions (default 3)")
    d.add_argument("--steps", type=int, default=8, help="steps per session (default 8)")
    d.add_argument("--system-tokens", type=int, default=2048, help="shared system prompt length (default 2048)")
    d.add_argument("--step-tokens", type=int, default=384, help="tokens added per step (default 384)")
    d.add_argument("--step-seconds", type=float, default=30.0, help="simulated seconds between steps (default 30)")
    d.add_argument("--capacity", type=_size, default=1 << 30, help="host tier bytes, e.g. 512M, 2G (default 1G)")
    d.add_argument("--policy", choices=["lru", "lfu"], default="lru", help="eviction policy (default lru)")
    d.set_defaults(func=_cmd_demo)
    return p


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
