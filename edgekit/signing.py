"""ed25519 keys and detached manifest signatures (operator side).

``edgekit keys generate -o keys/`` writes ``keys/edgekit.key`` (PKCS#8 PEM, mode 0600 whatever the umask; a key
file group or others can access is refused wherever edgekit reads one) and
``keys/edgekit.pub`` (SubjectPublicKeyInfo PEM, for the devices' ``[security] trusted_keys``).
``edgekit sign out/ --key keys/edgekit.key`` writes ``out/edgekit.json.sig`` over the exact bytes of
``out/edgekit.json``; the manifest holds every artifact's sha256, so the signature covers them all.
Before signing, every artifact is checked against the manifest: a signature must never vouch for
files that already differ from what the manifest says.

The signature format and the verification live in :mod:`device_agent.ota.verify` (the devices run it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent.contract.errors import OtaError as _DeviceOtaError
from device_agent.contract.files import loose_key_problem, open_private
from device_agent.contract.manifest import MANIFEST_NAME, SIGNATURE_NAME, ManifestError, load_manifest
from device_agent.ota.verify import Signature, key_id, load_trusted_keys, verify_manifest
from edgekit.errors import FleetError, InputError

__all__ = ["KeyPair", "generate_keys", "load_private_key", "sign_dir", "verify_dir"]

KEY_NAME = "edgekit.key"
PUB_NAME = "edgekit.pub"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str


def generate_keys(out_dir: str | Path, *, name: str = "edgekit", overwrite: bool = False) -> KeyPair:
    """Create an ed25519 key pair in ``out_dir`` (``<name>.key`` private, ``<name>.pub`` public)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    priv, pub = d / f"{name}.key", d / f"{name}.pub"
    for p in (priv, pub):
        if p.exists() and not overwrite:
            raise InputError(f"{p} already exists; refusing to overwrite a key (pass --force to replace it, and re-sign every model)")
    key = Ed25519PrivateKey.generate()
    data = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    with os.fdopen(open_private(priv), "wb") as f:
        f.write(data)
    pub.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(priv, pub, key_id(key.public_key()))


def load_private_key(path: str | Path) -> Any:
    """Read an ed25519 private key (PEM). Refuses a key file group or others may access (fix: ``chmod 600``)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    p = Path(path)
    problem = loose_key_problem(p)
    if problem:
        raise InputError(problem)
    try:
        key = load_pem_private_key(p.read_bytes(), password=None)
    except FileNotFoundError:
        raise InputError(f"no key at {p}; create one with `edgekit keys generate -o {p.parent}`") from None
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"{p} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{p} is a {type(key).__name__}; edgekit signs with ed25519 keys (`edgekit keys generate`)")
    return key


def sign_dir(directory: str | Path, key: str | Path | Any) -> Path:
    """Check the artifacts against the manifest, then write ``edgekit.json.sig``. Returns its path."""
    d = Path(directory)
    try:
        load_manifest(d, verify_files=True)
    except ManifestError as e:
        raise InputError(f"refusing to sign {d}: {e}") from None
    k = load_private_key(key) if isinstance(key, (str, Path)) else key
    data = (d / MANIFEST_NAME).read_bytes()
    sig = Signature(key_id(k.public_key()), k.sign(data))
    out = d / SIGNATURE_NAME
    out.write_text(sig.to_json(data))
    return out


def verify_dir(directory: str | Path, public_keys: list[str | Path]) -> str:
    """Verify a signed directory as a device would (signature + every artifact). Returns the key id."""
    d = Path(directory)
    sig = d / SIGNATURE_NAME
    if not sig.is_file():
        raise FleetError(f"{d} is not signed (no {SIGNATURE_NAME}); sign it with `edgekit sign {d} --key KEY`")
    try:
        kid = verify_manifest((d / MANIFEST_NAME).read_bytes(), sig.read_bytes(), load_trusted_keys(public_keys))
        load_manifest(d, verify_files=True)
    except _DeviceOtaError as e:
        raise FleetError(str(e)) from None
    except ManifestError as e:
        raise FleetError(f"{d}: {e}") from None
    return kid
