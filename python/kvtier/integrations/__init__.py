"""Engine integrations. Each submodule imports its engine lazily: ``import kvtier`` never imports one.

- :mod:`kvtier.integrations.vllm`: ``KVTierConnector``, a vLLM v1 KV connector.
"""
