"""How a raw telemetry window is kept: the message as received, its digits apart from its structure.

A window is ~1.6 kB of JSON: the same keys in the same order (``"counts"``, ``"under"``, … once
per feature) around ~500 digits that carry nearly all of its information (bin counts, 6-digit
statistics). Deflate with a preset dictionary (format 1, ~450 bytes) spends much of its output on
the seams between the two: every number breaks a match, and a digit costs it ~4.5 bits. Format 2
keeps them apart:

- the *skeleton*: the text with every digit replaced by ``0`` (so a skeleton's ``0`` stands for a
  digit and nothing else), deflated against a preset dictionary of a window's skeleton (the rest of
  a message matches its own first feature): ~50 bytes;
- the digits in order, Huffman-coded alone (deflate without matches: ~3.4 bits a digit, nothing
  else in their code table): ~225 bytes.

~280 bytes a window, byte-exact by construction (nothing is parsed: any payload goes through), in
~45 µs. The first byte names the format, so a later one can be added without rewriting stored
rows; :func:`unpack` reads every format, and rows written before the first one hold the JSON text
itself (``str``).
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["pack", "unpack"]

#: format 1: the structure of a telemetry window, as the agent writes it (never change it: add a new one with a new tag)
_DICT_1 = (
    b'{"name":"x[1]","n":600,"counts":[0,1,2,3,4,5,6,7,8,9],"under":0,"over":0,"nan":0,"min":-0.1,"max":0.1,"mean":0.0,"std":1.0},'
    b'{"name":"x[2]","n":600,"counts":[10,20,30,40,50,60,70,80,90],"under":1,"over":1,"nan":0,"min":null,"max":null,"mean":null,"std":null},'
    b'"features_dropped":0,"samples":600,"dropped":0,"feedback":{"accuracy":{"1.0.0":{"labelled":0,"correct":0}},"rejected":{},"expired":0},'
    b'"feedback":null,"outbox":0}'
    b'{"v":1,"type":"telemetry","device":"dev-","seq":1,"boot":1,"ts":1700000000.0,"model":{"name":"model","version":"1.0.0"},'
    b'"window":{"start":1700000000.0,"end":1700000000.0},"requests":10,"errors":{},"latency_ms":{"count":10,"p50":1.0,"p95":1.0,'
    b'"p99":1.0,"max":1.0,"mean":1.0},"features":[{"name":"x[0]","n":600,"counts":['
)
#: format 2: a window's skeleton (digit runs as their lengths), the likeliest parts last (never change it, as above)
#: format 2: the skeleton of a window (:func:`_skeleton` of this text), the likeliest parts last (never change it, as above)
_DICT_2 = (
    b'"feedback":{"accuracy":{"1.0.0":{"labelled":12,"correct":11}},"rejected":{},"expired":0},"agent_version":"1.0.0",'
    b'"runtime":{"onnxruntime":"1.22.1"},"runtime_check":{"status":"ok","runtime":"onnxruntime 1.22.1","validated":"onnxruntime 1.22.1"},'
    b'"min":null,"max":null,"mean":null,"std":null}'
    b'],"features_dropped":0,"samples":600,"dropped":0,"feedback":null,"outbox":0,"agent_version":"","runtime":{},"runtime_check":null}'
    b'},{"name":"x[1]","n":600,"counts":[56,70,74,40,72,51,60,61,52,63],"under":1,"over":0,"nan":0,"min":-3.58871,"max":1.89547,'
    b'"mean":-0.975574,"std":0.803463},'
    b'{"v":1,"type":"telemetry","device":"dev-00001","seq":17,"boot":1,"ts":1765000060.0,"model":{"name":"model","version":"1.0.0"},'
    b'"window":{"start":1765000000.0,"end":1765000060.0},"requests":12,"errors":{},"latency_ms":{"count":12,"p50":0.958365,'
    b'"p95":1.40142,"p99":1.40142,"max":1.42723,"mean":1.02935},"features":[{"name":"x[0]","n":600,"counts":[56,70,74,40,72,51,60,61,'
    b'52,63],"under":1,"over":0,"nan":0,"min":-3.58871,"max":-0.318415,"mean":-1.99948,"std":0.519356},{"name":"'
)
_DIGITS = b"0123456789"
_ZEROED = bytes.maketrans(_DIGITS, b"0" * 10)  # every digit -> "0": the skeleton
_NOT_DIGITS = bytes(sorted(set(range(256)) - set(_DIGITS)))


def _skeleton(text: bytes) -> bytes:
    return text.translate(_ZEROED)


_DICTS = {1: _DICT_1, 2: _skeleton(_DICT_2)}
_LATEST = 2


def pack(payload: bytes) -> bytes:
    """The stored form of a raw message: one tag byte, then the format's bytes (see the module docs)."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=_DICTS[_LATEST])
    head = c.compress(_skeleton(payload)) + c.flush()
    d = zlib.compressobj(9, zlib.DEFLATED, -9, 5, zlib.Z_HUFFMAN_ONLY)  # no matches: a small window; room for 2,048 digits a block
    return bytes([_LATEST]) + _varint(len(head)) + head + d.compress(payload.translate(None, _NOT_DIGITS)) + d.flush()


def unpack(stored: bytes | str) -> bytes:
    """The message as received, from :func:`pack`'s output (any format) or a row of the earlier plain-JSON format."""
    if isinstance(stored, str):
        return stored.encode()
    data = bytes(stored)
    if data[:1] == b"{":  # plain JSON kept as bytes
        return data
    zdict = _DICTS.get(data[0]) if data else None
    if zdict is None:
        raise ValueError(f"stored telemetry has format {data[:1].hex() or 'empty'}; this edgekit reads formats "
                         f"{', '.join(map(str, _DICTS))}: upgrade edgekit")
    if data[0] == 1:
        d = zlib.decompressobj(-15, zdict=zdict)
        return d.decompress(data[1:]) + d.flush()
    size, at = _unvarint(data, 1)
    d = zlib.decompressobj(-15, zdict=zdict)
    text = np.frombuffer(d.decompress(data[at:at + size]) + d.flush(), dtype=np.uint8).copy()
    where = text == ord("0")  # every "0" of a skeleton stands for a digit (it has no other)
    d = zlib.decompressobj(-15)
    digits = np.frombuffer(d.decompress(data[at + size:]) + d.flush(), dtype=np.uint8)
    n = int(where.sum())
    if n != len(digits):
        raise ValueError(f"stored telemetry (format 2) is damaged: its skeleton has {n} digits, its digits {len(digits)}")
    text[where] = digits
    return bytes(text.tobytes())


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _unvarint(data: bytes, at: int) -> tuple[int, int]:
    """(value, offset after it) of the varint at ``at``."""
    n = shift = 0
    while True:
        b = data[at]
        n |= (b & 0x7F) << shift
        at += 1
        if b < 0x80:
            return n, at
        shift += 7
