"""KV-cache bytes per token of a few well-known models (until a model catalogue exists).

KV bytes per token = 2 (K and V) x layers x KV heads x head dim x bytes per element (bf16: 2).
The shapes are those of each model's ``config.json`` on the Hugging Face Hub
(``num_hidden_layers``, ``num_key_value_heads``, ``hidden_size / num_attention_heads``).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvtier.errors import InvalidArgumentError

__all__ = ["ModelKV", "MODELS", "model_kv"]


@dataclass(frozen=True)
class ModelKV:
    """A model's KV geometry.

    Attributes
    ----------
    name
        Hugging Face model id.
    layers, kv_heads, head_dim
        Attention shape from ``config.json``.
    dtype_bytes
        Bytes per KV element (bf16: 2).
    """

    name: str
    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int = 2

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


MODELS: dict[str, ModelKV] = {
    m.name: m
    for m in (
        # meta-llama/Llama-3.2-1B config.json: 16 layers, 8 KV heads, 2048/32 = 64 -> 32,768 B (kvtier demo's model)
        ModelKV("meta-llama/Llama-3.2-1B", 16, 8, 64),
        # meta-llama/Llama-3.1-8B config.json: 32 layers, 8 KV heads, 4096/32 = 128 -> 131,072 B
        ModelKV("meta-llama/Llama-3.1-8B", 32, 8, 128),
        # meta-llama/Llama-3.1-70B config.json: 80 layers, 8 KV heads, 8192/64 = 128 -> 327,680 B;
        # Mooncake FAST'25 §5.3.1: "LLaMA3-70B ... 320 KB" per token
        ModelKV("meta-llama/Llama-3.1-70B", 80, 8, 128),
        # Qwen/Qwen2.5-7B config.json: 28 layers, 4 KV heads, 3584/28 = 128 -> 57,344 B
        ModelKV("Qwen/Qwen2.5-7B", 28, 4, 128),
        # Qwen/Qwen2.5-72B config.json: 80 layers, 8 KV heads, 8192/64 = 128 -> 327,680 B
        ModelKV("Qwen/Qwen2.5-72B", 80, 8, 128),
    )
}


def model_kv(name: str) -> ModelKV:
    """The built-in model ``name`` (a Hugging Face id, or its part after the ``/``, any case)."""
    key = name.strip().lower()
    for m in MODELS.values():
        if key in (m.name.lower(), m.name.split("/", 1)[1].lower()):
            return m
    known = ", ".join(MODELS)
    raise InvalidArgumentError(f"unknown model {name!r}: known are {known}; or give --kv-bytes-per-token N")
