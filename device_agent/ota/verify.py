"""Checks an update must pass before anything it brings is served.

- **Signatures**: a detached ed25519 signature (``edgekit.json.sig``) over the exact bytes of
  ``edgekit.json``. The manifest lists every artifact's size and sha256, so the signature covers
  the artifacts transitively. Only keys in the agent's trusted list count; unsigned updates are
  refused unless the config says ``allow_unsigned = true``.
- **Commands** (deploy, rollback, cancel; command version 2) carry their own signature over their
  canonical JSON: the target device or group, the issue and expiry times, the job id and every
  parameter (:func:`sign_command` / :func:`verify_command`). The manifest signature says *what* may
  be installed; the command signature says *where, when and how* (probation, shadow, URLs, overrides).
- **Artifacts**: size and sha256 of every delivered file, streamed (never the whole file in RAM).
- **Versions**: no downgrade except through an explicit rollback command.
- **Signatures of the model** (inputs/outputs): the new model must accept what the old one did.
- **File names** from the network: plain names only — no ``..``, no directories, no absolute paths.

The signature file is JSON, so keys can rotate (``key_id`` picks the key)::

    {"schema": "edgekit.signature", "alg": "ed25519", "key_id": "3f9a...", "signature": "<base64>",
     "signed": "edgekit.json", "sha256": "<sha256 of the signed bytes>"}
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from device_agent.contract.errors import OtaError
from device_agent.contract.manifest import TensorSpec, version_key
from device_agent.contract.protocol import Command

if TYPE_CHECKING:  # cryptography is imported where keys are read or checked, not when this module is
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "SIGNATURE_SCHEMA",
    "Signature",
    "TrustedKeys",
    "canonical_json",
    "command_bytes",
    "check_compatible",
    "check_file",
    "check_version",
    "key_id",
    "load_trusted_keys",
    "safe_name",
    "sign_command",
    "verify_command",
    "verify_manifest",
]

SIGNATURE_SCHEMA = "edgekit.signature"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-+]{0,127}")


def key_id(public_key: Ed25519PublicKey) -> str:
    """16 hex digits naming an ed25519 public key (sha256 of its raw 32 bytes)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys whose signatures an agent accepts, by key id."""

    keys: Mapping[str, Ed25519PublicKey]
    allow_unsigned: bool = False

    def __bool__(self) -> bool:
        return bool(self.keys)

    def get(self, kid: str) -> Ed25519PublicKey:
        key = self.keys.get(kid)
        if key is None:
            known = ", ".join(sorted(self.keys)) or "none"
            raise OtaError(
                f"signed with key {kid}, which is not in this device's trusted keys ({known}); "
                "add its .pub file to [security] trusted_keys or sign with a trusted key",
                reason="untrusted_key",
            )
        return key


def load_trusted_keys(paths: Iterable[str | Path], *, allow_unsigned: bool = False) -> TrustedKeys:
    """Read ed25519 public keys (PEM). A file that is not one raises ``OtaError``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    keys: dict[str, Ed25519PublicKey] = {}
    for p in paths:
        try:
            key = load_pem_public_key(Path(p).read_bytes())
        except (OSError, ValueError) as e:
            raise OtaError(f"trusted key {p} cannot be read as a PEM public key: {e}", reason="bad_key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise OtaError(f"trusted key {p} is a {type(key).__name__}; only ed25519 keys are accepted", reason="bad_key")
        keys[key_id(key)] = key
    return TrustedKeys(keys, allow_unsigned)


@dataclass(frozen=True)
class Signature:
    """A parsed detached signature."""

    key_id: str
    signature: bytes
    signed: str = "edgekit.json"

    def to_json(self, data: bytes) -> str:
        return json.dumps({
            "schema": SIGNATURE_SCHEMA, "alg": "ed25519", "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode(), "signed": self.signed,
            "sha256": hashlib.sha256(data).hexdigest(),
        }, indent=2) + "\n"

    @classmethod
    def parse(cls, raw: bytes | str) -> Signature:
        try:
            d = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise OtaError("the signature file is not JSON; re-sign with `edgekit sign`", reason="bad_signature") from None
        if not isinstance(d, dict) or d.get("schema") != SIGNATURE_SCHEMA or d.get("alg") != "ed25519":
            raise OtaError(f"the signature is not an {SIGNATURE_SCHEMA} ed25519 document; re-sign with `edgekit sign`", reason="bad_signature")
        try:
            sig = base64.b64decode(d["signature"], validate=True)
            kid = str(d["key_id"])
        except (KeyError, TypeError, ValueError):
            raise OtaError("the signature document has no valid key_id/signature fields", reason="bad_signature") from None
        if len(sig) != 64:
            raise OtaError(f"an ed25519 signature is 64 bytes; this one is {len(sig)}", reason="bad_signature")
        return cls(kid, sig, str(d.get("signed", "edgekit.json")))


def verify_manifest(manifest_bytes: bytes, signature: bytes | str | None, trusted: TrustedKeys) -> str:
    """Check the manifest's detached signature. Returns the signing key id, or ``"unsigned"``.

    Raises:
        OtaError: ``unsigned`` (no signature and unsigned updates not allowed), ``untrusted_key``,
            ``bad_signature`` (malformed, or the bytes were changed after signing).
    """
    if not signature:
        if trusted.allow_unsigned:
            return "unsigned"
        raise OtaError(
            "the update is not signed and this device only accepts signed updates; sign it with "
            "`edgekit sign OUT_DIR --key KEY` (or set [security] allow_unsigned = true on the device)",
            reason="unsigned",
        )
    sig = Signature.parse(signature)
    key = trusted.get(sig.key_id)
    _verify(key, sig.signature, manifest_bytes, "the manifest (edgekit.json) does not match its signature: it was modified after signing, "
            "or the signature belongs to another manifest")
    return sig.key_id


def canonical_json(obj: object) -> bytes:
    """Deterministic JSON bytes for signing (sorted keys, no spaces, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def command_bytes(cmd: Command) -> bytes:
    """The exact bytes a command's signature covers: :meth:`Command.signed_body` as canonical JSON."""
    return canonical_json(cmd.signed_body())


def sign_command(private_key: Ed25519PrivateKey, cmd: Command) -> dict[str, str]:
    """The ``auth`` block authorizing ``cmd`` (command version 2): its target, times and every parameter."""
    sig = private_key.sign(command_bytes(cmd))
    return {"key_id": key_id(private_key.public_key()), "signature": base64.b64encode(sig).decode()}


def verify_command(cmd: Command, trusted: TrustedKeys) -> str:
    """Check a command's ``auth``. Returns the key id, or ``"unsigned"`` when unsigned commands are allowed.

    Raises:
        OtaError: ``unsigned``, ``untrusted_key``, ``bad_signature`` (malformed, or any signed field changed).
    """
    if not cmd.auth:
        if trusted.allow_unsigned:
            return "unsigned"
        raise OtaError(f"the {cmd.kind} command is not signed and this device only accepts signed commands; "
                       f"pass --key to `edgekit fleet {'deploy' if cmd.kind == 'deploy' else cmd.kind}`", reason="unsigned")
    try:
        kid, sig = str(cmd.auth["key_id"]), base64.b64decode(cmd.auth["signature"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise OtaError(f"the {cmd.kind} command's auth block has no valid key_id/signature", reason="bad_signature") from None
    try:
        data = command_bytes(cmd)
    except ValueError:  # NaN/inf somewhere in params: canonical JSON has no spelling for it, so nobody signed it
        raise OtaError(f"the {cmd.kind} command holds a non-finite number; it cannot have been signed", reason="bad_signature") from None
    _verify(trusted.get(kid), sig, data, f"the {cmd.kind} command does not match its signature: a signed field (target, expiry, "
            "parameters) was changed, or it was signed for another command")
    return kid


def _verify(key: Ed25519PublicKey, sig: bytes, data: bytes, what: str) -> None:
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(sig, data)
    except InvalidSignature:
        raise OtaError(what, reason="bad_signature") from None


def safe_name(name: object, *, what: str = "file name") -> str:
    """A plain file name from the network, or OtaError ``unsafe_path``.

    Allowed: 1-128 of ``A-Z a-z 0-9 _ . - +``, not starting with '.', no '/', '\\' or '..'.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise OtaError(f"{what} {name!r} is not a plain file name (no directories, absolute paths or '..'; "
                       "allowed: A-Z a-z 0-9 _ . - +, not starting with '.')", reason="unsafe_path")
    return name


def check_file(path: Path, *, size: int, sha256: str, chunk: int = 1 << 20) -> None:
    """Size first (cheap), then the sha256, streamed."""
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise OtaError(f"artifact {path.name} was not delivered", reason="missing_artifact") from None
    if actual != size:
        raise OtaError(f"artifact {path.name} is {actual} bytes; the signed manifest says {size} (truncated or padded in transit)",
                       reason="size_mismatch")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    if h.hexdigest() != sha256:
        raise OtaError(f"artifact {path.name} has sha256 {h.hexdigest()[:16]}…; the signed manifest says {sha256[:16]}… "
                       "(tampered with or corrupted in transit)", reason="sha256_mismatch")


def check_version(new: str, current: str | None, *, allow_downgrade: bool = False) -> None:
    """Refuse a lower version than the one served, unless this is an explicit rollback."""
    if current is None or allow_downgrade:
        return
    if version_key(new) < version_key(current):
        raise OtaError(f"version {new} is older than the served {current}; downgrades are refused "
                       "(use `edgekit fleet rollback` to go back on purpose)", reason="downgrade")


def check_compatible(old_in: tuple[TensorSpec, ...], old_out: tuple[TensorSpec, ...], new_in: tuple[TensorSpec, ...],
                     new_out: tuple[TensorSpec, ...]) -> None:
    """The new model must take the inputs the old one took and give the outputs it gave
    (names, dtypes, ranks; fixed dims equal, symbolic dims match anything)."""
    for side, old, new in (("input", old_in, new_in), ("output", old_out, new_out)):
        by_name = {s.name: s for s in new}
        for o in old:
            n = by_name.get(o.name)
            if n is None:
                raise OtaError(f"the new model has no {side} {o.name!r} (it has {', '.join(by_name) or 'none'}); clients of the current model "
                               "would break. Deploy with --allow-incompatible if the clients were updated too", reason="incompatible")
            if n.dtype != o.dtype or len(n.shape) != len(o.shape) or any(
                    isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(o.shape, n.shape, strict=True)):
                raise OtaError(f"{side} {o.name!r} changes from {o.dtype}{list(o.shape)} to {n.dtype}{list(n.shape)}; clients of the "
                               "current model would break. Deploy with --allow-incompatible if the clients were updated too",
                               reason="incompatible")
        if side == "input" and len(new) != len(old):
            extra = sorted(set(by_name) - {o.name for o in old})
            raise OtaError(f"the new model needs input(s) {', '.join(extra)} that current clients do not send; "
                           "deploy with --allow-incompatible if the clients were updated too", reason="incompatible")
