"""Block keys: the chained, namespace-keyed BLAKE3 hash of docs/keys.md."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from kvtier import _core
from kvtier.config import DEFAULT_BLOCK_SIZE, Namespace, token_limit
from kvtier.errors import InvalidArgumentError, KvtierTypeError
from kvtier.store import Tokens, TokenSequence

__all__ = ["block_keys"]


def block_keys(
    tokens: Tokens,
    namespace: Namespace,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    extra: bytes = b"",
    parent: bytes | None = None,
    vocab_size: int | None = None,
) -> npt.NDArray[np.uint8]:
    """``uint8[n_full_blocks, 32]``: the chained key of every full block of ``tokens``.

    Identical in every process and machine (no dependence on PYTHONHASHSEED). ``parent`` continues
    a chain (the key of the block before ``tokens[0]``); ``extra`` is bound into every block
    (e.g. a LoRA adapter id); the layout is in docs/keys.md.
    """
    if not isinstance(namespace, Namespace):
        raise KvtierTypeError(f"namespace must be a kvtier.Namespace, got {type(namespace).__name__}")
    if not isinstance(extra, bytes):
        raise KvtierTypeError(f"extra must be bytes, got {type(extra).__name__}")
    if parent is not None and (not isinstance(parent, bytes) or len(parent) != 32):
        raise InvalidArgumentError("parent must be the 32-byte key of the previous block")
    limit = token_limit(vocab_size)  # (block_size is checked by namespace.key below)
    arg = tokens._seq if isinstance(tokens, TokenSequence) else tokens
    return _core.block_keys(namespace.key(block_size), arg, block_size, limit, extra, parent)
