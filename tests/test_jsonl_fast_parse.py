"""The JSONL reader parses with orjson where it gives what ``json`` gives, else with ``json`` and every check.

Oracle: the same shard read with the fast path turned off (every line through ``json.loads`` and the strict
checks, the reader before orjson) must yield equal items: documents (text, metadata, provenance) and
rejections (reason, detail) alike, over hand-picked edge cases and thousands of randomly damaged lines.
"""

from __future__ import annotations

import json
import math
import random
import struct

import pytest

from elm_data.sources import readers_jsonl
from elm_data.sources.document import Document
from elm_data.sources.readers import read_shard

EDGE_LINES = [
    b'{"text": "plain ascii", "id": 1}',
    b'{"text": "caf\xc3\xa9 \\u00e9 \\ud83d\\ude00 pair", "meta": {"lang": "fr"}}',
    b'{"text": "lone \\ud800 high"}',
    b'{"text": "lone \\udc00 low"}',
    b'{"text": "ok", "meta": {"k": "\\ud800\\u0041"}}',
    b'{"text": "x", "big": 123456789012345678901234567890}',
    b'{"text": "x", "neg": -9223372036854775809}',
    b'{"text": "x", "u64": 18446744073709551615}',
    b'{"text": "x", "f": 0.1, "g": [1.5e300, -0.0]}',
    b'{"text": "x", "inf": 1e400}',
    b'{"text": "x", "nan": NaN}',
    b'{"text": "x", "i": Infinity}',
    b'{"text": "dup", "text": "second"}',
    b'{"text": "x\tcontrol"}',
    b'{"text": "bad \xff byte"}',
    b'{"text": "encoded surrogate \xed\xa0\x80"}',
    b'{"text": "overlong \xc0\x80"}',
    b'{"text": 5}',
    b'{"text": null}',
    b'{"other": "no text"}',
    b"[1, 2]",
    b'"a string"',
    b"",
    b"   ",
    b'{"text": "trailing comma",}',
    b'{"text": "x"} {"text": "y"}',
    b'{"text": "nul \\u0000 escape", "n": null, "t": true}',
    b'{"text": "deep", "m": ' + b"[" * 2000 + b"]" * 2000 + b"}",
    b'{"text": "x", "nested": {"a": [1, {"b": 2.5}]}}',
    b'{"\\u00e9": 1, "text": "key escape"}',
]


def _float_literal(rng: random.Random) -> float:
    """A float from a random literal: any double's bits, or a long mantissa with an extreme exponent."""
    if rng.random() < 0.5:
        value = struct.unpack("d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        return value if math.isfinite(value) else -0.0
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 25)))
    return float(f"{rng.choice('-+')[:1].strip('+')}0.{digits}e{rng.randrange(-300, 300)}")


def _random_record(rng: random.Random) -> dict:
    alphabet = 'abc xyz\u00e9\u4e2d\U0001f600\n\t"\\/\u2028'
    text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
    wide = rng.random() < 0.1
    record: dict = {"text": text, "id": rng.randrange(-(2**70), 2**70) if wide else rng.randrange(2**62)}
    if rng.random() < 0.3:
        record["meta"] = {"score": _float_literal(rng), "tags": [rng.randrange(10) for _ in range(3)]}
    return record


def _damaged(line: bytes, rng: random.Random) -> bytes:
    b = bytearray(line)
    for _ in range(rng.randrange(1, 3)):
        at = rng.randrange(len(b) + 1)
        kind = rng.random()
        if kind < 0.4 and at < len(b):
            b[at] = rng.choice(b'\\"{}[],:0123456789eE.-+ntfu\x00\x7f\x80\xc3\xed\xff')
        elif kind < 0.7:
            b[at:at] = rng.choice([b"\\ud800", b"\\udfff", b"\\u", b"\xed\xa0\x80", b"1e999", b",", b"\xc3"])
        elif at < len(b):
            del b[at]
    return bytes(b).replace(b"\n", b" ")


