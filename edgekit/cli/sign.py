"""``edgekit sign``: a detached ed25519 signature over an output directory's manifest."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["sign"]


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--key", type=click.Path(path_type=Path), help="Private key (edgekit keys generate).")
@click.option("--verify", "verify_with", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="PUB",
              help="Instead of signing, verify the signature (and every artifact) against this public key (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def sign(directory: Path, key: Path | None, verify_with: tuple[Path, ...], as_json: bool) -> None:
    """Sign DIRECTORY/edgekit.json (it covers every artifact by sha256) → edgekit.json.sig."""
    from device_agent.ota.verify import Signature
    from edgekit.signing import sign_dir, verify_dir

    if verify_with:
        kid = verify_dir(directory, list(verify_with))
        click.echo(json.dumps({"verified": True, "key_id": kid}) if as_json else f"{directory}: signature valid (key {kid}), artifacts match")
        return
    if key is None:
        raise click.UsageError("pass --key KEY to sign (or --verify PUB to check a signature)")
    out = sign_dir(directory, key)
    kid = Signature.parse(out.read_bytes()).key_id
    click.echo(json.dumps({"signature": str(out), "key_id": kid}) if as_json else f"wrote {out} (key {kid})")
