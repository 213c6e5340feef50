""""A hit is taken only when it pays": load time of a cached prefix against the time to prefill it again.

No vllm or torch here. The scheduler owns one :class:`HitCostModel`; the worker measures and reports:

- load bandwidth per tier (bytes per second of ``Store.load``, from loads served by one tier alone);
- a fixed cost per load (matching, pinning, scattering into the paged tensors), seconds;
- prefill throughput (tokens per second of the engine's forward passes that computed >= ``MIN_PREFILL_TOKENS``).

Each is an exponentially weighted mean of the measurements, starting from the configured priors (bandwidth)
or unknown (prefill: until one forward pass is measured every hit is taken, and counted as such).

Choosing the prefix (``load`` copies blocks ``0 .. k-1`` whatever the engine already holds)::

    blocks        0 ...... c-1 | c ............................ L-1
                  engine's hit | kvtier's hit (claimable)
    load(k)     = fixed + sum_{i<k} bytes / bandwidth(tier_i)
    prefill(k)  = (k - c) * block_size / throughput
    claim k* = argmax_k prefill(k) - load(k)   over k in c+1 .. L, if that gain is > 0; else claim nothing
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["HitCostModel", "HitDecision", "MIN_PREFILL_TOKENS"]

#: Forward passes computing fewer tokens than this are decode steps; they do not measure prefill throughput.
MIN_PREFILL_TOKENS = 64
_ALPHA = 0.3  # weight of a new measurement
_HOST, _DISK = 1, 2


@dataclass(frozen=True)
class HitDecision:
    """What the scheduler claims for one request, and why."""

    blocks: int  #: blocks claimed beyond the engine's own hit (0: none)
    offered: int  #: blocks kvtier could have supplied beyond the engine's own hit
    est_load_s: float  #: estimated load time of the claimed prefix (0 if none)
    est_prefill_s: float  #: estimated prefill time saved by the claim (0 if none or unknown)
    reason: str  #: "pays", "declined" (loading is slower than prefill), "no_estimate", "always", "none"


class HitCostModel:
    """Running estimates of load bandwidths, fixed load cost and prefill throughput."""

    def __init__(self, *, block_bytes: int, block_size: int, host_bandwidth: float, disk_bandwidth: float) -> None:
        self.block_bytes = block_bytes
        self.block_size = block_size
        self.bandwidth = {_HOST: float(host_bandwidth), _DISK: float(disk_bandwidth)}
        self.load_fixed_s = 0.0
        self.prefill_tokens_per_s: float | None = None

    @staticmethod
    def _mix(old: float | None, new: float) -> float:
        return new if old is None else (1 - _ALPHA) * old + _ALPHA * new

    def observe_load(self, tier: int, nbytes: int, seconds: float) -> None:
        """A load served by one tier alone: ``nbytes`` in ``seconds`` (copy into the staging buffer)."""
        if tier in self.bandwidth and nbytes > 0 and seconds > 0:
            self.bandwidth[tier] = self._mix(self.bandwidth[tier], nbytes / seconds)

    def observe_load_fixed(self, seconds: float) -> None:
        """The per-load cost outside the store's copy (match, pin, scatter), seconds."""
        if seconds >= 0:
            self.load_fixed_s = self._mix(self.load_fixed_s, seconds)

    def observe_prefill(self, tokens: int, seconds: float) -> None:
        """One forward pass that computed ``tokens`` tokens in ``seconds``."""
        if tokens >= MIN_PREFILL_TOKENS and seconds > 0:
            self.prefill_tokens_per_s = self._mix(self.prefill_tokens_per_s, tokens / seconds)

    def decide(self, tiers: npt.NDArray[np.uint8], engine_blocks: int, *, always: bool) -> HitDecision:
        """The prefix to claim, given the tier of each matched block (``len(tiers)`` = kvtier's hit in blocks).

        ``engine_blocks`` leading blocks are already held by the engine; only blocks past them are claimable.
        """
        total = len(tiers)
        offered = max(0, total - engine_blocks)
        if offered == 0:
            return HitDecision(0, 0, 0.0, 0.0, "none")
        per_block = np.where(
            tiers == _HOST,
            self.block_bytes / self.bandwidth[_HOST],
            self.block_bytes / self.bandwidth[_DISK],
        )
        load = self.load_fixed_s + np.cumsum(per_block)  # load[k-1]: time to load blocks 0..k-1
        if always:
            return HitDecision(offered, offered, float(load[-1]), 0.0, "always")
        tput = self.prefill_tokens_per_s
        if tput is None:
            return HitDecision(offered, offered, float(load[-1]), 0.0, "no_estimate")
        ks = np.arange(engine_blocks + 1, total + 1)
        prefill = (ks - engine_blocks) * self.block_size / tput
        gain = prefill - load[engine_blocks:]
        best = int(np.argmax(gain))
        if gain[best] <= 0:
            return HitDecision(0, offered, float(load[-1]), float(prefill[-1]), "declined")
        return HitDecision(int(ks[best]) - engine_blocks, offered, float(load[best + engine_blocks]), float(prefill[best]), "pays")
