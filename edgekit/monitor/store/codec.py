"""How a raw telemetry window is kept: the message as received, deflated against a preset dictionary.

A window is ~1.6 kB of JSON, mostly the same keys in the same order (``"counts"``, ``"under"``, …
once per feature). zlib with a preset dictionary of that structure brings it to ~370 bytes
(plain zlib: ~650), losslessly, in ~40 µs. The first byte names the dictionary, so a later one can
be added without rewriting stored rows. Rows written before this format hold the JSON text itself
(``str``), and :func:`unpack` takes both.
"""

from __future__ import annotations

import zlib

__all__ = ["pack", "unpack"]

#: the structure of a telemetry window, as the agent writes it (never change it: add a new one with a new tag)
_DICT_1 = (
    b'{"name":"x[1]","n":600,"counts":[0,1,2,3,4,5,6,7,8,9],"under":0,"over":0,"nan":0,"min":-0.1,"max":0.1,"mean":0.0,"std":1.0},'
    b'{"name":"x[2]","n":600,"counts":[10,20,30,40,50,60,70,80,90],"under":1,"over":1,"nan":0,"min":null,"max":null,"mean":null,"std":null},'
    b'"features_dropped":0,"samples":600,"dropped":0,"feedback":{"accuracy":{"1.0.0":{"labelled":0,"correct":0}},"rejected":{},"expired":0},'
    b'"feedback":null,"outbox":0}'
    b'{"v":1,"type":"telemetry","device":"dev-","seq":1,"boot":1,"ts":1700000000.0,"model":{"name":"model","version":"1.0.0"},'
    b'"window":{"start":1700000000.0,"end":1700000000.0},"requests":10,"errors":{},"latency_ms":{"count":10,"p50":1.0,"p95":1.0,'
    b'"p99":1.0,"max":1.0,"mean":1.0},"features":[{"name":"x[0]","n":600,"counts":['
)
_DICTS = {1: _DICT_1}
_LATEST = 1


def pack(payload: bytes) -> bytes:
    """The stored form of a raw message: one tag byte, then the deflated bytes."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=_DICTS[_LATEST])
    return bytes([_LATEST]) + c.compress(payload) + c.flush()


def unpack(stored: bytes | str) -> bytes:
    """The message as received, from :func:`pack`'s output or a row of the earlier plain-JSON format."""
    if isinstance(stored, str):
        return stored.encode()
    if stored[:1] == b"{":  # plain JSON kept as bytes
        return bytes(stored)
    zdict = _DICTS.get(stored[0])
    if zdict is None:
        raise ValueError(f"stored telemetry has format {stored[0]}; this edgekit reads {', '.join(map(str, _DICTS))}: upgrade edgekit")
    d = zlib.decompressobj(-15, zdict=zdict)
    return d.decompress(bytes(stored[1:])) + d.flush()
