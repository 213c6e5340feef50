"""The prompts of the vLLM tests, fixed by a seed, so a baseline engine can compute them all once per session."""

from __future__ import annotations

import numpy as np

from tiny_model import PROMPT_TOKEN_RANGE

BLOCK = 32  # the engine's block size in every test (the CPU backend wants multiples of 32)
MAX_TOKENS = 8


def _tokens(seed: int, n: int) -> list[int]:
    rng = np.random.default_rng(seed)
    lo, hi = PROMPT_TOKEN_RANGE
    return [int(t) for t in rng.integers(lo, hi, size=n)]


#: Single prompts by name.
PROMPTS: dict[str, list[int]] = {
    "repeat": _tokens(1, 300),  # 9 claimable full blocks (288 tokens)
    "salted": _tokens(2, 200),  # 6 claimable full blocks (192 tokens)
    "restart_intact": _tokens(3, 1000),  # 31 claimable full blocks
    "restart_corrupt": _tokens(4, 500),  # 15 claimable full blocks
    "declined": _tokens(6, 300),  # 9 claimable full blocks, offered to an engine that estimates loads as too slow
}

#: The agent session: a system prompt, then each step appends the model's answer and a new observation.
AGENT_SYSTEM = _tokens(5, 400)
AGENT_STEPS = 10
AGENT_OBSERVATIONS = [_tokens(100 + i, 60) for i in range(AGENT_STEPS)]


def claimable_tokens(n_tokens: int) -> int:
    """Tokens of the full blocks an external cache may supply: the engine computes at least the last token."""
    return (n_tokens - 1) // BLOCK * BLOCK
