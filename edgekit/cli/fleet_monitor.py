"""``edgekit fleet drift``, ``edgekit fleet watch`` and ``edgekit fleet serve``: the fleet monitor's commands.

    edgekit fleet watch --broker mqtt://broker:1883 --db fleet.sqlite --model out/ --metrics-port 9464
    edgekit fleet serve --db fleet.sqlite --port 8080 --token-file page.token
    edgekit fleet drift --broker mqtt://broker:1883 --group cameras --window 1h
    edgekit fleet drift --db fleet.sqlite --device pi-07 --json

Thin: parse (option groups in :mod:`edgekit.cli.fleet_options`), call :mod:`edgekit.monitor`,
render. Attached to the ``fleet`` group by :mod:`edgekit.cli.fleet`.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgekit.cli.fleet_options import BROKER_HELP, BrokerOptions, ThresholdOptions, broker_options, duration, threshold_options

if TYPE_CHECKING:
    from edgekit.monitor.collector import Collector
    from edgekit.monitor.drift import DriftReport, DriftThresholds
    from edgekit.monitor.store import FleetHistory, FleetStore, Span

__all__ = ["add_drift_column", "drift", "open_existing", "render_reports", "serve", "watch"]


def add_drift_column(rows: list[dict[str, Any]], link: BrokerOptions) -> None:
    """Fill ``row["drift"]`` (and ``drift_level``) of ``fleet status`` rows from the collectors' retained summaries.

    ``link`` holds the fleet command's broker options. A broker without collectors leaves "—".
    """
    from edgekit.monitor.status import drift_cell, read_drift

    summaries = read_drift(link.address(), prefix=link.prefix)
    for row in rows:
        row["drift"] = drift_cell(summaries, row["device"])
        row["drift_level"] = (summaries.get(row["device"]) or {}).get("level")


# --- fleet drift ------------------------------------------------------------------------------------


@click.command("drift")
@click.option("--broker", envvar="EDGEKIT_BROKER",
              help="Ask the running collectors (edgekit fleet watch) through this broker: mqtt://host:1883 (env EDGEKIT_BROKER).")
@click.option("--db", "db_path", help="Read a collector's store instead of asking the collectors: a SQLite file or a postgresql:// URL.")
@click.option("--group", help="One group: the group merged, then each of its devices.")
@click.option("--device", help="One device.")
@click.option("--window", "window_s", default="1h", show_default=True, callback=duration, help="How far back: 30m, 1h, 2d, ...")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds to wait for the collectors' answers.")
@click.option("--all-features", is_flag=True, help="List every feature, not only those that moved.")
@click.option("--fail-on", type=click.Choice(["warn", "alert"]), help="Exit with code 3 when any report is at this level or above (for scripts).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@threshold_options
@broker_options(broker=False)
def drift(*, link: BrokerOptions, db_path: str | None, group: str | None, device: str | None, window_s: float, timeout: float,
          all_features: bool, fail_on: str | None, as_json: bool, limits: ThresholdOptions) -> None:
    """Input drift (PSI, KS, NaN and out-of-range shares) per device or group, per model version.

    \b
      edgekit fleet drift --broker mqtt://127.0.0.1:1883 --group cameras
      edgekit fleet drift --db fleet.sqlite --device pi-07 --window 30m --json
    """
    if group and device:
        raise click.UsageError("--group and --device exclude each other: pick one (or neither, for every device)")
    if bool(link.broker) == bool(db_path):
        raise click.UsageError("give --broker (ask the running collectors) or --db (read a collector's database), exactly one")
    thresholds = limits.thresholds()
    missing: list[str] = []
    if db_path is not None:
        reports, accuracy = _from_db(db_path, device=device, group=group, window_s=window_s, thresholds=thresholds)
    else:
        from edgekit.monitor.query import ask_collectors, merge_answers

        answers, missing = ask_collectors(link.address(), device=device, group=group, window_s=window_s, prefix=link.prefix, timeout=timeout)
        reports, accuracy = merge_answers(answers, thresholds=thresholds)
    if as_json:
        import orjson  # json's indenting encoder is pure Python: seconds for a thousand reports

        click.echo(orjson.dumps({"window_s": window_s, "reports": [r.to_dict() for r in reports], "accuracy": accuracy,
                                 "collectors_missing": missing}, option=orjson.OPT_INDENT_2).decode())
    else:
        if missing:
            click.echo(f"warning: no answer from collector(s) {', '.join(missing)} within {timeout:g} s: their share of the traffic is missing",
                       err=True)
        click.echo(render_reports(reports, accuracy, window_s=window_s, all_features=all_features))
    if fail_on is not None:
        from edgekit.monitor.drift import Level

        if any(r.level.rank >= Level(fail_on).rank for r in reports):
            raise click.exceptions.Exit(3)


def _from_db(db_path: str, *, device: str | None, group: str | None, window_s: float,
             thresholds: DriftThresholds) -> tuple[list[DriftReport], list[dict[str, Any]]]:
    """Drift reports and accuracy rows judged from a collector's store."""
    from edgekit.monitor.reports import reports_of

    store = open_existing(db_path)
    try:
        spans = store.spans(device=device, group=group, since=time.time() - window_s)
        reports = reports_of(spans, group=group, thresholds=thresholds, store=store)
        return reports, _accuracy_rows(store, reports, spans)
    finally:
        store.close()


