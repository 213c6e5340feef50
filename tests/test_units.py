"""kvtier.units: the one grammar of sizes and counts on the command line, and how sizes are printed."""

from __future__ import annotations

import argparse

import pytest

from kvtier.errors import InvalidArgumentError
from kvtier.units import (
    Amount,
    bytes_type,
    count_type,
    format_bytes,
    parse_amount,
    parse_amount_list,
    parse_duration,
    plural,
    tokens_list_type,
)

ALL = ("bytes", "blocks", "tokens")


@pytest.mark.parametrize(
    ("text", "value", "unit"),
    [
        ("512MiB", 512 * 2**20, "bytes"),
        ("32GiB", 32 * 2**30, "bytes"),
        ("32G", 32 * 2**30, "bytes"),  # a letter alone is bytes, binary
        ("512m", 512 * 2**20, "bytes"),
        ("1.5GiB", 3 * 2**29, "bytes"),
        ("1.1G", 1_181_116_006, "bytes"),  # 1.1 x 2**30 = 1,181,116,006.4: whole bytes
        ("0.3K", 307, "bytes"),
        ("64KB", 64 * 1024, "bytes"),
        ("2T", 2 * 2**40, "bytes"),
        ("4096B", 4096, "bytes"),
        ("4096 bytes", 4096, "bytes"),
        ("10000", 10_000, "blocks"),  # plain: the option's unit (blocks here)
        ("10k blocks", 10_000, "blocks"),  # counts: decimal
        ("2.5Mblocks", 2_500_000, "blocks"),
        ("2.3M tokens", 2_300_000, "tokens"),  # exact: 2.3 x 1e6 in floats is 2,299,999.999...
        ("1 block", 1, "blocks"),
        ("1M tokens", 1_000_000, "tokens"),
        ("1Mtokens", 1_000_000, "tokens"),
        (" 2048 Tokens ", 2048, "tokens"),
    ],
)
def test_grammar(text: str, value: int, unit: str) -> None:
    a = parse_amount(text, units=ALL, plain="blocks", option="--capacity")
    assert (a.value, a.unit, a.text) == (value, unit, text.strip())


@pytest.mark.parametrize(
    ("text", "units", "plain", "message"),
    [
        ("512M", ("blocks", "tokens"), "blocks", "'512M' is bytes; expected blocks such as 10k blocks or tokens"),
        ("10k blocks", ("bytes",), "bytes", "'10k blocks' is blocks; expected bytes such as 512MiB"),
        ("2k tokens", ("bytes",), "bytes", "is tokens; expected bytes"),
        ("1.5", ALL, "blocks", "'1.5' is not a whole number of blocks"),
        ("0.0001k tokens", ALL, "blocks", "'0.0001k tokens' is not a whole number of tokens"),
        ("0", ALL, "blocks", "'0' is below the minimum of 1 block"),
        ("12x", ALL, "blocks", "'12x' is not bytes such as 512MiB or 32G (K, M, G, T are binary) or blocks"),
        ("-3", ALL, "blocks", "'-3' is not"),
        ("k", ALL, "blocks", "'k' is not"),
        ("", ALL, "blocks", "'' is not"),
        ("10kib blocks", ALL, "blocks", "mixes bytes and blocks"),
        ("2MiB bytes", ALL, "blocks", "names bytes twice"),
        ("100", ("bytes", "blocks"), None, "'100' has no unit"),
    ],
)
def test_bad_values_name_the_option_and_what_it_expects(
    text: str, units: tuple[str, ...], plain: str | None, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match="^--opt: ") as e:
        parse_amount(text, units=units, plain=plain, option="--opt")  # type: ignore[arg-type]
    assert message in str(e.value)


