"""``edgekit agent ...``: workstation commands for the device agent.

    edgekit agent bundle --device-id pi-07 --broker mqtts://broker.lan:8883 --model out/ -o pi-07.tar.gz
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

__all__ = ["agent"]


@click.group("agent")
def agent() -> None:
    """Package and configure the device agent (edgekit-agent)."""


def _setting(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise click.BadParameter(f"{item!r}: use SECTION.KEY=VALUE, e.g. telemetry.interval_s=30 or api.port=8471", param=param)
        try:
            value = json.loads(raw)  # numbers, true/false, ["lists"]
        except json.JSONDecodeError:
            value = raw  # a plain string
        out.setdefault(section, {})[name] = value
    return out


@agent.command("bundle")
@click.option("--device-id", required=True, help="Device id (MQTT client id and topic segment), e.g. pi-07.")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="An `edgekit compress` output directory (edgekit.json + artifacts).")
@click.option("--broker", default="", help="mqtt://host:1883 or mqtts://host:8883 (empty: no MQTT).")
@click.option("--group", default="default", show_default=True, help="Fleet group for group commands.")
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False, path_type=Path), help="CA certificate for mqtts://.")
@click.option("--cert", "cert_file", type=click.Path(dir_okay=False, path_type=Path), help="Client certificate (mutual TLS).")
@click.option("--key", "key_file", type=click.Path(dir_okay=False, path_type=Path), help="Client private key (mutual TLS).")
@click.option("--username", default="", help="MQTT username.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), help="File holding the MQTT password.")
@click.option("--trusted-key", "trusted_keys", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="ed25519 public key (PEM, from `edgekit keys`) whose signatures the device accepts for updates. Repeatable.")
@click.option("--wheel", "wheels", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Wheels to ship (default: build edgekit's from this checkout). Repeatable.")
@click.option("--with-deps", is_flag=True, help="Also ship the dependency wheels for the target (offline install).")
@click.option("--platform", default="manylinux2014_aarch64", show_default=True, help="Target platform for --with-deps.")
@click.option("--python-version", default="3.11", show_default=True, help="Target Python for --with-deps (Raspberry Pi OS 12: 3.11).")
@click.option("--set", "settings", multiple=True, callback=_setting, metavar="SECTION.KEY=VALUE",
              help="Any other agent.toml field, e.g. --set telemetry.interval_s=30. Repeatable.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Archive to write (default: DEVICE_ID.tar.gz).")
@click.option("--json", "as_json", is_flag=True, help="Print the bundle summary as JSON.")
def bundle(**options: Any) -> None:
    """Pack the agent, its config, the model and a systemd install script for one device.

    \b
      edgekit agent bundle --device-id pi-07 --broker mqtts://broker.lan:8883 \\
          --ca ca.pem --cert pi-07.pem --key pi-07.key --model out/ -o pi-07.tar.gz
      # on the device:  tar xzf pi-07.tar.gz && sudo ./install.sh
    """
    from device_agent.bundle import BundleSpec, build_bundle
    from device_agent.contract.errors import AgentError
    from edgekit.errors import InputError

    o = options
    device_id: str = o["device_id"]
    spec = BundleSpec(device_id=device_id, model_dir=o["model_dir"], broker_url=o["broker"], group=o["group"], ca_file=o["ca_file"],
                      cert_file=o["cert_file"], key_file=o["key_file"], username=o["username"], password_file=o["password_file"],
                      trusted_keys=list(o["trusted_keys"]), wheels=list(o["wheels"]), with_deps=o["with_deps"], platform=o["platform"],
                      python_version=o["python_version"], settings=o["settings"])
    try:
        summary = build_bundle(spec, o["output"] or Path(f"{device_id}.tar.gz"))
    except AgentError as e:
        raise InputError(str(e)) from e
    if o["as_json"]:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"wrote {summary['output']} ({summary['size_bytes'] / 1e6:.1f} MB) for {device_id}: "
               f"{summary['model']['name']} {summary['model']['version']}, wheels: {', '.join(summary['wheels'])}")
    click.echo(f"on the device: tar xzf {Path(summary['output']).name} && sudo ./install.sh")