def open_existing(db: str) -> FleetStore:
    """The store at ``--db`` (a SQLite file that must exist, or a ``postgresql://`` URL); InputError says how to make one."""
    from edgekit.errors import InputError
    from edgekit.monitor.store import is_url, open_store

    if not is_url(db) and not Path(db).is_file():
        raise InputError(f"no fleet database at {db}; `edgekit fleet watch --db {db}` creates it")
    return open_store(db)


def _accuracy_rows(store: FleetHistory, reports: list[DriftReport], spans: list[Span]) -> list[dict[str, Any]]:
    """Late labels per device report's device and model version, from the spans the reports came from."""
    from edgekit.monitor.accuracy import span_accuracy

    wanted = {(r.name, r.model, r.version) for r in reports if r.scope == "device"}
    by_device: dict[str, list[Any]] = {}
    for s in spans:
        by_device.setdefault(s.device, []).append(s)
    refs: dict[tuple[str, str], Any] = {}
    rows = []
    for device, model, version in sorted(wanted):
        labelled, correct = span_accuracy(by_device.get(device, []), model, version)
        if labelled:
            if (model, version) not in refs:
                refs[(model, version)] = store.reference(model, version)
            ref = refs[(model, version)]
            rows.append({"device": device, "model": model, "version": version, "labelled": labelled, "correct": correct,
                         "accuracy": correct / labelled, "baseline": ref.baseline_accuracy() if ref else None})
    return rows


