"""Getting an update's bytes onto the device: MQTT chunks through the broker, or HTTP(S).

**MQTT chunks** (``<prefix>/<device>/ota/<job>/chunk/<n>``, QoS 1, *retained* until the job ends,
so a device that reconnects or restarts re-subscribes and gets what it is missing). Payload::

    b"EKC1" | uint32 big-endian header length | JSON header | data
    header = {"job", "n", "count", "file", "offset", "size", "sha256"}   # sha256 of data

Chunk ``n`` must be exactly slot ``n`` of :func:`device_agent.ota.job.chunk_plan` (same file, offset
and size) and ``count`` the plan's length: a truncated, oversized, misplaced or foreign chunk ends
the job (REJECTED) rather than being patched over. Chunks may *arrive* in any order (retained
messages are replayed in broker order); each is written at its offset and recorded, and a file is
complete only when all its chunks are. Progress survives restarts: data is fsync'ed before its
chunk number is appended to ``.chunks`` in the download directory.

**HTTP(S)**: ``urllib`` (stdlib), streamed to ``<file>.part``, resumed with ``Range`` after a
restart, never more than the signed size is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from device_agent.contract.errors import OtaError
from device_agent.contract.files import open_private
from device_agent.contract.types import JsonDict
from device_agent.ota.faults import crashpoint
from device_agent.ota.job import ArtifactRef, chunk_plan

__all__ = ["CHUNK_MAGIC", "ChunkReceiver", "decode_chunk", "encode_chunk", "http_download"]

CHUNK_MAGIC = b"EKC1"
_HEADER_MAX = 4096
PROGRESS = ".chunks"


def encode_chunk(*, job: str, n: int, count: int, file: str, offset: int, data: bytes) -> bytes:
    header = json.dumps({"job": job, "n": n, "count": count, "file": file, "offset": offset, "size": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()}, separators=(",", ":")).encode()
    return CHUNK_MAGIC + struct.pack(">I", len(header)) + header + data


def decode_chunk(payload: bytes) -> tuple[JsonDict, bytes]:
    """(header, data); OtaError ``bad_chunk`` if the framing or the data's sha256 is wrong."""
    if len(payload) < 8 or payload[:4] != CHUNK_MAGIC:
        raise OtaError("a chunk does not start with the EKC1 header; it was not sent by `edgekit fleet deploy`", reason="bad_chunk")
    (hlen,) = struct.unpack(">I", payload[4:8])
    if hlen > _HEADER_MAX or 8 + hlen > len(payload):
        raise OtaError(f"a chunk header claims {hlen} bytes; the payload is {len(payload)} (truncated chunk)", reason="bad_chunk")
    try:
        header = json.loads(payload[8:8 + hlen])
        size, sha = int(header["size"]), str(header["sha256"])
        int(header["n"]), int(header["count"]), int(header["offset"]), str(header["file"])
    except (ValueError, KeyError, TypeError):
        raise OtaError("a chunk header is not valid JSON with n, count, file, offset, size, sha256", reason="bad_chunk") from None
    data = payload[8 + hlen:]
    if len(data) != size:
        raise OtaError(f"chunk {header['n']} of {header['file']} carries {len(data)} bytes; its header says {size} (truncated in transit)",
                       reason="bad_chunk")
    if hashlib.sha256(data).hexdigest() != sha:
        raise OtaError(f"chunk {header['n']} of {header['file']} does not match its sha256 (corrupted in transit)", reason="bad_chunk")
    return header, data


