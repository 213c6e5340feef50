"""Sizes and counts on kvtier's command line: one grammar for every option, and the way they are printed.

A value is a number followed by a unit::

    bytes    512MiB  32GiB  1.5G  2T  64KB  4096B  4096 bytes      K, M, G, T are binary (1024**n),
                                                                    with or without "iB" / "B"
    blocks   10000  10k blocks  2.5Mblocks                          k, M, G, T are decimal (1000**n)
    tokens   2048 tokens  1M tokens  1Mtokens                       k, M, G, T are decimal (1000**n)

Numbers are exact (``2.3M tokens`` is 2,300,000); a fraction of a byte is dropped (``1.1G``), a fraction of a
block or token is refused. A plain number (no letter at all) is in the option's own unit (bytes for ``kvtier
demo --capacity``, blocks for ``kvtier analyze --capacity``, tokens for ``--system-tokens``); a letter alone
(``512M``, ``32G``) always means bytes, so ``--capacity 512M`` is never 512 million blocks. Every option's help
text says which units it takes; a value in a unit it does not take, or not a whole number of its unit, is
refused with a message naming the option and what it expects (the command exits 2).

The argparse ``type=`` functions here (:func:`bytes_type`, :func:`count_type`, :func:`amount_list_type`, ...)
raise ``argparse.ArgumentTypeError``; :func:`parse_amount` raises :class:`kvtier.InvalidArgumentError`.
"""

from __future__ import annotations

import argparse
import math
import re
from fractions import Fraction
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from kvtier.errors import InvalidArgumentError

__all__ = [
    "Unit",
    "Amount",
    "parse_amount",
    "parse_duration",
    "parse_amount_list",
    "split_list",
    "argtype",
    "bytes_type",
    "tokens_type",
    "count_type",
    "amount_list_type",
    "tokens_list_type",
    "duration_type",
    "duration_or_never_type",
    "duration_list_type",
    "format_bytes",
    "plural",
]

Unit = Literal["bytes", "blocks", "tokens"]

_BINARY = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DECIMAL = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_GRAMMAR = re.compile(
    r"(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<mult>[kmgt]?)(?P<b>i?b)?\s*(?P<word>bytes?|blocks?|tokens?)?"
)
_EXAMPLES: dict[Unit, str] = {
    "bytes": "bytes such as 512MiB or 32G (K, M, G, T are binary)",
    "blocks": "blocks such as 10k blocks",
    "tokens": "tokens such as 1M tokens",
}
_UNLIMITED = ("inf", "unlimited", "none")
_DURATION = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_T = TypeVar("_T")


def _expected(units: Sequence[Unit], plain: Unit | None) -> str:
    kinds = " or ".join(_EXAMPLES[u] for u in units)
    return kinds + (f"; a plain number is {plain}" if plain is not None else "")


@dataclass(frozen=True)
class Amount:
    """A parsed value: a whole number of ``unit`` (``text`` is what was written)."""

    value: int
    unit: Unit
    text: str

    def __str__(self) -> str:
        return self.text

    def blocks(self, block_tokens: int, kv_bytes_per_token: int | None, option: str = "--capacity") -> int:
        """This amount in whole blocks of ``block_tokens`` tokens (bytes need ``kv_bytes_per_token``).

        Tokens and bytes are rounded down to whole blocks (only full blocks are cached).

        Raises
        ------
        kvtier.InvalidArgumentError
            Bytes without ``kv_bytes_per_token``, or less than one block.
        """
        if self.unit == "blocks":
            n = self.value
        elif self.unit == "tokens":
            n = self.value // block_tokens
        else:
            if kv_bytes_per_token is None:
                raise InvalidArgumentError(
                    f"{option} {self.text} is bytes ({format_bytes(self.value)}; K/M/G alone mean KiB/MiB/GiB): "
                    "give --model or --kv-bytes-per-token to turn bytes into blocks, or write a count such as "
                    "10k blocks or 1M tokens"
                )
            n = self.value // (kv_bytes_per_token * block_tokens)
        if n < 1:
            per = "" if kv_bytes_per_token is None else f", {format_bytes(kv_bytes_per_token * block_tokens)}"
            raise InvalidArgumentError(
                f"{option} {self.text} is less than one block ({block_tokens} tokens{per}); "
                "for a count write e.g. 10k blocks or 1M tokens"
            )
        return n


def parse_amount(
    text: str, *, units: Sequence[Unit], plain: Unit | None, option: str, minimum: int = 1
) -> Amount:
    """Parses ``text`` as one of ``units`` (the module docstring gives the grammar).

    ``plain`` is the unit of a number written without any letter (``None``: a unit is required).

    Raises
    ------
    kvtier.InvalidArgumentError
        Not in the grammar, a unit the option does not take, not a whole number, or below ``minimum``.
    """
    expected = _expected(units, plain)
    m = _GRAMMAR.fullmatch(text.strip().lower())
    if m is None:
        raise InvalidArgumentError(f"{option}: {text!r} is not {expected}")
    num, mult, b, word = m.group("num", "mult", "b", "word")
    unit: Unit | None
    if word is not None and not word.startswith("byte"):
        unit = "blocks" if word.startswith("block") else "tokens"
        if b:  # "10kib blocks"
            raise InvalidArgumentError(f"{option}: {text!r} mixes bytes and {unit}; expected {expected}")
        value = Fraction(num) * _DECIMAL[mult]
    elif word is not None or b or mult:
        if word is not None and b:  # "2MiB bytes"
            raise InvalidArgumentError(f"{option}: {text!r} names bytes twice; expected {expected}")
        unit, value = "bytes", Fraction(math.floor(Fraction(num) * _BINARY[mult]))  # 1.1G: whole bytes
    else:
        unit, value = plain, Fraction(num)
    if unit is None:
        raise InvalidArgumentError(f"{option}: {text!r} has no unit; expected {expected}")
    if unit not in units:
        raise InvalidArgumentError(f"{option}: {text!r} is {unit}; expected {expected}")
    if value.denominator != 1:
        raise InvalidArgumentError(f"{option}: {text!r} is not a whole number of {unit}")
    if value < minimum:
        raise InvalidArgumentError(f"{option}: {text!r} is below the minimum of {plural(minimum, unit[:-1])}")
    return Amount(int(value), unit, text.strip())


