"""``edgekit agent ...``: workstation commands for the device agent.

    edgekit agent bundle --device-id pi-07 --broker mqtts://broker.lan:8883 --model out/ -o pi-07.tar.gz
    edgekit agent lock -o agent.lock                       # the agent's dependencies, pinned with sha256, for a Pi
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


def _platform(param: click.Parameter, value: str) -> str:
    import re

    if not re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)+", value):
        raise click.BadParameter(f"{value!r} is not a wheel platform tag; e.g. manylinux_2_36_aarch64 (a Pi) or manylinux_2_36_x86_64",
                                 param=param)
    return value


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
@click.option("--with-deps", is_flag=True, help="Also ship the locked dependency wheels (offline install).")
@click.option("--lock", "lock_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Install exactly this lock (from `edgekit agent lock`); when the file does not exist yet, the dependencies are "
                   "resolved now and recorded there, so the next bundle installs the same wheels. Default: the lock shipped for the "
                   "target, else a resolution made now.")
@click.option("--constraint", "constraint_file", type=click.Path(dir_okay=False, path_type=Path),
              help="pip constraints to resolve the lock under (e.g. onnxruntime==1.27.0 for a device that needs it); shipped in the bundle.")
@click.option("--platform", default="manylinux_2_36_aarch64", show_default=True, callback=lambda c, p, v: _platform(p, v),
              help="Target platform of the lock: manylinux_2_<glibc>_<arch> takes every wheel that glibc runs "
                   "(Raspberry Pi OS 12, 64-bit: manylinux_2_36_aarch64).")
@click.option("--python-version", default="3.11", show_default=True, help="Target Python of the lock (Raspberry Pi OS 12: 3.11).")
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
                      python_version=o["python_version"], lock_file=o["lock_file"], constraint_file=o["constraint_file"],
                      settings=o["settings"])
    try:
        summary = build_bundle(spec, o["output"] or Path(f"{device_id}.tar.gz"))
    except AgentError as e:
        raise InputError(str(e)) from e
    if o["as_json"]:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"wrote {summary['output']} ({summary['size_bytes'] / 1e6:.1f} MB, mode 0600) for {device_id}: "
               f"{summary['model']['name']} {summary['model']['version']}, wheels: {', '.join(summary['wheels'])}")
    lock = summary["lock"]
    pins = ", ".join(f"{k} {v}" for k, v in lock["packages"].items())
    click.echo(f"lock ({lock['source']}; {lock['platform']} / Python {lock['python']}): {pins}")
    if lock["source"] == "resolved":
        click.echo("the lock was resolved now: pass --lock FILE to record it, and again to install the same wheels next time")
    click.echo(f"on the device: tar xzf {Path(summary['output']).name} && sudo ./install.sh")


@agent.command("lock")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Lock file to write (replaced).")
@click.option("--platform", default="manylinux_2_36_aarch64", show_default=True, callback=lambda c, p, v: _platform(p, v),
              help="Target platform: manylinux_2_<glibc>_<arch> (Raspberry Pi OS 12, 64-bit: manylinux_2_36_aarch64).")
@click.option("--python-version", default="3.11", show_default=True, help="Target Python (Raspberry Pi OS 12: 3.11).")
@click.option("--constraint", "constraint_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="pip constraints to resolve under, e.g. a file with onnxruntime==1.27.0.")
@click.option("--json", "as_json", is_flag=True, help="Print the lock's pins as JSON.")
def lock(output: Path, platform: str, python_version: str, constraint_file: Path | None, as_json: bool) -> None:
    """Resolve the agent's dependencies for a device now and pin them: exact versions with sha256.

    \b
      edgekit agent lock -o agent.lock                                   # a Pi on Raspberry Pi OS 12
      edgekit agent bundle --lock agent.lock --with-deps ...             # every bundle made with it installs the same wheels
      edgekit agent lock --platform manylinux_2_36_x86_64 -o device_agent/deploy/locks/cp311-manylinux_2_36_x86_64.txt
    """
    from device_agent.bundle import agent_requirements, make_lock
    from device_agent.contract.errors import AgentError
    from edgekit.errors import InputError

    try:
        made = make_lock(agent_requirements(), output, platform=platform, python_version=python_version, constraint=constraint_file)
    except AgentError as e:
        raise InputError(str(e)) from e
    if as_json:
        click.echo(json.dumps({"output": str(output), "platform": platform, "python": python_version, "packages": made.pins}, indent=2))
        return
    click.echo(f"wrote {output}: {len(made.entries)} wheels for {platform} / Python {python_version}: "
               + ", ".join(f"{k} {v}" for k, v in made.pins.items()))
