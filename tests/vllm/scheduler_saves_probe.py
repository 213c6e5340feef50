"""Drives the connector's SchedulerSide through saves in flight, with stand-ins for vLLM's request and scheduler
output, and prints what it observed as JSON (test_vllm_scheduler_saves.py runs it in a subprocess, so the pytest
process never imports vllm)::

    python scheduler_saves_probe.py DISK_FOLDER
"""

from __future__ import annotations

import json
import logging
import sys
from types import SimpleNamespace
from typing import Any

BS = 32


class Request(SimpleNamespace):
    """The attributes of vllm.v1.request.Request that the scheduler side reads."""

    def __init__(self, req_id: str, tokens: list[int]) -> None:
        super().__init__(
            request_id=req_id,
            all_token_ids=list(tokens),
            num_tokens=len(tokens),
            num_prompt_tokens=len(tokens),
            num_computed_tokens=0,
            cache_salt=None,
        )


def _step(req: Request) -> Any:
    """A scheduler output that prefills the whole of ``req`` in one step."""
    return SimpleNamespace(
        total_num_scheduled_tokens=req.num_tokens,
        scheduled_new_reqs=[SimpleNamespace(req_id=req.request_id, num_computed_tokens=0)],
        scheduled_cached_reqs=SimpleNamespace(req_ids=[], num_computed_tokens=[]),
        num_scheduled_tokens={req.request_id: req.num_tokens},
    )


def main() -> None:
    from kvtier.integrations.vllm import scheduler as sched_mod
    from kvtier.integrations.vllm.config import parse_extra_config
    from kvtier.integrations.vllm.meta import KVTierWorkerMetadata

    warnings: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    logging.getLogger("vllm.kvtier.scheduler").addHandler(Keep(level=logging.WARNING))
    cfg = parse_extra_config({"disk_path": sys.argv[1], "hit_policy": "always", "disk_capacity": "1G"})
    fields = {"model": "m", "revision": "", "tokenizer": "t", "kv_dtype": "bfloat16", "kv_layout": "probe"}
    side = sched_mod.SchedulerSide(cfg, block_size=BS, block_bytes=1024, ns_fields=fields, spec_desc="probe", world=2)
    blocks_of = lambda req_id: list(range(100, 200))  # noqa: E731
    out: dict[str, Any] = {}

    def admit(req: Request) -> Any:
        n, _ = side.get_num_new_matched_tokens(req, 0)
        side.update_state_after_alloc(req, None, 0)
        return n

    def acks(*pairs: tuple[int, int]) -> None:
        side.update_connector_output(KVTierWorkerMetadata(saves=list(pairs)), None)

    a = Request("A", list(range(1000, 1320)))  # 10 full blocks
    out["a_lookup"] = admit(a)
    meta = side.build_connector_meta(_step(a), blocks_of)
    save = meta.steps[0].save
    out["a_save"] = [save.end_block, save.save_id]
    out["in_flight_after_plan"] = side.saves_in_flight()

    b = Request("B", list(range(1000, 1320)) + list(range(5000, 5064)))  # A's prompt and two more blocks
    c = Request("C", list(range(7000, 7320)))  # unrelated
    out["b_while_in_flight"] = side.get_num_new_matched_tokens(b, 0)[0]
    out["c_while_in_flight"] = side.get_num_new_matched_tokens(c, 0)[0]
    acks((save.save_id, 10))  # one rank of two
    out["in_flight_after_one_rank"] = side.saves_in_flight()
    out["b_after_one_rank"] = side.get_num_new_matched_tokens(b, 0)[0]
    acks((save.save_id, 8))  # the other rank holds 8 blocks only (its host tier had room for no more)
    out["in_flight_after_all_ranks"] = side.saves_in_flight()
    out["b_after_all_ranks"] = side.get_num_new_matched_tokens(b, 0)[0]

    d = Request("D", list(range(9000, 9320)))
    admit(d)
    save_d = side.build_connector_meta(_step(d), blocks_of).steps[0].save
    acks((save_d.save_id, 0), (save_d.save_id, 10))  # it failed on one rank
    out["d_after_failed_save"] = side.get_num_new_matched_tokens(Request("D2", list(range(9000, 9320)) + [1]), 0)[0]

    e = Request("E", list(range(11000, 11320)))
    admit(e)
    side.build_connector_meta(_step(e), blocks_of)
    out["in_flight_e"] = side.saves_in_flight()
    sched_mod.SAVE_ACK_TIMEOUT_S = 0.0
    out["in_flight_e_after_timeout"] = side.saves_in_flight()
    out["warnings"] = warnings
    out["deferred"] = side.stats.data.get("lookups_deferred", 0)
    side.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
