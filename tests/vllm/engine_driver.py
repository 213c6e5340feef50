"""Runs one vLLM engine in its own process and serves the test's requests over a local socket.

The pytest process never imports vllm or torch: each engine lives in a driver process (vLLM spawns its engine
core and worker processes below it). Started by ``conftest.Engine``::

    python engine_driver.py ADDRESS AUTHKEY_HEX

Protocol (pickled over ``multiprocessing.connection``): the first message is the engine config; the driver answers
``{"ready": True, ...}`` or ``{"error": ...}``; then each command gets one reply.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from multiprocessing.connection import Client
from typing import Any


def _outputs(results: Any) -> list[dict[str, Any]]:
    out = []
    for r in results:
        c = r.outputs[0]
        lps = [float(lp[t].logprob) for t, lp in zip(c.token_ids, c.logprobs or [])]
        out.append(
            {
                "token_ids": list(c.token_ids),
                "logprobs": lps,
                "num_cached_tokens": int(r.num_cached_tokens or 0),
                "finish_reason": None if c.finish_reason is None else str(c.finish_reason),
            }
        )
    return out


def _metrics(llm: Any) -> dict[str, float]:
    """kvtier's Prometheus counters as a scrape would see them (the ``_total`` samples), and vLLM's cache counters.

    Read from prometheus_client's registry, not ``LLM.get_metrics()``, which truncates counters to integers.
    """
    from prometheus_client import REGISTRY

    values: dict[str, float] = {}
    for metric in REGISTRY.collect():
        if not (metric.name.startswith("vllm:kvtier_") or "prefix_cache" in metric.name or "cached" in metric.name):
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                values[metric.name] = values.get(metric.name, 0.0) + float(sample.value)
    return values


def _histograms(prefix: str = "vllm:kvtier_") -> dict[str, list[tuple[float, float]]]:
    """kvtier's Prometheus histograms: name -> [(upper bound in seconds, cumulative count)], summed over engines."""
    from prometheus_client import REGISTRY

    out: dict[str, dict[float, float]] = {}
    for metric in REGISTRY.collect():
        if metric.type != "histogram" or not metric.name.startswith(prefix):
            continue
        buckets = out.setdefault(metric.name, {})
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + float(sample.value)
    return {name: sorted(b.items()) for name, b in out.items()}


class _EventListener:
    """Subscribes to the engine's KV-event publisher (ZMQ) and keeps the kvtier connector's events (medium CPU)."""

    def __init__(self, endpoint: str) -> None:
        import threading

        import zmq

        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.setsockopt(zmq.RCVTIMEO, 200)
        self._sock.connect(endpoint)
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._last = time.monotonic()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import msgspec
        import zmq
        from vllm.distributed.kv_events import BlockRemoved, BlockStored, KVEventBatch

        decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        while not self._stop:
            try:
                parts = self._sock.recv_multipart()
            except zmq.Again:
                continue
            batch = decoder.decode(parts[-1])
            with self._lock:
                self._last = time.monotonic()
                for ev in batch.events:
                    if isinstance(ev, (BlockStored, BlockRemoved)) and ev.medium == "CPU":
                        self._events.append(
                            {
                                "type": type(ev).__name__,
                                "blocks": len(ev.block_hashes),
                                "hash_bytes": sorted({len(h) for h in ev.block_hashes if isinstance(h, bytes)}),
                                "tokens": len(getattr(ev, "token_ids", []) or []),
                            }
                        )

    def take(self, quiet_s: float = 1.0, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Events so far, once none has arrived for ``quiet_s`` (publishing is asynchronous)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            with self._lock:
                if time.monotonic() - self._last >= quiet_s:
                    break
            time.sleep(0.1)
        with self._lock:
            out, self._events = self._events, []
        return out


def _serve(conn: Any) -> None:
    cfg = conn.recv()
    from vllm import LLM, SamplingParams
    from vllm.config import KVEventsConfig, KVTransferConfig
    from vllm.inputs import TokensPrompt

    kwargs: dict[str, Any] = dict(
        model=cfg["model"],
        block_size=32,
        enable_prefix_caching=cfg.get("prefix_caching", False),
        max_model_len=cfg.get("max_model_len", 8192),
        dtype="bfloat16",
        enforce_eager=True,
        seed=0,
        disable_log_stats=False,
        max_num_seqs=8,
    )
    if cfg.get("connector") is not None:
        kwargs["kv_transfer_config"] = KVTransferConfig(
            kv_connector="KVTierConnector",
            kv_connector_module_path="kvtier.integrations.vllm",
            kv_role="kv_both",
            kv_load_failure_policy=cfg.get("failure_policy", "recompute"),
            kv_connector_extra_config=cfg["connector"],
        )
    endpoint = None
    if cfg.get("kv_events"):
        endpoint = f"ipc://{os.path.abspath('kv-events-' + str(os.getpid()))}"
        kwargs["kv_events_config"] = KVEventsConfig(enable_kv_cache_events=True, publisher="zmq", endpoint=endpoint)
    t0 = time.perf_counter()
    llm = LLM(**kwargs)
    listener = _EventListener(endpoint) if endpoint else None
    conn.send({"ready": True, "start_s": time.perf_counter() - t0, "pid": os.getpid()})

    def sampling(max_tokens: int) -> Any:
        return SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=1, ignore_eos=True)

    def generate(prompts: list[list[int]], salts: list[str | None] | None, max_tokens: int) -> list[dict[str, Any]]:
        salts = salts or [None] * len(prompts)
        reqs = []
        for p, s in zip(prompts, salts):
            tp = TokensPrompt(prompt_token_ids=p)
            if s is not None:
                tp["cache_salt"] = s
            reqs.append(tp)
        return _outputs(llm.generate(reqs, sampling(max_tokens), use_tqdm=False))

    while True:
        cmd = conn.recv()
        op = cmd["op"]
        try:
            if op == "quit":
                conn.send({"ok": True})
                break
            if op == "generate":
                t = time.perf_counter()
                outs = generate(cmd["prompts"], cmd.get("salts"), cmd.get("max_tokens", 8))
                conn.send({"outputs": outs, "wall_s": time.perf_counter() - t})
            elif op == "agent":
                # Each step's prompt is the previous prompt + the model's answer + a new observation.
                prompt = list(cmd["system"])
                steps = []
                for obs in cmd["observations"]:
                    prompt = prompt + list(obs)
                    (o,) = generate([prompt], [cmd.get("salt")], cmd.get("max_tokens", 8))
                    steps.append({"prompt_len": len(prompt), **o})
                    prompt = prompt + o["token_ids"]
                conn.send({"steps": steps})
            elif op == "events":
                conn.send({"events": listener.take() if listener else []})
            elif op == "metrics":
                conn.send({"metrics": _metrics(llm)})
            elif op == "histograms":
                conn.send({"histograms": _histograms()})
            else:
                conn.send({"error": f"unknown op {op!r}"})
        except Exception:
            conn.send({"error": traceback.format_exc()})
    del llm


def main() -> None:
    address, authkey = sys.argv[1], bytes.fromhex(sys.argv[2])
    conn = Client(address, authkey=authkey)
    try:
        _serve(conn)
    except Exception:
        try:
            conn.send({"error": traceback.format_exc()})
        except Exception:
            pass
        raise
    finally:
        conn.close()


if __name__ == "__main__":
    main()
