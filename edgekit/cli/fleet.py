"""``edgekit fleet``: deploy, status, rollback, jobs, cancel — over the devices' MQTT broker.

Thin: parse (option groups in :mod:`edgekit.cli.fleet_options`), call :mod:`edgekit.fleet`, render.
``fleet drift`` and ``fleet watch`` come from :mod:`edgekit.cli.fleet_monitor`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from device_agent.contract.protocol import JobState
from device_agent.contract.runtimes import RuntimeStatus
from edgekit.cli.fleet_monitor import add_drift_column
from edgekit.cli.fleet_monitor import drift as drift_command
from edgekit.cli.fleet_monitor import serve as serve_command
from edgekit.cli.fleet_monitor import watch as watch_command
from edgekit.cli.fleet_options import (
    DEFAULT_STATE,
    BrokerOptions,
    GateOptions,
    RolloutOptions,
    broker_options,
    gate_options,
    rollout_options,
)

if TYPE_CHECKING:
    from edgekit.fleet.client import FleetClient
    from edgekit.fleet.rollout import RolloutResult

__all__ = ["fleet"]

_KEY = click.Path(exists=True, dir_okay=False, path_type=Path)
state_dir_option = click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_STATE, show_default=True,
                                help="Where rollouts and shipped manifests are recorded (env EDGEKIT_FLEET_DIR).")


def _client(link: BrokerOptions) -> FleetClient:
    from edgekit.fleet.client import FleetClient

    return FleetClient(link.address(), prefix=link.prefix)


def _targets(device: tuple[str, ...], group: str | None) -> None:
    if bool(device) == bool(group):
        raise click.UsageError("pass --device ID (repeatable) or --group NAME, not both")


@click.group()
def fleet() -> None:
    """Ship signed models to devices and watch them: deploy, status, rollback, jobs, cancel; watch, drift, serve (the monitor)."""


fleet.add_command(drift_command)
fleet.add_command(watch_command)
fleet.add_command(serve_command)


@fleet.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@broker_options()
@state_dir_option
@click.option("--device", multiple=True, help="Target device id (repeatable).")
@click.option("--group", help="Target every device of this group.")
@rollout_options
@gate_options
@click.option("--job", "job_id", help="Job id (default: deploy-<time>-<random>).")
@click.option("--key", type=_KEY, help="Private key (a trusted signer): signs the deploy commands (their target, expiry and settings) "
              "and the cancel sent to devices that time out. Devices refuse unsigned commands unless allow_unsigned.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def deploy(directory: Path, *, link: BrokerOptions, state_dir: Path, device: tuple[str, ...], group: str | None, rollout: RolloutOptions,
           metric_gate: GateOptions, job_id: str | None, key: Path | None, as_json: bool) -> None:
    """Deploy DIRECTORY (edgekit compress output, signed with `edgekit sign`) to devices, in waves."""
    from edgekit.fleet.jobs import Release
    from edgekit.fleet.rollout import Journal
    from edgekit.fleet.rollout import deploy as run
    from edgekit.signing import load_private_key

    _targets(device, group)
    rollout.check()
    release = Release.open(directory)
    if release.signature is None and not as_json:
        click.echo(f"warning: {directory} is not signed; devices refuse it unless they set allow_unsigned (edgekit sign {directory} --key KEY)",
                   err=True)
    if key is None and not as_json:
        click.echo("warning: no --key: the deploy commands are not signed; devices refuse them unless they set allow_unsigned", err=True)
    say = (lambda s: None) if as_json else (lambda s: click.echo(s, err=True))
    with _client(link) as fc:
        result = run(fc, release, devices=list(device) or None, group=group, policy=rollout.policy(), gate=metric_gate.gate(),
                     baseline=metric_gate.baseline_manifest(), journal=Journal(state_dir), job=job_id, progress=say,
                     key=load_private_key(key) if key else None)
    _show_rollout(result, as_json=as_json)
    if result.aborted or result.failed:
        raise click.exceptions.Exit(1)


def _show_rollout(result: RolloutResult, *, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
        return
    from edgekit.fleet.status import render

    rows = [{"device": d, **o} for d, o in result.outcomes.items()]
    click.echo(f"job {result.job}: {result.model['name']} {result.model['version']} — {result.succeeded} succeeded, {result.failed} failed"
               + (f", {len(result.skipped)} not updated" if result.skipped else ""))
    click.echo(render(rows, [("device", "device"), ("wave", "wave"), ("state", "state"), ("reason", "reason"), ("detail", "detail")]))
    if result.aborted:
        click.echo(f"ROLLOUT ABORTED: {result.aborted}", err=True)


@fleet.command()
@click.option("--broker", envvar="EDGEKIT_BROKER",
              help="Ask the running collectors (edgekit fleet watch) through this broker, or read its retained states when none runs: "
                   "mqtt://host:1883 (env EDGEKIT_BROKER).")
@click.option("--db", "db_path", help="Read a collector's store instead: a SQLite file or a postgresql:// URL.")
@state_dir_option
@click.option("--group", help="Only devices of this group.")
@click.option("--version", "model_version", help="Only devices serving this model version.")
@click.option("--online/--offline", default=None, help="Only devices online (or not).")
@click.option("--drift", "drift_level", type=click.Choice(["ok", "warn", "alert", "not_enough_data", "none"]),
              help="Only devices with this drift verdict (none: never judged).")
@click.option("--job-state", type=click.Choice([str(s) for s in JobState]), help="Only devices whose latest job is in this state.")
@click.option("--agent-version", help="Only devices running this agent version.")
@click.option("--runtime", help="Only devices serving with this runtime: a name (onnxruntime), a release (onnxruntime 1.27) or a version "
                                "(onnxruntime 1.27.0).")
@click.option("--runtime-status", type=click.Choice([*(str(s) for s in RuntimeStatus), "none"]),
              help="Only devices whose runtime check says this (the runtime against the model card's; none: never reported).")
@click.option("--limit", type=click.IntRange(1), help="At most this many devices (by id).")
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True, help="Skip this many devices first (paging).")
@click.option("--wait", "wait_s", type=click.FloatRange(0.1, 600), default=2.0, show_default=True,
              help="Seconds to wait for the collectors' answer (or, without a collector, to collect retained states).")
@click.option("--json", "as_json", is_flag=True, help="Print rows as JSON.")
@broker_options(broker=False)
def status(*, link: BrokerOptions, db_path: str | None, state_dir: Path, group: str | None, model_version: str | None, online: bool | None,
           drift_level: str | None, job_state: str | None, agent_version: str | None, runtime: str | None, runtime_status: str | None,
           limit: int | None, offset: int, wait_s: float, as_json: bool) -> None:
    """Devices: online, model version, job state, last seen, p95 latency, requests, outbox, drift, agent and runtime versions
    (the runtime serving the model, the one the model card validated, the check) — every device, or a filtered page.

    \b
      edgekit fleet status --broker mqtt://127.0.0.1:1883 --group cameras --drift alert
      edgekit fleet status --db fleet.sqlite --offline --limit 50 --json
      edgekit fleet status --db fleet.sqlite --runtime-status mismatch --runtime "onnxruntime 1.27"
    """
    from edgekit.fleet.status import STATUS_COLUMNS, render
    from edgekit.monitor.store import DeviceQuery

    if bool(link.broker) == bool(db_path):
        raise click.UsageError("give --broker (ask the collectors, or read the broker) or --db (read a collector's store), exactly one")
    query = DeviceQuery(group=group, version=model_version, online=online, drift=drift_level, job_state=job_state, agent_version=agent_version,
                        runtime=runtime, runtime_status=runtime_status, offset=offset, limit=limit)
    rows, total = _status_rows(link, db_path, query, wait_s)
    if as_json:
        click.echo(_json(rows))
    else:
        click.echo(render(rows, STATUS_COLUMNS) if rows else "no device has reported to this broker" if not db_path else "no device matches")
    if rows and total > len(rows):
        click.echo(f"devices {offset + 1}-{offset + len(rows)} of {total}: --offset {offset + len(rows)} for more", err=True)


def _json(doc: Any) -> str:
    """A ``--json`` document: orjson, indented (json's indenting encoder is pure Python: seconds at 10,000 rows)."""
    import orjson

    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


def _status_rows(link: BrokerOptions, db_path: str | None, query: Any, wait_s: float) -> tuple[list[dict[str, Any]], int]:
    """(rows, devices matching in all): from a store, from the collectors, or (no collector) from the broker's retained messages."""
    from edgekit.monitor.status import device_rows, merge_status, status_query

    if db_path is not None:
        from edgekit.cli.fleet_monitor import open_existing

        store = open_existing(db_path)
        try:
            table = store.device_table(query)
        finally:
            store.close()
        return device_rows(table.records()), table.total
    from edgekit.monitor.asking import NoCollector, ask

    try:
        answers, missing = ask(link.address(), status_query(query), reply_type="status_reply", prefix=link.prefix, timeout=max(wait_s, 5.0))
    except NoCollector:
        return _retained_rows(link, query, wait_s)
    if missing:
        click.echo(f"warning: no answer from collector(s) {', '.join(missing)}: showing the others' view", err=True)
    rows, total = merge_status(answers)
    return device_rows(rows), total


def _retained_rows(link: BrokerOptions, query: Any, wait_s: float) -> tuple[list[dict[str, Any]], int]:
    """The rows without a collector: the broker's retained states and job states, filtered here."""
    from edgekit.fleet.status import status_rows
    from edgekit.fleet.versions import runtime_matches

    with _client(link) as fc:
        fc.settle(wait_s, quiet=min(0.5, wait_s))
        rows: list[dict[str, Any]] = status_rows(fc.snapshot(), group=query.group)
    add_drift_column(rows, link)  # the fleet monitor's verdict per device (edgekit fleet watch)
    keep = [r for r in rows if (query.version is None or r["version"] == query.version)
            and (query.online is None or r["online"] == query.online) and (query.job_state is None or r["job_state"] == query.job_state)
            and (query.drift is None or r["drift_level"] == (None if query.drift == "none" else query.drift))
            and (query.agent_version is None or r["agent_version"] == query.agent_version)
            and (query.runtime is None or runtime_matches(r["runtime"], query.runtime))
            and (query.runtime_status is None or r["runtime_status"] == (None if query.runtime_status == "none" else query.runtime_status))]
    end = None if query.limit is None else query.offset + query.limit
    return keep[query.offset:end], len(keep)


@fleet.command()
@broker_options()
@state_dir_option
@click.option("--device", multiple=True, help="Device id (repeatable).")
@click.option("--group", help="Every device of this group.")
@click.option("--key", type=_KEY, required=True, help="Private key: devices only accept rollbacks signed by a trusted key.")
@click.option("--to", "to_version", help="Version to go back to (default: each device's previous version).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1), default=60.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def rollback(*, link: BrokerOptions, state_dir: Path, device: tuple[str, ...], group: str | None, key: Path, to_version: str | None,
             timeout_s: float, as_json: bool) -> None:
    """Roll devices back to their previous (or a given) version, as a signed job."""
    from edgekit.fleet.rollout import rollback as run
    from edgekit.fleet.status import render
    from edgekit.signing import load_private_key

    _targets(device, group)
    k = load_private_key(key)
    with _client(link) as fc:
        out = run(fc, key=k, devices=list(device) or None, group=group, to=to_version, timeout_s=timeout_s)
    if as_json:
        click.echo(json.dumps(out, indent=1))
    else:
        click.echo(render([{"device": d, **o} for d, o in out.items()],
                          [("device", "device"), ("state", "state"), ("reason", "reason"), ("detail", "detail")]))
    if any(o["state"] not in ("SUCCEEDED", "SKIPPED") for o in out.values()):
        raise click.exceptions.Exit(1)


@fleet.command()
@broker_options()
@state_dir_option
@click.option("--job", "job_id", help="Only this job.")
@click.option("--wait", "wait_s", type=click.FloatRange(0.1, 600), default=2.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print rows as JSON.")
def jobs(*, link: BrokerOptions, state_dir: Path, job_id: str | None, wait_s: float, as_json: bool) -> None:
    """Job states reported by devices (latest per device and job), and the recorded rollouts."""
    from edgekit.fleet.rollout import Journal
    from edgekit.fleet.status import JOB_COLUMNS, job_rows, render

    with _client(link) as fc:
        fc.settle(wait_s, quiet=min(0.5, wait_s))
        rows = job_rows(fc.snapshot(), job=job_id)
    rollouts = [r for r in Journal(state_dir).rollouts() if job_id is None or r["job"] == job_id]
    if as_json:
        click.echo(json.dumps({"jobs": rows, "rollouts": rollouts}, indent=1))
        return
    click.echo(render(rows, JOB_COLUMNS) if rows else "no job states on this broker")
    for r in rollouts[-10:]:
        click.echo(f"rollout {r['job']}: {r['model']['name']} {r['model']['version']}: {r['succeeded']} succeeded, {r['failed']} failed"
                   + (f" — {r['aborted']}" if r.get("aborted") else ""))


@fleet.command()
@broker_options()
@state_dir_option
@click.argument("job_id")
@click.option("--device", multiple=True, help="Device id (repeatable).")
@click.option("--group", help="Every device of this group.")
@click.option("--key", type=_KEY, required=True, help="Private key (a trusted signer).")
def cancel(job_id: str, *, link: BrokerOptions, state_dir: Path, device: tuple[str, ...], group: str | None, key: Path) -> None:
    """Cancel JOB_ID on devices: dropped if queued, stopped if downloading, reverted if on probation."""
    from device_agent.contract.protocol import CommandKind
    from edgekit.fleet.jobs import new_job_id, signed_command
    from edgekit.fleet.rollout import select
    from edgekit.signing import load_private_key

    _targets(device, group)
    k = load_private_key(key)
    with _client(link) as fc:
        fc.settle(2.0)
        online, _ = select(fc.snapshot(), devices=list(device) or None, group=group)
        cid = new_job_id("cancel")
        fc.flush([fc.send(d, signed_command(CommandKind.CANCEL, cid, device=d, params={"target": job_id}, key=k)) for d in online])
    click.echo(f"cancel {cid} of {job_id} sent to {len(online)} device(s); follow it with `edgekit fleet jobs --job {job_id}`")

