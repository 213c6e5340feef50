"""kvtier.cost catalogues: KV bytes per token worked out by hand, shipped data, user overrides, bad entries."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from kvtier.cost.catalog import Catalog, CatalogError, ModelSpec, UnknownNameError, load_catalog

# name -> (arithmetic, bytes per token), every figure from the model's config.json (see models.toml)
KV_BYTES = {
    "llama-3.1-8b": (2 * 32 * 8 * 128 * 2, 131_072),  # K+V x 32 layers x 8 KV heads x 128 dim x bf16
    "deepseek-v3": (61 * 576 * 2, 70_272),  # MLA: 61 layers x (512 latent + 64 RoPE) x bf16
    "llama-3.2-1b": (2 * 16 * 8 * 64 * 2, 32_768),
    "llama-3.1-70b": (2 * 80 * 8 * 128 * 2, 327_680),  # Mooncake FAST'25: "320 KB" per token
    "llama-3.1-405b": (2 * 126 * 8 * 128 * 2, 516_096),
    "llama-2-7b": (2 * 32 * 32 * 128 * 2, 524_288),  # MHA: 32 KV heads
    "mistral-7b-v0.1": (2 * 32 * 8 * 128 * 2, 131_072),  # sliding window 4096
    "gemma-2-9b": (2 * 42 * 8 * 256 * 2, 344_064),  # hybrid: 21 local + 21 global layers
    "qwen3-32b": (2 * 64 * 8 * 128 * 2, 262_144),
    "qwen3-30b-a3b": (2 * 48 * 4 * 128 * 2, 98_304),
    "qwen3-235b-a22b": (2 * 94 * 4 * 128 * 2, 192_512),
    "kimi-k2": (61 * 576 * 2, 70_272),
    "gpt-oss-120b": (2 * 36 * 8 * 64 * 2, 73_728),
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.mark.parametrize("name", sorted(KV_BYTES))
def test_kv_bytes_per_token(catalog: Catalog, name: str) -> None:
    arithmetic, expected = KV_BYTES[name]
    assert arithmetic == expected
    assert catalog.model(name).kv_bytes_per_token == expected


def test_every_shipped_model_has_a_hand_checked_kv_figure(catalog: Catalog) -> None:
    assert set(catalog.models) == set(KV_BYTES)


def test_windowed_kv_is_capped(catalog: Catalog) -> None:
    mistral = catalog.model("mistral-7b-v0.1")
    assert mistral.kv_bytes(1000) == 1000 * 131_072
    assert mistral.kv_bytes(100_000) == 4096 * 131_072  # every layer keeps only its 4,096-token window
    gemma = catalog.model("gemma-2-9b")
    per_layer = 2 * 8 * 256 * 2
    # 21 global layers keep all 10,000 tokens; 21 local layers keep 4,096
    assert gemma.kv_bytes(10_000) == 21 * per_layer * 10_000 + 21 * per_layer * 4096
    oss = catalog.model("gpt-oss-120b")
    assert oss.kv_bytes(1000) == 18 * (2 * 8 * 64 * 2) * 1000 + 18 * (2 * 8 * 64 * 2) * 128
    ds = catalog.model("deepseek-v3")
    assert ds.kv_bytes(1000) == 1000 * 70_272


def test_moe_params(catalog: Catalog) -> None:
    ds = catalog.model("deepseek-v3")
    assert ds.is_moe and ds.active_params == 37e9 and ds.total_params == 671e9
    assert ds.weight_bytes == 671e9  # FP8: one byte per parameter
    assert ds.flops_per_token == 74e9
    assert not catalog.model("llama-3.1-8b").is_moe


def test_lookup_by_hf_id_any_case(catalog: Catalog) -> None:
    assert catalog.model("meta-llama/Llama-3.1-8B").name == "llama-3.1-8b"
    assert catalog.model("LLAMA-3.1-8B").name == "llama-3.1-8b"


def test_every_entry_has_a_source_and_a_date(catalog: Catalog) -> None:
    date = re.compile(r"^\d{4}-\d{2}(-\d{2})?$")
    entries = [*catalog.models.values(), *catalog.hardware.values(), *catalog.providers.values()]
    entries += [p for rules in catalog.providers.values() for p in rules.prices]
    for e in entries:
        assert e.source.strip(), e
        assert date.match(e.as_of), e


def test_required_providers(catalog: Catalog) -> None:
    for name in ("anthropic-5m", "anthropic-1h", "openai", "openai-24h", "gemini-explicit", "deepseek"):
        rules = catalog.provider(name)
        assert rules.price().input_usd_per_mtok > 0
    a5, a1 = catalog.provider("anthropic-5m"), catalog.provider("anthropic-1h")
    assert (a5.ttl_s, a5.write_multiplier, a5.refresh_on_hit) == (300, 1.25, True)
    assert (a1.ttl_s, a1.write_multiplier, a1.refresh_on_hit) == (3600, 2.0, True)
    assert catalog.provider("gemini-explicit").refresh_on_hit is False
    assert catalog.provider("openai").max_age_s == 3600


def test_data_files_ship_in_the_package() -> None:
    data = resources.files("kvtier.cost").joinpath("data")
    for name in ("models.toml", "hardware.toml", "providers.toml"):
        assert "schema = 1" in data.joinpath(name).read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------- user files
def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "mine.toml"
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_user_file_adds_and_overrides(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[models.tiny]
layers = 2
attention = "gqa"
kv_heads = 1
head_dim = 4
kv_dtype = "fp8"
total_params = 1e6
active_params = 1e6
bytes_per_param = 1
source = "made up for a test"
as_of = "2026-01-01"

[hardware."h100-sxm"]
gpu_usd_per_hour = 1.50
source = "our contract"
as_of = "2026-01-15"

[providers."anthropic-5m".prices."claude-sonnet-4.5"]
input_usd_per_mtok = 2.00
cached_input_usd_per_mtok = 0.20
output_usd_per_mtok = 10.0
source = "negotiated"
as_of = "2026-02-01"
""",
    )
    cat = load_catalog([path])
    assert cat.model("tiny").kv_bytes_per_token == 2 * 2 * 1 * 4 * 1
    h = cat.hardware_spec("h100-sxm")
    assert h.gpu_usd_per_hour == 1.50 and h.hbm_gb == 80.0 and h.source == "our contract"
    price = cat.provider("anthropic-5m").price("claude-sonnet-4.5")
    assert price.input_usd_per_mtok == 2.0 and price.source == "negotiated"
    assert cat.provider("anthropic-5m").price("claude-opus-4.1").input_usd_per_mtok == 15.0
    assert cat.files[-1] == path


