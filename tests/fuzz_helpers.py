"""The fuzz tests' hypothesis settings: derandomized (the same inputs every run), no example database, no deadline
(the machine is 2 shared cores), on a fixed budget of examples."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def fuzz_settings(examples: int) -> settings:
    """``examples`` derandomized inputs per fuzzed argument or test."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
