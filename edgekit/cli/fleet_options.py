"""The option groups of ``edgekit fleet``: each adds its click options and hands the command one object.

A command declares ``@broker_options`` (or ``@rollout_options``, ...) and receives ``link``
(``rollout``, ...) instead of a dozen loose parameters. The objects keep the raw values and build
the library's typed objects on demand (``link.address()``, ``rollout.policy()``), so errors come in
the order the command checks them. Imports only click (``edgekit --help`` stays fast).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from device_agent.contract.manifest import Manifest
    from edgekit.fleet.mqtt import BrokerAddress
    from edgekit.fleet.rollout import Gate, RolloutPolicy
    from edgekit.monitor.drift import DriftThresholds

__all__ = [
    "BROKER_HELP",
    "DEFAULT_STATE",
    "BrokerOptions",
    "GateOptions",
    "RolloutOptions",
    "ThresholdOptions",
    "broker_options",
    "duration",
    "gate_options",
    "parse_duration",
    "rollout_options",
    "threshold_options",
]

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_STATE = Path(os.environ.get("EDGEKIT_FLEET_DIR") or Path.home() / ".local" / "state" / "edgekit" / "fleet")
BROKER_HELP = "mqtt://host:1883 or mqtts://host:8883 (env EDGEKIT_BROKER)."
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _grouped(name: str, keys: tuple[str, ...], build: Callable[..., Any], options: list[Callable[[F], F]]) -> Callable[[F], F]:
    """Add ``options`` to a command and pass the values of ``keys`` to it as one ``name=build(**values)``."""
    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {k: kwargs.pop(k) for k in keys}
            return f(*args, **kwargs, **{name: build(**values)})

        out: Any = wrapper
        for option in reversed(options):
            out = option(out)
        return out  # type: ignore[no-any-return]

    return decorate


# --- the broker -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerOptions:
    """``--broker`` and the connection options shared by every ``edgekit fleet`` command."""

    broker: str | None
    prefix: str
    username: str | None
    password_file: Path | None
    ca_file: Path | None
    cert_file: Path | None
    client_key: Path | None

    def address(self) -> BrokerAddress:
        """The broker URL parsed, with the credentials (the password read from its file); InputError names what is wrong."""
        from device_agent.contract.files import loose_key_problem
        from edgekit.errors import InputError
        from edgekit.fleet.mqtt import parse_broker_url

        if not self.broker:
            raise InputError("no broker given: pass --broker mqtt://host:1883 (or set EDGEKIT_BROKER)")
        problem = loose_key_problem(self.client_key) if self.client_key else None
        if problem:
            raise InputError(f"--client-key: {problem}")
        return parse_broker_url(self.broker, username=self.username,
                                password=self.password_file.read_text().strip() if self.password_file else None,
                                ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.client_key)


_CONNECTION = [
    click.option("--prefix", default="edgekit/v1", show_default=True, help="Topic prefix shared with the devices."),
    click.option("--username", envvar="EDGEKIT_BROKER_USER", help="Broker username."),
    click.option("--password-file", type=_FILE, help="File holding the broker password."),
    click.option("--ca-file", type=_FILE, help="CA bundle for mqtts://."),
    click.option("--cert-file", type=_FILE, help="Client certificate (mutual TLS)."),
    click.option("--client-key", type=_FILE, help="Client certificate's key."),
]


def broker_options(*, broker: bool = True) -> Callable[[F], F]:
    """The connection options, passed as ``link: BrokerOptions``; ``broker=False`` when the command declares
    its own ``--broker`` (first in its help) and the rest come last."""
    options = ([click.option("--broker", envvar="EDGEKIT_BROKER", required=True, help=BROKER_HELP)] if broker else []) + _CONNECTION
    return _grouped("link", ("broker", "prefix", "username", "password_file", "ca_file", "cert_file", "client_key"), BrokerOptions, options)


# --- durations and drift thresholds --------------------------------------------------------------


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``2d`` → seconds; raises ValueError with the accepted forms."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration; use a positive number with s, m, h or d (e.g. 30m, 1h, 2d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """A click callback: the option's duration in seconds (usage error, exit 2, when it is not one)."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param=param) from None


@dataclass(frozen=True)
class ThresholdOptions:
    """``--psi-warn``, ``--psi-alert``, ``--min-samples`` (unset: the library's defaults)."""

    psi_warn: float | None
    psi_alert: float | None
    min_samples: int | None

    def thresholds(self) -> DriftThresholds:
        """The validated thresholds; InputError names the options when they contradict each other."""
        from pydantic import ValidationError

        from edgekit.errors import InputError
        from edgekit.monitor.drift import DriftThresholds

        values: dict[str, Any] = {k: v for k, v in (("psi_warn", self.psi_warn), ("psi_alert", self.psi_alert), ("min_samples", self.min_samples))
                  if v is not None}
        try:
            return DriftThresholds(**values)
        except ValidationError as e:
            raise InputError(f"drift thresholds: {e.errors()[0]['msg']} (--psi-warn, --psi-alert, --min-samples)") from None


threshold_options = _grouped("limits", ("psi_warn", "psi_alert", "min_samples"), ThresholdOptions, [
    click.option("--psi-warn", type=float, help="PSI at or above which a feature warns (default 0.1)."),
    click.option("--psi-alert", type=float, help="PSI at or above which a feature alerts (default 0.25)."),
    click.option("--min-samples", type=click.IntRange(min=1), help="Samples needed for a verdict (default: from the bins)."),
])


