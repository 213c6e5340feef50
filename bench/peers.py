"""Pure-Python peer baselines, written the way the engines kvtier replaces write them.

They take Python lists of ints (their natural input, converted before timing starts), which favours them:
kvtier is timed on the engine's numpy array or list as given.
"""

from __future__ import annotations

import hashlib
import pickle
from collections import OrderedDict
from collections.abc import Sequence


class ChainedHashDict:
    """key_i = hash((key_{i-1}, tuple(block_i))) in a dict; lookup block by block until the first miss.

    The fastest prefix lookup plain Python offers (vLLM's ``builtin`` hash scheme, SGLang's paged key).
    """

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.blocks: dict[int, int] = {}

    def insert(self, tokens: Sequence[int]) -> None:
        bs, key = self.block_size, None
        for i in range(0, len(tokens) - bs + 1, bs):
            key = hash((key, tuple(tokens[i : i + bs])))
            self.blocks[key] = i // bs

    def match(self, tokens: Sequence[int]) -> int:
        bs, key, blocks, n = self.block_size, None, self.blocks, 0
        for i in range(0, len(tokens) - bs + 1, bs):
            key = hash((key, tuple(tokens[i : i + bs])))
            if key not in blocks:
                break
            n += 1
        return n


def _sha256_pickle(parent: bytes | None, block: tuple[int, ...]) -> bytes:
    # vLLM's default `sha256` block hash: sha256 of the pickled (parent hash, block tokens, extra keys).
    return hashlib.sha256(pickle.dumps((parent, block, None), protocol=pickle.HIGHEST_PROTOCOL)).digest()


class Sha256PickleDict:
    """vLLM's default scheme: key_i = sha256(pickle.dumps((key_{i-1}, tuple(block_i), None))).

    As in vLLM's scheduler, the keys of every full block of the request are computed first, then looked up in
    the dict until the first miss.
    """

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.blocks: dict[bytes, int] = {}

    def keys(self, tokens: Sequence[int]) -> list[bytes]:
        bs, key, out = self.block_size, None, []
        for i in range(0, len(tokens) - bs + 1, bs):
            key = _sha256_pickle(key, tuple(tokens[i : i + bs]))
            out.append(key)
        return out

    def insert(self, tokens: Sequence[int]) -> None:
        for i, k in enumerate(self.keys(tokens)):
            self.blocks[k] = i

    def match(self, tokens: Sequence[int]) -> int:
        blocks, n = self.blocks, 0
        for k in self.keys(tokens):
            if k not in blocks:
                break
            n += 1
        return n


def ordered_dict_lru_replay(requests: Sequence[Sequence[int]], capacity_blocks: int | None) -> int:
    """Replays prefix block ids through an OrderedDict LRU of ``capacity_blocks`` blocks; returns blocks hit.

    Per request: count the leading block ids present (touching them), insert the rest, evict the least
    recently used blocks beyond capacity. Per-block LRU, where kvtier evicts leaf-first per tree node: with
    unlimited capacity both count exactly the same hits.
    """
    cache: OrderedDict[int, None] = OrderedDict()
    move, hits = cache.move_to_end, 0
    for ids in requests:
        missed = False
        for h in ids:
            if not missed and h in cache:
                move(h)
                hits += 1
            else:
                missed = True
                cache[h] = None
                move(h)
        if capacity_blocks is not None:
            while len(cache) > capacity_blocks:
                cache.popitem(last=False)
    return hits