BAD = [
    ('[models.x]\nlayers = 0\nsource = "s"\nas_of = "2026-01-01"\n', r"\[models.x\] field 'layers': expected an integer >= 1, got 0"),
    (
        '[models.x]\nlayers = 2\nattention = "mqa"\nsource = "s"\nas_of = "2026-01-01"\n',
        r"field 'attention': expected one of mha, gqa, mla, sliding, hybrid, got 'mqa'",
    ),
    (
        '[models.x]\nlayers = 2\nattention = "mla"\nkv_dtype = "bfloat16"\ntotal_params = 1e9\nactive_params = 1e9\n'
        'bytes_per_param = 2\nsource = "s"\nas_of = "2026-01-01"\n',
        r"field 'kv_latent_dim': missing \(required for attention = 'mla'\)",
    ),
    (
        '[models.x]\nlayers = 2\nattention = "gqa"\nkv_heads = 2\nhead_dim = 4\nkv_dtype = "bfloat16"\ntotal_params = 1e9\n'
        'active_params = 2e9\nbytes_per_param = 2\nsource = "s"\nas_of = "2026-01-01"\n',
        r"active_params 2e\+09 exceeds total_params 1e\+09",
    ),
    ('[hardware."h100-sxm"]\ngpu_usd_per_hour = -1\nsource = "s"\nas_of = "2026-01-01"\n', r"expected a finite number > 0, got -1"),
    ('[hardware."h100-sxm"]\ngpu_usd_per_hour = 2.0\n', r"field 'source': missing; every entry a user file adds or overrides"),
    ('[hardware."h100-sxm"]\ngpu_usd_per_hour = 2.0\nsource = "s"\nas_of = "last week"\n', r"expected a date YYYY-MM-DD"),
    ('[hardware."h100-sxm"]\ngpu_dollars = 2.0\nsource = "s"\nas_of = "2026-01-01"\n', r"unknown field 'gpu_dollars'"),
    ('[gpus.x]\nfoo = 1\n', r"unknown table \[gpus\]"),
    (
        '[providers.openai]\ndefault_model = "gpt-9"\nsource = "s"\nas_of = "2026-01-01"\n',
        r"field 'default_model': 'gpt-9' is not among its prices",
    ),
    (
        '[providers.deepseek]\nmax_age_s = 100.0\nrefresh_on_hit = false\nsource = "s"\nas_of = "2026-01-01"\n',
        r"field 'max_age_s': only with refresh_on_hit = true",
    ),
    (
        '[providers.deepseek.prices."deepseek-v3.2"]\ninput_usd_per_mtok = 0.1\ncached_input_usd_per_mtok = 0.5\n'
        'output_usd_per_mtok = 1\nsource = "s"\nas_of = "2026-01-01"\n',
        r"cached_input_usd_per_mtok 0.5 exceeds input_usd_per_mtok 0.1",
    ),
    ("this is = not toml =", r"not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_entries_name_file_entry_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(CatalogError, match=message) as info:
        load_catalog([path])
    assert path in str(info.value)


def test_missing_user_file() -> None:
    with pytest.raises(CatalogError, match="cannot read catalogue file"):
        load_catalog(["/nonexistent/kvtier-catalog.toml"])


def test_unknown_names_list_the_known_ones(catalog: Catalog) -> None:
    with pytest.raises(UnknownNameError, match=r"unknown model 'llama-9'.*known models are .*deepseek-v3.*llama-3.1-8b"):
        catalog.model("llama-9")
    with pytest.raises(UnknownNameError, match=r"unknown hardware 'tpu'.*h100-sxm"):
        catalog.hardware_spec("tpu")
    with pytest.raises(UnknownNameError, match=r"unknown provider 'anthropic'.*anthropic-1h, anthropic-5m"):
        catalog.provider("anthropic")
    with pytest.raises(UnknownNameError, match=r"claude-opus-4.1"):
        catalog.provider("anthropic-5m").price("claude-3-opus")
    assert isinstance(UnknownNameError("model", "x", []), ValueError)


def test_specs_are_frozen(catalog: Catalog) -> None:
    m: ModelSpec = catalog.model("llama-3.1-8b")
    with pytest.raises(AttributeError):
        m.layers = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        catalog.models["x"] = m  # read-only mapping