class ChunkReceiver:
    """Assembles one job's chunks in its download directory. Thread-safe (MQTT thread writes,
    the updater thread waits)."""

    def __init__(self, job: str, directory: Path, artifacts: tuple[ArtifactRef, ...], chunk_size: int) -> None:
        self.job = job
        self.dir = directory
        self.plan = chunk_plan(artifacts, chunk_size)
        self.count = len(self.plan)
        self._lock = threading.Lock()
        self.done = threading.Event()
        self.error: OtaError | None = None
        self.have: set[int] = set()
        progress = self.dir / PROGRESS
        if progress.exists():
            for line in progress.read_text().split():
                if line.isdigit() and int(line) < self.count:
                    self.have.add(int(line))
        for a in artifacts:
            p = self.dir / (a.file + ".part")
            if not p.exists():
                p.touch()
        if len(self.have) == self.count:
            self.done.set()

    @property
    def progress(self) -> tuple[int, int]:
        return len(self.have), self.count

    def fail(self, error: OtaError) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
        self.done.set()

    def add(self, n: int, payload: bytes) -> bool:
        """Take chunk ``n`` (from the topic). Returns True when it was new. Errors end the download."""
        try:
            header, data = decode_chunk(payload)
            if header["job"] != self.job or int(header["n"]) != n:
                raise OtaError(f"chunk on topic number {n} says it is chunk {header['n']} of job {header['job']} "
                               "(misplaced or replayed from another job)", reason="chunk_order")
            if int(header["count"]) != self.count or not 0 <= n < self.count:
                raise OtaError(f"chunk {n} belongs to a plan of {header['count']} chunks; this job has {self.count} "
                               "(the artifacts or the chunk size differ from the job document)", reason="chunk_order")
            file, offset, size = self.plan[n]
            if header["file"] != file or int(header["offset"]) != offset:
                raise OtaError(f"chunk {n} is for {header['file']} at offset {header['offset']}; chunk {n} of this job is {file} at "
                               f"offset {offset} (out of order)", reason="chunk_order")
            if len(data) != size:
                kind = "oversized" if len(data) > size else "truncated"
                raise OtaError(f"chunk {n} of {file} has {len(data)} bytes; the plan says {size} ({kind})",
                               reason="oversized" if len(data) > size else "bad_chunk")
        except OtaError as e:
            self.fail(e)
            raise
        with self._lock:
            if n in self.have or self.error is not None:
                return False
            fd = os.open(self.dir / (file + ".part"), os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.pwrite(fd, data, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
            crashpoint("chunk.written")
            with os.fdopen(open_private(self.dir / PROGRESS, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "a") as f:
                f.write(f"{n}\n")
                f.flush()
                os.fsync(f.fileno())
            self.have.add(n)
            if len(self.have) == self.count:
                self.done.set()
        return True

    def finish(self) -> None:
        """Rename every complete ``.part`` to its name (verification follows)."""
        for file in dict.fromkeys(f for f, _, _ in self.plan):
            part = self.dir / (file + ".part")
            if part.exists():
                os.replace(part, self.dir / file)
        (self.dir / PROGRESS).unlink(missing_ok=True)


def http_download(art: ArtifactRef, directory: Path, *, deadline_s: float, should_stop: Callable[[], bool] = lambda: False,
                  ca_file: str | None = None, block: int = 1 << 16) -> Path:
    """Download one artifact to ``directory/<file>``; resumes a ``.part`` with a Range request.

    Reads at most ``art.size`` bytes (a longer body is refused as oversized).
    """
    import time

    assert art.url is not None
    part = directory / (art.file + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > art.size:
        part.unlink()
        have = 0
    start = time.monotonic()
    if have < art.size:
        req = urllib.request.Request(art.url, headers={"Range": f"bytes={have}-"} if have else {})
        ctx = ssl.create_default_context(cafile=ca_file) if art.url.startswith("https://") else None
        try:
            resp = urllib.request.urlopen(req, timeout=min(30.0, max(1.0, deadline_s)), context=ctx)
        except (urllib.error.URLError, OSError, ValueError) as e:
            if isinstance(getattr(e, "reason", e), ssl.SSLCertVerificationError):  # not transient: do not retry
                raise OtaError(f"{art.url} presented a certificate this device does not trust ({getattr(e, 'reason', e)}); "
                               "set [ota] download_ca_file to the CA that signed it", reason="tls_untrusted") from None
            raise OtaError(f"cannot download {art.file} from {art.url}: {e}", reason="download_failed") from None
        with resp:
            if have and resp.status != 206:  # the server ignored Range: start over
                have = 0
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if have else os.O_TRUNC)
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and have + int(length) > art.size:
                raise OtaError(f"{art.url} offers {have + int(length):,} bytes for {art.file}; the signed manifest says {art.size:,}",
                               reason="oversized")
            with os.fdopen(open_private(part, flags), "ab" if have else "wb") as f:
                got = have
                while True:
                    if should_stop():
                        raise OtaError("the download was canceled", reason="canceled")
                    if time.monotonic() - start > deadline_s:
                        raise OtaError(f"downloading {art.file} took longer than {deadline_s:.0f} s", reason="timeout")
                    try:
                        buf = resp.read(block)
                    except OSError as e:
                        raise OtaError(f"the download of {art.file} broke off at {got:,} bytes: {e}", reason="download_failed") from None
                    if not buf:
                        break
                    got += len(buf)
                    if got > art.size:
                        raise OtaError(f"{art.url} sent more than the {art.size:,} bytes of {art.file}", reason="oversized")
                    f.write(buf)
                f.flush()
                os.fsync(f.fileno())
    final = directory / art.file
    os.replace(part, final)
    return final