def _lines() -> list[bytes]:
    rng = random.Random(25)
    lines = list(EDGE_LINES)
    for k in range(3000):
        record = _random_record(rng)
        line = json.dumps(record, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        lines.append(_damaged(line, rng) if k % 2 else line)
    return lines


def _read(path) -> list:
    return list(read_shard(str(path), "redpajama", "c4"))


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("fast") / "c4_part-00000.jsonl"
    path.write_bytes(b"\n".join(_lines()) + b"\n")
    return path


def test_the_fast_parse_yields_what_the_standard_parser_yields(shard, monkeypatch):
    taken: list[bool] = []
    real = readers_jsonl.fast_record

    def counting(line: bytes):
        record = real(line)
        taken.append(record is not None)
        if record is not None:  # the fast path's object is json.loads' own (repr: -0.0, every float bit)
            assert repr(record) == repr(json.loads(line.decode("utf-8"))), line[:80]
        return record

    monkeypatch.setattr(readers_jsonl, "fast_record", counting)
    fast = _read(shard)
    monkeypatch.setattr(readers_jsonl, "fast_record", lambda line: None)
    strict = _read(shard)
    assert len(fast) == len(strict) == len(_lines())
    for a, b in zip(fast, strict, strict=True):
        assert a == b
    # both paths were exercised, on documents and rejections
    assert 0.2 < sum(taken) / len(taken) < 0.8
    assert sum(isinstance(i, Document) for i in fast) > 1000
    assert sum(not isinstance(i, Document) for i in fast) > 300


@pytest.mark.parametrize("depth", [255, 256, 300, 2000, 50_000])
def test_deep_nesting_is_one_malformed_json_rejection_not_a_crash(tmp_path, depth):
    """Python's parser raises RecursionError (no ValueError) near 1,000 levels: the reader used to crash on
    such a line. Now beyond ``MAX_JSON_DEPTH`` (the record itself is level 1) it is one rejection, either way
    the line is parsed, and the lines after it are read."""
    deep = b'{"text": "deep", "m": ' + b"[" * depth + b"]" * depth + b"}"
    path = tmp_path / "c4_part-00000.jsonl"
    path.write_bytes(deep + b'\n{"text": "after"}\n')
    items = _read(path)
    assert isinstance(items[1], Document) and items[1].text == "after"
    if depth + 1 <= readers_jsonl.MAX_JSON_DEPTH:
        assert isinstance(items[0], Document) and items[0].text == "deep"
    else:
        assert (items[0].reason, items[0].detail) == ("malformed_json", readers_jsonl.TOO_DEEP)


def test_float_literals_are_parsed_as_python_parses_them():
    """The fast path keeps orjson's floats (no 19-digit run in the line): bit for bit ``float``'s, over
    50,000 literals of random doubles and of long mantissas with extreme exponents."""
    rng = random.Random(7)
    for _ in range(50_000):
        literal = (
            repr(_float_literal(rng))
            if rng.random() < 0.7
            else f"{rng.randrange(10**15)}.{rng.randrange(10**6)}e{rng.randrange(-320, 300)}"
        )
        line = b'{"text": "t", "x": ' + literal.encode() + b"}"
        record = readers_jsonl.fast_record(line)
        if record is None:  # out of range: the standard parser decides
            continue
        assert struct.pack("d", record["x"]) == struct.pack("d", float(literal)), literal


def test_a_wide_integer_is_never_read_as_a_float():
    """orjson turns integers beyond 64 bits into floats: such a line must take the standard path."""
    line = b'{"text": "x", "meta": {"id": 123456789012345678901234567890}}'
    assert readers_jsonl.fast_record(line) is None
    assert readers_jsonl.fast_record(b'{"text": "x", "id": 18446744073709551615}') == {
        "text": "x",
        "id": 18446744073709551615,
    }
    # a float beside a wide integer: the standard parser, which keeps the integer exact
    line = b'{"text": "x", "s": 0.5, "id": 123456789012345678901234567890}'
    assert readers_jsonl.fast_record(line) is None
    assert readers_jsonl.fast_record(b'{"text": "x", "s": 0.5, "id": 12345}') == {
        "text": "x",
        "s": 0.5,
        "id": 12345,
    }