# --- deploy: waves, delivery, probation; the metric gate --------------------------------------------


@dataclass(frozen=True)
class RolloutOptions:
    """How ``fleet deploy`` rolls out: waves and abort bound, delivery, what the devices' probation checks."""

    waves: str
    max_failures: str
    min_devices: int
    timeout_s: float
    delivery: str
    base_url: str | None
    chunk_size: int
    probation_requests: int | None
    probation_seconds: float | None
    probation_latency: float | None
    shadow: bool
    shadow_agreement: float | None
    allow_incompatible: bool
    allow_rolled_back: bool

    def check(self) -> None:
        """InputError naming the option when a wave size or --max-failures is not a count or a share."""
        from edgekit.fleet.rollout import parse_share

        for w in self.waves.split(","):
            parse_share(w, "--waves entry")
        parse_share(self.max_failures, "--max-failures")

    def policy(self) -> RolloutPolicy:
        """The rollout policy (the probation block holds only the options given: devices default the rest)."""
        from edgekit.fleet.rollout import RolloutPolicy

        probation = {k: v for k, v in {"requests": self.probation_requests, "seconds": self.probation_seconds,
                                       "max_latency_ratio": self.probation_latency, "shadow": True if self.shadow else None,
                                       "shadow_min_agreement": self.shadow_agreement}.items() if v is not None}
        return RolloutPolicy(waves=tuple(w.strip() for w in self.waves.split(",")), max_failures=self.max_failures,
                             min_devices=self.min_devices, device_timeout_s=self.timeout_s, method=self.delivery, chunk_size=self.chunk_size,
                             base_url=self.base_url, probation=probation or None, allow_incompatible=self.allow_incompatible,
                             allow_rolled_back=self.allow_rolled_back)


rollout_options = _grouped("rollout", tuple(RolloutOptions.__dataclass_fields__), RolloutOptions, [
    click.option("--waves", default="100%", show_default=True, help="Cumulative wave sizes, counts or shares: 1,10%,50%,100%."),
    click.option("--max-failures", default="0", show_default=True, help="Abort when more finished devices than this failed (count or %)."),
    click.option("--min-devices", type=click.IntRange(1), default=1, show_default=True,
                 help="Finished devices needed before --max-failures applies."),
    click.option("--timeout", "timeout_s", type=click.FloatRange(1), default=900.0, show_default=True,
                 help="Per-device time to reach a final state (s)."),
    click.option("--delivery", type=click.Choice(["mqtt", "http"]), default="mqtt", show_default=True,
                 help="Chunks through the broker, or an HTTP(S) URL."),
    click.option("--url", "base_url", help="Base URL the directory's files are served from (--delivery http)."),
    click.option("--chunk-size", type=click.IntRange(1024, 1 << 20), default=64 * 1024, show_default=True),
    click.option("--probation-requests", type=click.IntRange(1),
                 help="Requests the new model must serve before it is committed (device default: 200)."),
    click.option("--probation-seconds", type=click.FloatRange(0), help="...or seconds on probation, whichever comes first (device default: 300)."),
    click.option("--max-latency-ratio", "probation_latency", type=click.FloatRange(1),
                 help="Roll back when the new model takes more than this × the previous model's time (the device runs both in "
                      "pairs on live inputs; device default 3)."),
    click.option("--shadow", is_flag=True, help="Run the new model beside the old on sampled live inputs before promoting it."),
    click.option("--shadow-agreement", type=click.FloatRange(0, 1), help="Top-1 agreement needed to promote in shadow mode (default 0.95)."),
    click.option("--allow-incompatible", is_flag=True, help="Allow inputs/outputs that differ from the served model's."),
    click.option("--allow-rolled-back", is_flag=True,
                 help="Deploy a release the devices rolled back before (they refuse it otherwise); signed into the job."),
])


@dataclass(frozen=True)
class GateOptions:
    """The metric gate of ``fleet deploy``: refuse a release worse than the served (or a given) one, unless forced."""

    force: bool
    baseline: Path | None
    max_accuracy_drop: float
    max_slowdown: float

    def gate(self) -> Gate | None:
        """The gate's bounds (None with ``--force``)."""
        from edgekit.fleet.rollout import Gate

        return None if self.force else Gate(self.max_accuracy_drop, self.max_slowdown)

    def baseline_manifest(self) -> Manifest | None:
        """The manifest of ``--baseline DIR`` (None: compare with what the devices serve)."""
        from device_agent.contract.manifest import load_manifest

        return load_manifest(self.baseline) if self.baseline else None


gate_options = _grouped("metric_gate", ("force", "baseline", "max_accuracy_drop", "max_slowdown"), GateOptions, [
    click.option("--force", is_flag=True, help="Deploy even if the manifest's metrics are worse than the served model's."),
    click.option("--baseline", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Compare metrics with this output directory."),
    click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True,
                 help="Metric gate: largest accuracy drop (points) vs the served model."),
    click.option("--max-slowdown", type=float, default=1.5, show_default=True, help="Metric gate: largest p50 latency ratio vs the served model."),
])