def render_reports(reports: list[DriftReport], accuracy: list[dict[str, Any]], *, window_s: float, all_features: bool = False) -> str:
    """The text form of ``fleet drift``."""
    from edgekit.monitor.alerts import fmt_time
    from edgekit.monitor.drift import Level

    if not reports:
        return f"no telemetry in the last {_fmt_window(window_s)}"
    lines = []
    for r in reports:
        head = f"{r.scope} {r.name}  {r.model} {r.version}  {r.level.text}"
        span = f"{r.samples} samples in {r.windows} window(s)"
        if r.start is not None:
            span += f", {fmt_time(r.start)} – {fmt_time(r.end)[11:]}"
        lines.append(f"{head}  ({span})")
        if not r.features:
            lines.append("    no drift reference for this model version: register its manifest (edgekit fleet watch --model DIR)")
        unknown = [f for f in r.features if f.level is Level.NOT_ENOUGH_DATA]
        if unknown and not all_features:
            lines.append(f"    not enough data for {len(unknown)} feature(s): {unknown[0].reasons[-1] if unknown[0].reasons else ''}")
        shown = r.features if all_features else [f for f in r.features if f.level.rank >= Level.WARN.rank]
        for f in sorted(shown, key=lambda f: f.severity, reverse=True):
            psi = "—" if f.psi is None else f"{f.psi:.3f}"
            ks = "—" if f.ks is None else f"{f.ks:.3f}"
            shift = "" if f.mean_shift_std is None else f"  mean {f.mean_shift_std:+.2f} std"
            nan = "" if not f.nan_share else f"  NaN {f.nan_share:.1%}"
            oor = "" if not f.out_of_range_share else f"  {'unseen' if f.categorical else 'out of range'} {f.out_of_range_share:.1%}"
            lines.append(f"    {f.name:<14} {f.level.text:<6} PSI {psi}  KS {ks}{shift}{nan}{oor}")
    for a in accuracy:
        acc = "—" if a["accuracy"] is None else f"{a['accuracy']:.1%}"
        base = "—" if a.get("baseline") is None else f"{a['baseline']:.1%}"
        lines.append(f"accuracy {a['device']}  {a['model']} {a['version']}  {acc} on {a['labelled']} labelled (manifest {base})")
    return "\n".join(lines)


