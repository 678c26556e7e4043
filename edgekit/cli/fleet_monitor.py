"""``edgekit fleet drift`` and ``edgekit fleet watch``: the fleet monitor's commands.

    edgekit fleet watch --broker mqtt://broker:1883 --db fleet.sqlite --model out/
    edgekit fleet drift --broker mqtt://broker:1883 --group cameras --window 1h
    edgekit fleet drift --db fleet.sqlite --device pi-07 --json

Thin: parse, call :mod:`edgekit.monitor`, render. Attached to the ``fleet`` group.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import click

__all__ = ["add_drift_column", "drift", "parse_duration", "watch"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``2d`` → seconds; raises ValueError with the accepted forms."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration; use a positive number with s, m, h or d (e.g. 30m, 1h, 2d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param=param) from None


def _thresholds(psi_warn: float | None, psi_alert: float | None, min_samples: int | None) -> Any:
    from pydantic import ValidationError

    from edgekit.errors import InputError
    from edgekit.monitor.drift import DriftThresholds

    values = {k: v for k, v in (("psi_warn", psi_warn), ("psi_alert", psi_alert), ("min_samples", min_samples)) if v is not None}
    try:
        return DriftThresholds(**values)
    except ValidationError as e:
        raise InputError(f"drift thresholds: {e.errors()[0]['msg']} (--psi-warn, --psi-alert, --min-samples)") from None


def _password(path: Path | None) -> str | None:
    return path.read_text().strip() if path else None


def threshold_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--psi-warn", type=float, help="PSI at or above which a feature warns (default 0.1)."),
        click.option("--psi-alert", type=float, help="PSI at or above which a feature alerts (default 0.25)."),
        click.option("--min-samples", type=click.IntRange(min=1), help="Samples needed for a verdict (default: from the bins)."),
    ]):
        f = opt(f)
    return f


def broker_options(f: Any) -> Any:
    """The connection options of every ``edgekit fleet`` command (same names and environment variables)."""
    for opt in reversed([
        click.option("--prefix", default="edgekit/v1", show_default=True, help="Topic prefix shared with the devices."),
        click.option("--username", envvar="EDGEKIT_BROKER_USER", help="Broker username."),
        click.option("--password-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="File holding the broker password."),
        click.option("--ca-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="CA bundle for mqtts://."),
        click.option("--cert-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="Client certificate (mutual TLS)."),
        click.option("--client-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="Client certificate's key."),
    ]):
        f = opt(f)
    return f


def _tls(ca_file: Path | None, cert_file: Path | None, client_key: Path | None) -> dict[str, str | None]:
    return {"ca_file": str(ca_file) if ca_file else None, "cert_file": str(cert_file) if cert_file else None,
            "key_file": str(client_key) if client_key else None}


def add_drift_column(rows: list[dict[str, Any]], kw: dict[str, Any]) -> None:
    """Fill ``row["drift"]`` (and ``drift_level``) of ``fleet status`` rows from the collectors' retained summaries.

    ``kw`` holds the fleet command's broker options. A broker without collectors leaves "—".
    """
    from edgekit.monitor.status import drift_cell, read_drift

    summaries = read_drift(kw["broker"], prefix=kw.get("prefix") or "edgekit/v1", username=kw.get("username"),
                           password=_password(kw.get("password_file")), **_tls(kw.get("ca_file"), kw.get("cert_file"), kw.get("client_key")))
    for row in rows:
        row["drift"] = drift_cell(summaries, row["device"])
        row["drift_level"] = (summaries.get(row["device"]) or {}).get("level")


# --- fleet drift ------------------------------------------------------------------------------------


@click.command("drift")
@click.option("--broker", envvar="EDGEKIT_BROKER", help="Ask the running collectors (edgekit fleet watch) through this broker: mqtt://host:1883 (env EDGEKIT_BROKER).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), help="Read a collector's database instead of asking the collectors.")
@click.option("--group", help="One group: the group merged, then each of its devices.")
@click.option("--device", help="One device.")
@click.option("--window", "window_s", default="1h", show_default=True, callback=_duration, help="How far back: 30m, 1h, 2d, ...")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds to wait for the collectors' answers.")
@click.option("--all-features", is_flag=True, help="List every feature, not only those that moved.")
@click.option("--fail-on", type=click.Choice(["warn", "alert"]), help="Exit with code 3 when any report is at this level or above (for scripts).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@threshold_options
@broker_options
def drift(broker: str | None, db_path: Path | None, group: str | None, device: str | None, window_s: float, timeout: float,
          all_features: bool, fail_on: str | None, as_json: bool, psi_warn: float | None, psi_alert: float | None, min_samples: int | None, prefix: str,
          username: str | None, password_file: Path | None, ca_file: Path | None, cert_file: Path | None, client_key: Path | None) -> None:
    """Input drift (PSI, KS, NaN and out-of-range shares) per device or group, per model version.

    \b
      edgekit fleet drift --broker mqtt://127.0.0.1:1883 --group cameras
      edgekit fleet drift --db fleet.sqlite --device pi-07 --window 30m --json
    """
    from edgekit.errors import InputError

    if group and device:
        raise click.UsageError("--group and --device exclude each other: pick one (or neither, for every device)")
    if bool(broker) == bool(db_path):
        raise click.UsageError("give --broker (ask the running collectors) or --db (read a collector's database), exactly one")
    thresholds = _thresholds(psi_warn, psi_alert, min_samples)
    accuracy: list[dict[str, Any]] = []
    missing: list[str] = []
    if db_path is not None:
        if not db_path.is_file():
            raise InputError(f"no fleet database at {db_path}; `edgekit fleet watch --db {db_path}` creates it")
        from edgekit.monitor.monitor import drift_reports
        from edgekit.monitor.store import SqliteStore

        with SqliteStore(db_path) as store:
            reports = drift_reports(store, device=device, group=group, window_s=window_s, thresholds=thresholds)
            accuracy = _accuracy_rows(store, reports)
    else:
        from edgekit.monitor.query import ask_collectors, merge_answers

        answers, missing = ask_collectors(broker, device=device, group=group, window_s=window_s, prefix=prefix, timeout=timeout,
                                          username=username, password=_password(password_file), **_tls(ca_file, cert_file, client_key))
        reports, accuracy = merge_answers(answers, thresholds=thresholds)
    if as_json:
        click.echo(json.dumps({"window_s": window_s, "reports": [r.to_dict() for r in reports], "accuracy": accuracy,
                               "collectors_missing": missing}, indent=2))
    else:
        if missing:
            click.echo(f"warning: no answer from collector(s) {', '.join(missing)} within {timeout:g} s: their share of the traffic is missing",
                       err=True)
        click.echo(render_reports(reports, accuracy, window_s=window_s, all_features=all_features))
    if fail_on is not None:
        from edgekit.monitor.drift import Level

        if any(r.level.rank >= Level(fail_on).rank for r in reports):
            raise click.exceptions.Exit(3)


def _accuracy_rows(store: Any, reports: list[Any]) -> list[dict[str, Any]]:
    from edgekit.monitor.monitor import MonitorConfig, accuracy_report

    rows, seen = [], set()
    for r in reports:
        if r.scope != "device" or (r.name, r.model, r.version) in seen:
            continue
        seen.add((r.name, r.model, r.version))
        rep = accuracy_report(store, r.name, r.model, r.version, since=r.start or 0.0, config=MonitorConfig())
        if rep.labelled:
            rows.append({"device": r.name, "model": r.model, "version": r.version, "labelled": rep.labelled, "correct": rep.correct,
                         "accuracy": rep.accuracy, "baseline": rep.baseline})
    return rows


def render_reports(reports: list[Any], accuracy: list[dict[str, Any]], *, window_s: float, all_features: bool = False) -> str:
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
            oor = "" if not f.out_of_range_share else f"  out of range {f.out_of_range_share:.1%}"
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
@click.option("--broker", envvar="EDGEKIT_BROKER", required=True, help="mqtt://host:1883 or mqtts://host:8883 (env EDGEKIT_BROKER).")
@click.option("--db", "db_path", default="fleet.sqlite", show_default=True, type=click.Path(dir_okay=False, path_type=Path),
              help="SQLite file for telemetry history, verdicts and alerts (created if missing).")
@click.option("--model", "models", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Model directory (edgekit.json) to judge its version against; repeatable. Models deployed (edgekit fleet deploy) while it runs register themselves.")
@click.option("--share", default="edgekit-monitor", show_default=True, help="Shared-subscription group: collectors with the same share split the telemetry.")
@click.option("--id", "collector_id", help="Collector id (MQTT client id; default: random). A stable id keeps the broker session across restarts.")
@click.option("--lookback", "lookback_s", default="1h", show_default=True, callback=_duration, help="Windows merged for a verdict at most this far back.")
@click.option("--accuracy-drop", type=click.FloatRange(0, 1), default=0.05, show_default=True, help="Alert when accuracy falls this far below the manifest's (0.05 = 5 points).")
@click.option("--trusted-key", "trusted_keys", multiple=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="ed25519 public key (.pub); given, only manifests signed by these keys become references when deployed. Repeatable.")
@click.option("--duration", "duration_s", callback=_duration, help="Stop after this long (default: until Ctrl-C).")
@click.option("--json", "as_json", is_flag=True, help="Print each alert as one JSON line.")
@threshold_options
@broker_options
def watch(broker: str, db_path: Path, models: tuple[Path, ...], share: str, collector_id: str | None, lookback_s: float, accuracy_drop: float,
          trusted_keys: tuple[Path, ...], duration_s: float | None, as_json: bool, psi_warn: float | None, psi_alert: float | None, min_samples: int | None, prefix: str,
          username: str | None, password_file: Path | None, ca_file: Path | None, cert_file: Path | None, client_key: Path | None) -> None:
    """Collect fleet telemetry into a database and raise drift and accuracy alerts (on MQTT and here).

    \b
      edgekit fleet watch --broker mqtt://127.0.0.1:1883 --db fleet.sqlite --model out/
    """
    from edgekit.errors import OtaError
    from edgekit.monitor.alerts import fmt_time
    from edgekit.monitor.collector import Collector, check_reachable
    from edgekit.monitor.monitor import MonitorConfig

    config = MonitorConfig(thresholds=_thresholds(psi_warn, psi_alert, min_samples), lookback_s=lookback_s, accuracy_max_drop=accuracy_drop)

    def show(alert: dict[str, Any]) -> None:
        click.echo(json.dumps(alert) if as_json else f"{fmt_time(alert.get('ts'))}  {alert['kind']:<8} {alert['message']}")

    collector = Collector(broker, db_path, config=config, share=share, prefix=prefix, collector_id=collector_id, username=username,
                          password=_password(password_file), **_tls(ca_file, cert_file, client_key), on_alert=show,
                          trusted_keys=list(trusted_keys) or None)
    for m in models:
        ref = collector.register(m)
        if not as_json:
            click.echo(f"reference: {ref.model} {ref.version} ({len(ref.features)} features) from {m}")
    check_reachable(collector.address)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *a: stop.set()) if threading.current_thread() is threading.main_thread() else None
    collector.start()
    try:
        if not collector.wait_ready(15):
            raise OtaError(f"could not connect and subscribe to {broker} within 15 s; is the broker running and does it allow shared subscriptions?")
        if not as_json:
            click.echo(f"watching {broker} as {collector.id} (share {share}); history in {db_path}" + (f" for {duration_s:g} s" if duration_s else ""))
        deadline = time.monotonic() + duration_s if duration_s else None
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            stop.wait(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))
    except KeyboardInterrupt:
        pass
    finally:
        collector.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if not as_json:
        s = collector.monitor.stats
        click.echo(f"stopped: {s['telemetry']} telemetry windows stored ({s['duplicates']} repeats dropped), {s['alerts']} alert(s)")