def parse_duration(text: str, option: str, *, zero_ok: bool = False) -> float:
    """``"30s"``, ``"5m"``, ``"1h"``, ``"1d"`` or a plain number of seconds, > 0 (>= 0 with ``zero_ok``)."""
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)", text.strip().lower())
    if not m or (float(m.group(1)) < 0 if zero_ok else float(m.group(1)) <= 0):
        raise InvalidArgumentError(
            f"{option}: {text!r} is not a duration {'>=' if zero_ok else '>'} 0 (e.g. 30s, 5m, 1h, 6h; plain: seconds)"
        )
    return float(m.group(1)) * _DURATION[m.group(2)]


# ------------------------------------------------------------------------------------------- argparse types
def argtype(parse: Callable[[str], _T], name: str) -> Callable[[str], _T]:
    """An argparse ``type=`` from ``parse``, whose :class:`InvalidArgumentError` becomes argparse's exit 2."""

    def convert(text: str) -> _T:
        try:
            return parse(text)
        except InvalidArgumentError as e:  # argparse prefixes "argument --option:"
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None

    convert.__name__ = name  # argparse names the type in "invalid <name> value" messages
    return convert


def bytes_type(option: str, minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: bytes (``512MiB``, ``2G``, or a plain number of bytes) -> int."""
    return argtype(
        lambda t: parse_amount(t, units=("bytes",), plain="bytes", option=option, minimum=minimum).value, "size"
    )


def tokens_type(option: str, minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: tokens (``2048``, ``2k tokens``) -> int."""
    return argtype(
        lambda t: parse_amount(t, units=("tokens",), plain="tokens", option=option, minimum=minimum).value, "tokens"
    )


def count_type(option: str, minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: a plain whole number >= ``minimum`` (sessions, steps, examples)."""

    def parse(text: str) -> int:
        t = text.strip()
        if not t.isdigit() or int(t) < minimum:
            raise InvalidArgumentError(f"{option}: {text!r} is not a whole number >= {minimum}")
        return int(t)

    return argtype(parse, "count")


def split_list(text: str, option: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; an empty list or item is refused naming ``option``."""
    items = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in items):
        raise InvalidArgumentError(f"{option}: expected a comma-separated list, got {text!r}")
    return items


def parse_amount_list(
    text: str, *, units: Sequence[Unit], plain: Unit | None, option: str, unlimited: bool = False
) -> list[Amount | None]:
    """A comma-separated list of amounts; ``inf``/``unlimited``/``none`` -> ``None`` where ``unlimited``."""
    out: list[Amount | None] = []
    for item in split_list(text, option):
        if unlimited and item.lower() in _UNLIMITED:
            out.append(None)
        else:
            out.append(parse_amount(item, units=units, plain=plain, option=option))
    return out


def amount_list_type(
    option: str, units: Sequence[Unit], plain: Unit | None, unlimited: bool = False
) -> Callable[[str], list[Amount | None]]:
    """An argparse type: a comma-separated list of amounts (see :func:`parse_amount_list`)."""
    return argtype(
        lambda t: parse_amount_list(t, units=units, plain=plain, option=option, unlimited=unlimited), "list"
    )


def tokens_list_type(option: str) -> Callable[[str], list[int]]:
    """An argparse type: a comma-separated list of token counts (``16,64`` or ``16 tokens,64 tokens``)."""
    return argtype(
        lambda t: [
            parse_amount(i, units=("tokens",), plain="tokens", option=option).value for i in split_list(t, option)
        ],
        "list",
    )


def duration_type(option: str, *, zero_ok: bool = False) -> Callable[[str], float]:
    """An argparse type: a duration (``30``, ``30s``, ``5m``, ``1h``) -> seconds."""
    return argtype(lambda t: parse_duration(t, option, zero_ok=zero_ok), "duration")


def duration_or_never_type(option: str) -> Callable[[str], float | None]:
    """An argparse type: a duration > 0 -> seconds, or ``none`` / ``inf`` / ``never`` -> ``None``."""

    def parse(text: str) -> float | None:
        if text.strip().lower() in ("none", "inf", "never"):
            return None
        return parse_duration(text, option)

    return argtype(parse, "duration")


def duration_list_type(option: str) -> Callable[[str], list[float]]:
    """An argparse type: a comma-separated list of durations (``5m,1h``)."""
    return argtype(lambda t: [parse_duration(i, option) for i in split_list(t, option)], "list")


# ------------------------------------------------------------------------------------------- printing
def format_bytes(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1: ``1 MiB``, ``1.5 GiB``, ``356 MiB``, ``512 B``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            v = n / size
            break
    else:
        return f"{n:.0f} B"
    if v == int(v) or v >= 100:
        return f"{v:.0f} {unit}"
    return f"{v:.2f} {unit}" if v < 10 else f"{v:.1f} {unit}"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 replay"``, ``"2 replays"`` (``many`` for irregular plurals)."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"
