"""Three-part TCO of serving a trace on self-hosted hardware with kvtier's prefix cache.

::

    1. KV residency   ledger GB-hours x the tier's rate (host: DRAM $/GB-h, the default;
                      disk: NVMe $/GB-h, ``kv_tier="disk"``)
    2. compute        FLOPs = 2 x active_params x (missed input tokens + output tokens)
                      GPU-hours = FLOPs / achievable FLOP/s / 3600;  USD = GPU-hours x GPU $/h
    3. footprint      GPUs = fewest deployable GPUs whose usable HBM holds
                             total_params x bytes_per_param + the KV working set
                      USD = GPUs x GPU $/h x trace duration (h)

    total = KV residency + max(compute, footprint)

Active parameters drive the compute term, total parameters the footprint: a MoE model with few
active parameters is cheap per token but needs many GPUs just to hold its experts (DeepSeek-V3: 37B
active of 671B; at one byte per parameter it needs 16 H100s before it serves a single token).

The GPUs that hold the shards are the GPUs that run the FLOPs, so the GPU bill is the larger of the
two terms, not their sum: a trace too light to keep the minimum instance busy pays for the instance
(footprint-bound); a heavier one needs more replicas than the minimum and pays for its FLOPs
(compute-bound). ``dominant`` says which. Attention FLOPs over the context and decode's
memory-bound slowdown are not modelled (2 FLOPs per active parameter per token).

Deployable GPU counts: powers of two up to a node (1, 2, 4, 8), whole nodes beyond. The KV working
set is the KV of the requests in flight at the busiest moment: the most KV (input + output tokens of
every request) that arrives within any ``inflight_s``-second window; the prefix cache itself lives
in host memory (kvtier's tiers), not in HBM.

The no-cache baseline (``naive_usd``) prefills every input token and holds no prefix cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kvtier.cost.catalog import HardwareSpec, ModelSpec
from kvtier.cost.ledger import Ledger, ledger_from_trace
from kvtier.cost.trace import CostTrace
from kvtier.errors import InvalidArgumentError

__all__ = [
    "TcoAssumptions",
    "Tco",
    "compute_tco",
    "compute_cost",
    "deployable_gpus",
    "footprint_cost",
    "kv_working_set_bytes",
]


@dataclass(frozen=True)
class TcoAssumptions:
    """What the TCO assumes beyond the catalogues.

    Parameters
    ----------
    kv_ttl_s
        How long kvtier keeps an idle prefix in the host tier (``None``: for ever). Default 1 hour.
    inflight_s
        Window for the KV working set in HBM (seconds a request stays in flight). Default 10 s.
    duration_s
        Hours the instance is held, in seconds (default: the trace's first-to-last arrival span).
    kv_tier
        The tier whose GB-hour rate prices the residency: ``"host"`` (DRAM, default) or
        ``"disk"`` (NVMe). The core replays one tier; this says where that tier's bytes live.
    """

    kv_ttl_s: float | None = 3600.0
    inflight_s: float = 10.0
    duration_s: float | None = None
    kv_tier: str = "host"

    def __post_init__(self) -> None:
        for name in ("kv_ttl_s", "inflight_s", "duration_s"):
            v = getattr(self, name)
            if v is None and name != "inflight_s":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                raise InvalidArgumentError(f"{name} must be a finite number of seconds >= 0, got {v!r}")
        if self.kv_tier not in ("host", "disk"):
            raise InvalidArgumentError(f"kv_tier must be 'host' or 'disk', got {self.kv_tier!r}")
        if self.kv_ttl_s is not None and self.kv_ttl_s <= 0:
            raise InvalidArgumentError(f"kv_ttl_s must be > 0 (or None: never expire), got {self.kv_ttl_s}")


def compute_cost(flops: float, hardware: HardwareSpec) -> tuple[float, float]:
    """``(GPU-hours, USD)`` for ``flops`` at the hardware's achievable FLOP/s."""
    gpu_hours = flops / hardware.achievable_flops / 3600.0
    return gpu_hours, gpu_hours * hardware.gpu_usd_per_hour


def deployable_gpus(bytes_needed: float, hardware: HardwareSpec) -> int:
    """Fewest deployable GPUs whose usable HBM holds ``bytes_needed``.

    Powers of two up to ``gpus_per_node``, then whole nodes.
    """
    per_gpu = hardware.hbm_gb * 1e9 * hardware.hbm_usable_fraction
    n = max(1, math.ceil(bytes_needed / per_gpu))
    node = hardware.gpus_per_node
    if n <= node:
        return min(1 << (n - 1).bit_length(), node)
    return math.ceil(n / node) * node


def footprint_cost(gpus: int, hardware: HardwareSpec, duration_s: float) -> float:
    """USD of holding ``gpus`` GPUs for ``duration_s`` seconds."""
    return gpus * hardware.gpu_usd_per_hour * duration_s / 3600.0


def kv_bytes_array(model: ModelSpec, tokens: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """``model.kv_bytes`` of each sequence length in ``tokens`` (vectorised)."""
    per = float(model.kv_bytes_per_token_per_layer)
    win = model.windowed_layers
    full = model.layers - win
    t = tokens.astype(np.float64)
    kept = t if model.sliding_window is None else np.minimum(t, float(model.sliding_window))
    return full * per * t + win * per * kept


def kv_working_set_bytes(trace: CostTrace, model: ModelSpec, inflight_s: float) -> float:
    """Most KV bytes (input + output tokens of each request) arriving within any ``inflight_s`` window."""
    kv = kv_bytes_array(model, trace.input_tokens + trace.output_tokens)
    cs = np.concatenate(([0.0], np.cumsum(kv)))
    ts = trace.timestamps
    end = np.searchsorted(ts, ts + inflight_s, side="right")
    # the window starting at request i holds requests i .. end[i]-1 (at least request i itself)
    end = np.maximum(end, np.arange(1, ts.shape[0] + 1))
    return float((cs[end] - cs[:-1]).max())


@dataclass(frozen=True)
class Tco:
    """The three-part TCO of one model on one hardware entry for one trace (USD unless named).

    Attributes
    ----------
    ledger
        GB-hours per tier, tenant and session of the KV cache (first-writer attribution).
    kv_residency_usd
        Term 1: the ledger at the hardware's tier rates.
    prefill_tokens, cached_tokens, output_tokens
        Input tokens prefilled (missed by the cache), read from it, and generated.
    flops, compute_gpu_hours, compute_usd
        Term 2.
    weight_bytes, kv_working_set_bytes, gpus, duration_s, footprint_usd
        Term 3.
    naive_usd
        No prefix cache: every input token prefilled, no residency.
    request_cache_aware_usd, request_naive_usd
        ``float64[n]``: the totals spread over requests (residency by first writer, the GPU bill
        in proportion to each request's FLOPs).
    """

    model: ModelSpec
    hardware: HardwareSpec
    assumptions: TcoAssumptions
    ledger: Ledger
    kv_residency_usd: float
    prefill_tokens: int
    cached_tokens: int
    output_tokens: int
    flops: float
    compute_gpu_hours: float
    compute_usd: float
    weight_bytes: float
    kv_working_set_bytes: float
    gpus: int
    duration_s: float
    footprint_usd: float
    naive_usd: float
    request_cache_aware_usd: npt.NDArray[np.float64]
    request_naive_usd: npt.NDArray[np.float64]

    @property
    def gpu_usd(self) -> float:
        """What the GPUs cost: the larger of compute and footprint."""
        return max(self.compute_usd, self.footprint_usd)

    @property
    def total_usd(self) -> float:
        return self.kv_residency_usd + self.gpu_usd

    @property
    def cache_aware_usd(self) -> float:
        return self.total_usd

    @property
    def dominant(self) -> str:
        """``"compute"`` or ``"footprint"``: the term that sets the GPU bill."""
        return "compute" if self.compute_usd >= self.footprint_usd else "footprint"

    @property
    def cached_ratio(self) -> float:
        total = self.prefill_tokens + self.cached_tokens
        return self.cached_tokens / total if total else 0.0

    def by_task(self, trace: CostTrace) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """``(naive, cache_aware)`` USD per task (session)."""
        return trace.sum_by_task(self.request_naive_usd), trace.sum_by_task(self.request_cache_aware_usd)


def compute_tco(
    trace: CostTrace, model: ModelSpec, hardware: HardwareSpec, assumptions: TcoAssumptions | None = None
) -> Tco:
    """The three-part TCO of serving ``trace`` with ``model`` on ``hardware`` (see the module docstring)."""
    from kvtier.config import TierConfig

    a = assumptions if assumptions is not None else TcoAssumptions()
    tier = (
        TierConfig(capacity_bytes=None, policy="ttl", ttl_s=a.kv_ttl_s)
        if a.kv_ttl_s is not None
        else TierConfig(capacity_bytes=None)
    )
    ledger, hits = ledger_from_trace(trace, model.kv_bytes_per_token, tier=tier, model=model.name)
    cached = np.minimum(hits * trace.block_tokens, trace.input_tokens)
    missed = trace.input_tokens - cached
    out = trace.output_tokens
    flops_r = model.flops_per_token * (missed + out).astype(np.float64)
    naive_flops_r = model.flops_per_token * (trace.input_tokens + out).astype(np.float64)
    flops = float(flops_r.sum())
    gpu_hours, compute_usd = compute_cost(flops, hardware)
    _, naive_compute_usd = compute_cost(float(naive_flops_r.sum()), hardware)
    ws = kv_working_set_bytes(trace, model, a.inflight_s)
    gpus = deployable_gpus(model.weight_bytes + ws, hardware)
    duration = trace.duration_s if a.duration_s is None else float(a.duration_s)
    foot = footprint_cost(gpus, hardware, duration)
    kv_usd = ledger.usd(hardware, as_tier=a.kv_tier)

    # Spread the totals over requests: residency by the first writer's session, GPUs by FLOPs.
    n = trace.num_requests
    gpu_usd = max(compute_usd, foot)
    aware_r = gpu_usd * flops_r / flops if flops > 0 else np.full(n, gpu_usd / n)
    naive_gpu = max(naive_compute_usd, foot)
    naive_total = float(naive_flops_r.sum())
    naive_r = naive_gpu * naive_flops_r / naive_total if naive_total > 0 else np.full(n, naive_gpu / n)
    aware_r = aware_r + _residency_per_request(trace, ledger, kv_usd, hardware, a.kv_tier)

    return Tco(
        model=model,
        hardware=hardware,
        assumptions=a,
        ledger=ledger,
        kv_residency_usd=kv_usd,
        prefill_tokens=int(missed.sum()),
        cached_tokens=int(cached.sum()),
        output_tokens=int(out.sum()),
        flops=flops,
        compute_gpu_hours=gpu_hours,
        compute_usd=compute_usd,
        weight_bytes=model.weight_bytes,
        kv_working_set_bytes=ws,
        gpus=gpus,
        duration_s=duration,
        footprint_usd=foot,
        naive_usd=naive_gpu,
        request_cache_aware_usd=aware_r.astype(np.float64),
        request_naive_usd=naive_r.astype(np.float64),
    )


def _residency_per_request(
    trace: CostTrace, ledger: Ledger, kv_usd: float, hardware: HardwareSpec, tier: str
) -> npt.NDArray[np.float64]:
    """Residency USD per request: each session's ledger share, split evenly over its requests."""
    n = trace.num_requests
    if kv_usd == 0:
        return np.zeros(n)
    if trace.sessions is None:  # one account for everything: spread by input tokens
        w = trace.input_tokens.astype(np.float64)
        return kv_usd * w / w.sum() if w.sum() > 0 else np.full(n, kv_usd / n)
    by_session = {s: usd for (_, s), usd in ledger.usd_by_session(hardware, as_tier=tier).items()}
    per_session = np.asarray([by_session.get(s, 0.0) for s in trace.session_table], dtype=np.float64)
    counts = np.bincount(trace.sessions, minlength=len(trace.session_table)).astype(np.float64)
    share = np.divide(per_session, counts, out=np.zeros_like(per_session), where=counts > 0)
    return share[trace.sessions]