def _fmt_window(s: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n and s % n == 0:
            return f"{int(s // n)}{unit}"
    return f"{s:g}s"


# --- fleet watch ------------------------------------------------------------------------------------


@click.command("watch")
@click.option("--broker", envvar="EDGEKIT_BROKER", required=True, help=BROKER_HELP)
@click.option("--db", "db_path", default="fleet.sqlite", show_default=True,
              help="Where telemetry, verdicts and alerts are kept: a SQLite file (created if missing) or postgresql://user@host:5432/db "
                   "(collectors on several hosts share one).")
@click.option("--model", "models", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Model directory (edgekit.json) to judge its version against; repeatable. "
                   "Models deployed (edgekit fleet deploy) while it runs register themselves.")
@click.option("--share", default="edgekit-monitor", show_default=True,
              help="Shared-subscription group: collectors with the same share split the telemetry.")
@click.option("--id", "collector_id", help="Collector id (MQTT client id; default: random). A stable id keeps the broker session across restarts.")
@click.option("--lookback", "lookback_s", default="1h", show_default=True, callback=duration, help="Windows merged for a verdict at most this far back.")
@click.option("--accuracy-drop", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="Alert when accuracy falls this far below the manifest's (0.05 = 5 points).")
@click.option("--trusted-key", "trusted_keys", multiple=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="ed25519 public key (.pub); given, only manifests signed by these keys become references when deployed. Repeatable.")
@click.option("--raw-retention", "raw_retention_s", default="1d", show_default=True, callback=duration,
              help="Raw windows kept (running totals and roll-ups serve everything else).")
@click.option("--retention", "retention_s", default="30d", show_default=True, callback=duration, help="Hourly roll-ups and alerts kept.")
@click.option("--duration", "duration_s", callback=duration, help="Stop after this long (default: until Ctrl-C).")
@click.option("--json", "as_json", is_flag=True, help="Print each alert as one JSON line.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="Serve /metrics for Prometheus on this port (0: a free one, printed).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address /metrics listens on (0.0.0.0: every interface).")
@threshold_options
@broker_options(broker=False)
def watch(*, link: BrokerOptions, db_path: str, models: tuple[Path, ...], share: str, collector_id: str | None, lookback_s: float,
          accuracy_drop: float, trusted_keys: tuple[Path, ...], raw_retention_s: float, retention_s: float, duration_s: float | None,
          as_json: bool, metrics_port: int | None, metrics_host: str, limits: ThresholdOptions) -> None:
    """Collect fleet telemetry into a database and raise drift and accuracy alerts (on MQTT and here); optionally serve /metrics.

    \b
      edgekit fleet watch --broker mqtt://127.0.0.1:1883 --db fleet.sqlite --model out/
      edgekit fleet watch --broker mqtt://127.0.0.1:1883 --db fleet.sqlite --metrics-port 9464
    """
    from edgekit.fleet.mqtt import check_reachable
    from edgekit.monitor.alerts import fmt_time
    from edgekit.monitor.collector import Collector
    from edgekit.monitor.config import MonitorConfig

    config = MonitorConfig(thresholds=limits.thresholds(), lookback_s=lookback_s, accuracy_max_drop=accuracy_drop,
                           raw_retention_s=raw_retention_s, retention_s=retention_s)

    def show(alert: dict[str, Any]) -> None:
        click.echo(json.dumps(alert) if as_json else f"{fmt_time(alert.get('ts'))}  {alert['kind']:<8} {alert['message']}")

    collector = Collector(link.address(), db_path, config=config, share=share, prefix=link.prefix, collector_id=collector_id, on_alert=show,
                          trusted_keys=list(trusted_keys) or None)
    for m in models:
        ref = collector.register(m)
        if not as_json:
            click.echo(f"reference: {ref.model} {ref.version} ({len(ref.features)} features) from {m}")
    check_reachable(collector.address)
    if metrics_port is not None:
        served = collector.serve_metrics(metrics_port, host=metrics_host)
        click.echo(f"metrics: {served.url}", err=as_json)  # on stderr under --json: stdout is one alert per line
    _run(collector, db_path=db_path, duration_s=duration_s, quiet=as_json)
    if not as_json:
        s = collector.monitor.stats
        click.echo(f"stopped: {s['telemetry']} telemetry windows stored ({s['duplicates']} repeats dropped), {s['alerts']} alert(s)")


def _run(collector: Collector, *, db_path: str, duration_s: float | None, quiet: bool) -> None:
    """Run the collector until Ctrl-C, SIGTERM or ``duration_s``; always stop it cleanly."""
    from edgekit.errors import FleetError

    url = collector.address.url
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *a: stop.set()) if threading.current_thread() is threading.main_thread() else None
    collector.start()
    try:
        if not collector.wait_ready(15):
            raise FleetError(collector.refusal
                             or f"could not connect and subscribe to {url} within 15 s; is the broker running and does it allow shared subscriptions?")
        if not quiet:
            from edgekit.monitor.store.postgres import shown

            click.echo(f"watching {url} as {collector.id} (share {collector.share}); history in {shown(db_path)}"
                       + (f" for {duration_s:g} s" if duration_s else ""))
        deadline = time.monotonic() + duration_s if duration_s else None
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            stop.wait(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        collector.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# --- fleet serve ------------------------------------------------------------------------------------


@click.command("serve")
@click.option("--db", "db_path", default="fleet.sqlite", show_default=True, help="The collectors' store: a SQLite file or a postgresql:// URL.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (any other than loopback needs --token-file).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port (0: a free one, printed).")
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="File holding the access token: requests need 'Authorization: Bearer <token>' or ?token=<token> once (a cookie).")
@click.option("--duration", "duration_s", callback=duration, help="Stop after this long (default: until Ctrl-C).")
def serve(*, db_path: str, host: str, port: int, token_file: Path | None, duration_s: float | None) -> None:
    """A read-only web page over the fleet store: devices and versions, rollouts, drift heat maps, alerts, each device's history.

    \b
      edgekit fleet serve --db fleet.sqlite --port 8080
      edgekit fleet serve --db postgresql://fleet@db:5432/fleet --host 0.0.0.0 --token-file /etc/edgekit/page.token
    """
    from edgekit.monitor.page import FleetPage

    token = token_file.read_text(encoding="utf-8").strip() if token_file is not None else None
    store = open_existing(db_path)
    try:
        page = FleetPage(store, token=token, host=host, port=port).start()
        click.echo(f"fleet page: {page.url}" + (" (token needed)" if token else ""))
        stop = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda *a: stop.set()) if threading.current_thread() is threading.main_thread() else None
        try:
            stop.wait(duration_s)
        except KeyboardInterrupt:
            pass
        finally:
            page.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    finally:
        store.close()
