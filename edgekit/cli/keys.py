"""``edgekit keys``: ed25519 signing keys for model updates."""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["keys"]


@click.group()
def keys() -> None:
    """Signing keys: devices accept updates signed by a key in their [security] trusted_keys."""


@keys.command("generate")
@click.option("-o", "--output", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("keys"), show_default=True,
              help="Directory for NAME.key (private, mode 0600) and NAME.pub (public: copy it to the devices).")
@click.option("--name", default="edgekit", show_default=True, help="File name stem.")
@click.option("--force", is_flag=True, help="Replace existing key files (every model must then be re-signed).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def generate(out: Path, name: str, force: bool, as_json: bool) -> None:
    """Create an ed25519 key pair."""
    from edgekit.signing import generate_keys

    kp = generate_keys(out, name=name, overwrite=force)
    if as_json:
        click.echo(json.dumps({"private": str(kp.private), "public": str(kp.public), "key_id": kp.key_id}))
        return
    click.echo(f"wrote {kp.private} (private: keep it off the devices) and {kp.public} (key id {kp.key_id})")
    click.echo(f"devices trust it with:  [security] trusted_keys = [\"{kp.public.name}\"]")
