"""A tiny random-weight Llama that vLLM's CPU build can serve with no download.

No model can be fetched on the test machines, so the tests build their own: a byte-level BPE tokenizer trained
locally on a few lines of text, and a 2-layer Llama with random weights. ``initializer_range`` is large (0.3) so
that the logits depend strongly on the context: with the usual 0.02 the model repeats one token whatever its KV
holds, and a check that loaded KV equals computed KV would prove nothing.

KV geometry (bf16): 2 layers x 2 KV heads x 64 dims x (K, V) x 2 bytes = 1 KiB per token, 32 KiB per 32-token block.
"""

from __future__ import annotations

import json
from pathlib import Path

VOCAB_SIZE = 1024
#: Token ids the prompts use: inside the trained tokenizer's vocabulary, past its special tokens.
PROMPT_TOKEN_RANGE = (16, 250)

_CORPUS = [
    "the agent reads the tool schema and calls the search tool with a query",
    "observation: the file contains three functions and a class named Store",
    "a prefix cache keeps the key and value tensors of earlier tokens warm",
    "system prompt: you are a careful assistant; answer briefly and cite the source",
    "def insert(tokens, payloads): return store.insert(tokens, payloads)",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?()[]{}",
]


def build_tiny_model(folder: Path, *, seed: int = 0) -> Path:
    """Writes the tokenizer and a random-weight model to ``folder`` (idempotent) and returns it."""
    folder = Path(folder)
    marker = folder / "kvtier-tiny-model.json"
    if marker.exists():
        return folder
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)

    cfg = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=65536,
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder)
    marker.write_text(json.dumps({"seed": seed, "vocab_size": VOCAB_SIZE}))
    return folder