def test_blocks_from_each_unit() -> None:
    blocks = parse_amount("100", units=ALL, plain="blocks", option="--capacity")
    tokens = parse_amount("1M tokens", units=ALL, plain="blocks", option="--capacity")
    size = parse_amount("1GiB", units=ALL, plain="blocks", option="--capacity")
    assert blocks.blocks(512, None) == 100
    assert tokens.blocks(512, None) == 1953  # whole blocks: 1,000,000 / 512 rounded down
    assert size.blocks(16, 32_768) == 2048  # 1 GiB / (16 tokens x 32 KiB)
    with pytest.raises(InvalidArgumentError, match="give --model or --kv-bytes-per-token"):
        size.blocks(16, None)
    with pytest.raises(InvalidArgumentError, match=r"less than one block \(16 tokens, 512 KiB\)"):
        Amount(1024, "bytes", "1K").blocks(16, 32_768)
    with pytest.raises(InvalidArgumentError, match="less than one block"):
        Amount(100, "tokens", "100 tokens").blocks(512, None)


def test_lists_and_unlimited() -> None:
    got = parse_amount_list("1000, 10k blocks,1M tokens,32G,inf", units=ALL, plain="blocks", option="--c",
                            unlimited=True)
    assert [None if a is None else (a.value, a.unit) for a in got] == [
        (1000, "blocks"), (10_000, "blocks"), (10**6, "tokens"), (32 << 30, "bytes"), None,
    ]
    for bad in ("", "1,,2", "inf"):  # "inf" only where the option allows unlimited
        with pytest.raises(InvalidArgumentError, match="--c"):
            parse_amount_list(bad, units=ALL, plain="blocks", option="--c")


def test_durations() -> None:
    assert [parse_duration(t, "--ttl") for t in ("30s", "5m", "1h", "6h", "1d", "90", "1.5h")] == [
        30, 300, 3600, 21600, 86400, 90, 5400,
    ]
    for bad in ("0", "5x", "m", "-1m", "5 minutes"):
        with pytest.raises(InvalidArgumentError, match="--ttl: .* is not a duration"):
            parse_duration(bad, "--ttl")


def test_cost_durations_through_the_same_parser(capsys: pytest.CaptureFixture[str]) -> None:
    from kvtier.cli import build_parser

    p = build_parser()
    ns = p.parse_args(["cost", "--kv-ttl", "1h", "--inflight-s", "0"])
    assert (ns.kv_ttl, ns.inflight_s) == (3600.0, 0.0)
    assert p.parse_args(["cost", "--kv-ttl", "never"]).kv_ttl is None
    assert p.parse_args(["cost"]).kv_ttl == 3600.0
    for args, message in (
        (["--kv-ttl", "0"], "argument --kv-ttl: '0' is not a duration > 0"),
        (["--inflight-s=-1s"], "argument --inflight-s: '-1s' is not a duration >= 0"),
    ):
        with pytest.raises(SystemExit) as e:
            p.parse_args(["cost", *args])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_argparse_types_exit_2_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--capacity", type=bytes_type("--capacity"))
    p.add_argument("--sessions", type=count_type("--sessions"))
    p.add_argument("--block-size", type=tokens_list_type("--block-size"))
    ns = p.parse_args(["--capacity", "512MiB", "--sessions", "3", "--block-size", "16,64 tokens"])
    assert (ns.capacity, ns.sessions, ns.block_size) == (512 << 20, 3, [16, 64])
    for args, message in (
        (["--capacity", "10k blocks"], "argument --capacity: '10k blocks' is blocks; expected bytes"),
        (["--sessions", "0"], "argument --sessions: '0' is not a whole number >= 1"),
        (["--block-size", "16,0"], "argument --block-size: '0' is below the minimum of 1 token"),
    ):
        with pytest.raises(SystemExit) as e:
            p.parse_args(args)
        assert e.value.code == 2
        assert message in capsys.readouterr().err


def test_format_bytes_and_plural() -> None:
    assert [format_bytes(n) for n in (512, 1 << 20, 3 << 29, 356 << 20, 4 << 30, 1 << 10, 1_500_000, 0)] == [
        "512 B", "1 MiB", "1.50 GiB", "356 MiB", "4 GiB", "1 KiB", "1.43 MiB", "0 B",
    ]
    assert [plural(1, "replay"), plural(2, "replay"), plural(1200, "block")] == ["1 replay", "2 replays", "1,200 blocks"]
