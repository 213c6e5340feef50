"""Offline analytics over request logs: ``kvtier analyze``.

Read a log (:func:`read_log`), replay it through the core's metadata-only store under many
capacities, policies, TTLs and block sizes (:func:`run_sweep`), find where sessions' prefixes
break (:mod:`.breaks`), compare with published trace figures (:mod:`.paper`), and write tables,
JSON, CSV, plots and an HTML page (:mod:`.output`, :mod:`.report`). :func:`analyze` does it all.

Only numpy and kvtier are imported here; tqdm, matplotlib, jinja2 and tokenizers (the
``analytics`` extra) are imported by the functions that need them.
"""

from __future__ import annotations

from kvtier.analytics.analyze import Analysis, AnalyzeOptions, analyze
from kvtier.analytics.formats import FORMATS, LogFormatError
from kvtier.analytics.logs import RequestLog, read_log
from kvtier.analytics.sweep import SweepConfig, SweepResult, build_configs, run_config, run_sweep

__all__ = [
    "analyze",
    "AnalyzeOptions",
    "Analysis",
    "read_log",
    "RequestLog",
    "LogFormatError",
    "FORMATS",
    "SweepConfig",
    "SweepResult",
    "build_configs",
    "run_config",
    "run_sweep",
]
