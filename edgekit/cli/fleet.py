"""``edgekit fleet``: deploy, status, rollback, jobs, cancel — over the devices' MQTT broker."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

__all__ = ["fleet"]

DEFAULT_STATE = Path(os.environ.get("EDGEKIT_FLEET_DIR") or Path.home() / ".local" / "state" / "edgekit" / "fleet")


def _broker_options(f):
    opts = [
        click.option("--broker", envvar="EDGEKIT_BROKER", required=True, help="mqtt://host:1883 or mqtts://host:8883 (env EDGEKIT_BROKER)."),
        click.option("--prefix", default="edgekit/v1", show_default=True, help="Topic prefix shared with the devices."),
        click.option("--username", envvar="EDGEKIT_BROKER_USER", help="Broker username."),
        click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="File holding the broker password."),
        click.option("--ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="CA bundle for mqtts://."),
        click.option("--cert-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Client certificate (mutual TLS)."),
        click.option("--client-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Client certificate's key."),
        click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_STATE, show_default=True,
                     help="Where rollouts and shipped manifests are recorded (env EDGEKIT_FLEET_DIR)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _client(kw: dict):
    from edgekit.fleet.client import FleetClient

    pw = kw["password_file"].read_text().strip() if kw.get("password_file") else None
    return FleetClient(kw["broker"], prefix=kw["prefix"], username=kw.get("username"), password=pw,
                       ca_file=str(kw["ca_file"]) if kw.get("ca_file") else None, cert_file=str(kw["cert_file"]) if kw.get("cert_file") else None,
                       key_file=str(kw["client_key"]) if kw.get("client_key") else None)


def _targets(device: tuple[str, ...], group: str | None) -> None:
    if bool(device) == bool(group):
        raise click.UsageError("pass --device ID (repeatable) or --group NAME, not both")


@click.group()
def fleet() -> None:
    """Ship signed models to devices and watch them: deploy, status, rollback, jobs, cancel."""


@fleet.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_broker_options
@click.option("--device", multiple=True, help="Target device id (repeatable).")
@click.option("--group", help="Target every device of this group.")
@click.option("--waves", default="100%", show_default=True, help="Cumulative wave sizes, counts or shares: 1,10%,50%,100%.")
@click.option("--max-failures", default="0", show_default=True, help="Abort when more finished devices than this failed (count or %).")
@click.option("--min-devices", type=click.IntRange(1), default=1, show_default=True, help="Finished devices needed before --max-failures applies.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1), default=900.0, show_default=True, help="Per-device time to reach a final state (s).")
@click.option("--delivery", type=click.Choice(["mqtt", "http"]), default="mqtt", show_default=True, help="Chunks through the broker, or an HTTP(S) URL.")
@click.option("--url", "base_url", help="Base URL the directory's files are served from (--delivery http).")
@click.option("--chunk-size", type=click.IntRange(1024, 1 << 20), default=64 * 1024, show_default=True)
@click.option("--probation-requests", type=click.IntRange(1), help="Requests the new model must serve before it is committed (device default: 200).")
@click.option("--probation-seconds", type=click.FloatRange(0), help="...or seconds on probation, whichever comes first (device default: 300).")
@click.option("--max-latency-ratio", "probation_latency", type=click.FloatRange(1), help="Roll back when p95 exceeds this × the previous model's.")
@click.option("--shadow", is_flag=True, help="Run the new model beside the old on sampled live inputs before promoting it.")
@click.option("--shadow-agreement", type=click.FloatRange(0, 1), help="Top-1 agreement needed to promote in shadow mode (default 0.95).")
@click.option("--allow-incompatible", is_flag=True, help="Allow inputs/outputs that differ from the served model's.")
@click.option("--force", is_flag=True, help="Deploy even if the manifest's metrics are worse than the served model's.")
@click.option("--baseline", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Compare metrics with this output directory.")
@click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True, help="Metric gate: largest accuracy drop (points) vs the served model.")
@click.option("--max-slowdown", type=float, default=1.5, show_default=True, help="Metric gate: largest p50 latency ratio vs the served model.")
@click.option("--job", "job_id", help="Job id (default: deploy-<time>-<random>).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Private key to sign the cancel sent to devices that time out (devices ignore unsigned cancels).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def deploy(directory: Path, device: tuple[str, ...], group: str | None, waves: str, max_failures: str, min_devices: int, timeout_s: float,
           delivery: str, base_url: str | None, chunk_size: int, probation_requests, probation_seconds, probation_latency, shadow: bool,
           shadow_agreement, allow_incompatible: bool, force: bool, baseline: Path | None, max_accuracy_drop: float, max_slowdown: float,
           job_id: str | None, key: Path | None, as_json: bool, **kw) -> None:
    """Deploy DIRECTORY (edgekit compress output, signed with `edgekit sign`) to devices, in waves."""
    from device_agent.contract.manifest import load_manifest
    from edgekit.fleet.jobs import Release
    from edgekit.fleet.rollout import Gate, Journal, RolloutPolicy, parse_share
    from edgekit.fleet.rollout import deploy as run
    from edgekit.signing import load_private_key

    _targets(device, group)
    for w in waves.split(","):
        parse_share(w, "--waves entry")
    parse_share(max_failures, "--max-failures")
    release = Release.open(directory)
    if release.signature is None and not as_json:
        click.echo(f"warning: {directory} is not signed; devices refuse it unless they set allow_unsigned (edgekit sign {directory} --key KEY)",
                   err=True)
    probation = {k: v for k, v in {"requests": probation_requests, "seconds": probation_seconds, "max_latency_ratio": probation_latency,
                                   "shadow": True if shadow else None, "shadow_min_agreement": shadow_agreement}.items() if v is not None}
    policy = RolloutPolicy(waves=tuple(w.strip() for w in waves.split(",")), max_failures=max_failures, min_devices=min_devices,
                           device_timeout_s=timeout_s, method=delivery, chunk_size=chunk_size, base_url=base_url, probation=probation or None,
                           allow_incompatible=allow_incompatible)
    say = (lambda s: None) if as_json else (lambda s: click.echo(s, err=True))
    with _client(kw) as fc:
        result = run(fc, release, devices=list(device) or None, group=group, policy=policy,
                     gate=None if force else Gate(max_accuracy_drop, max_slowdown), baseline=load_manifest(baseline) if baseline else None,
                     journal=Journal(kw["state_dir"]), job=job_id, progress=say, key=load_private_key(key) if key else None)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
    else:
        from edgekit.fleet.status import render

        rows = [{"device": d, **o} for d, o in result.outcomes.items()]
        click.echo(f"job {result.job}: {result.model['name']} {result.model['version']} — {result.succeeded} succeeded, {result.failed} failed"
                   + (f", {len(result.skipped)} not updated" if result.skipped else ""))
        click.echo(render(rows, [("device", "device"), ("wave", "wave"), ("state", "state"), ("reason", "reason"), ("detail", "detail")]))
        if result.aborted:
            click.echo(f"ROLLOUT ABORTED: {result.aborted}", err=True)
    if result.aborted or result.failed:
        raise click.exceptions.Exit(1)


@fleet.command()
@_broker_options
@click.option("--group", help="Only devices of this group.")
@click.option("--wait", "wait_s", type=click.FloatRange(0.1, 600), default=2.0, show_default=True,
              help="Seconds to collect retained states (and any telemetry) before printing.")
@click.option("--json", "as_json", is_flag=True, help="Print rows as JSON.")
def status(group: str | None, wait_s: float, as_json: bool, **kw) -> None:
    """Devices: online, model version, job state, last seen, p95 latency, requests, outbox depth."""
    from edgekit.cli.fleet_monitor import add_drift_column
    from edgekit.fleet.status import STATUS_COLUMNS, render, status_rows

    with _client(kw) as fc:
        fc.settle(wait_s, quiet=min(0.5, wait_s))
        rows = status_rows(fc.snapshot(), group=group)
    add_drift_column(rows, kw)  # the fleet monitor's verdict per device (edgekit fleet watch)
    click.echo(json.dumps(rows, indent=1) if as_json else (render(rows, STATUS_COLUMNS) if rows else "no device has reported to this broker"))


@fleet.command()
@_broker_options
@click.option("--device", multiple=True, help="Device id (repeatable).")
@click.option("--group", help="Every device of this group.")
@click.option("--key", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Private key: devices only accept rollbacks signed by a trusted key.")
@click.option("--to", "to_version", help="Version to go back to (default: each device's previous version).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1), default=60.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def rollback(device: tuple[str, ...], group: str | None, key: Path, to_version: str | None, timeout_s: float, as_json: bool, **kw) -> None:
    """Roll devices back to their previous (or a given) version, as a signed job."""
    from edgekit.fleet.rollout import rollback as run
    from edgekit.fleet.status import render
    from edgekit.signing import load_private_key

    _targets(device, group)
    k = load_private_key(key)
    with _client(kw) as fc:
        out = run(fc, key=k, devices=list(device) or None, group=group, to=to_version, timeout_s=timeout_s)
    if as_json:
        click.echo(json.dumps(out, indent=1))
    else:
        click.echo(render([{"device": d, **o} for d, o in out.items()],
                          [("device", "device"), ("state", "state"), ("reason", "reason"), ("detail", "detail")]))
    if any(o["state"] not in ("SUCCEEDED", "SKIPPED") for o in out.values()):
        raise click.exceptions.Exit(1)


@fleet.command()
@_broker_options
@click.option("--job", "job_id", help="Only this job.")
@click.option("--wait", "wait_s", type=click.FloatRange(0.1, 600), default=2.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print rows as JSON.")
def jobs(job_id: str | None, wait_s: float, as_json: bool, **kw) -> None:
    """Job states reported by devices (latest per device and job), and the recorded rollouts."""
    from edgekit.fleet.rollout import Journal
    from edgekit.fleet.status import JOB_COLUMNS, job_rows, render

    with _client(kw) as fc:
        fc.settle(wait_s, quiet=min(0.5, wait_s))
        rows = job_rows(fc.snapshot(), job=job_id)
    rollouts = [r for r in Journal(kw["state_dir"]).rollouts() if job_id is None or r["job"] == job_id]
    if as_json:
        click.echo(json.dumps({"jobs": rows, "rollouts": rollouts}, indent=1))
        return
    click.echo(render(rows, JOB_COLUMNS) if rows else "no job states on this broker")
    for r in rollouts[-10:]:
        click.echo(f"rollout {r['job']}: {r['model']['name']} {r['model']['version']}: {r['succeeded']} succeeded, {r['failed']} failed"
                   + (f" — {r['aborted']}" if r.get("aborted") else ""))


@fleet.command()
@_broker_options
@click.argument("job_id")
@click.option("--device", multiple=True, help="Device id (repeatable).")
@click.option("--group", help="Every device of this group.")
@click.option("--key", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, help="Private key (a trusted signer).")
def cancel(job_id: str, device: tuple[str, ...], group: str | None, key: Path, **kw) -> None:
    """Cancel JOB_ID on devices: dropped if queued, stopped if downloading, reverted if on probation."""
    from device_agent.contract.protocol import CommandKind
    from edgekit.fleet.jobs import new_job_id, signed_command
    from edgekit.fleet.rollout import select
    from edgekit.signing import load_private_key

    _targets(device, group)
    k = load_private_key(key)
    with _client(kw) as fc:
        fc.settle(2.0)
        online, _ = select(fc.snapshot(), devices=list(device) or None, group=group)
        cid = new_job_id("cancel")
        fc.flush([fc.send(d, signed_command(CommandKind.CANCEL, cid, device=d, params={"target": job_id}, key=k)) for d in online])
    click.echo(f"cancel {cid} of {job_id} sent to {len(online)} device(s); follow it with `edgekit fleet jobs --job {job_id}`")


# fleet drift / fleet watch: the fleet monitor's commands (edgekit.cli.fleet_monitor; imports only click)
from edgekit.cli.fleet_monitor import drift as _drift  # noqa: E402
from edgekit.cli.fleet_monitor import watch as _watch  # noqa: E402

fleet.add_command(_drift)
fleet.add_command(_watch)
