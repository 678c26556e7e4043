"""``make demo``: the whole story on one machine, each stage one line saying what happened and where.

    python -m edgekit.demo [--out demo-out] [--broker mqtt://host:1883] [--tabular]

(``--tabular``: a scikit-learn pipeline on a real table instead, served from raw JSON rows: :mod:`edgekit.demo_tabular`.)

1. train a small CNN on scikit-learn's digits;
2. compress it to int8 (.onnx, .ort and, with the tflite extra, .tflite) with the report;
3. start an MQTT broker (embedded amqtt unless --broker) and a device agent serving v1;
4. send predictions through the agent's HTTP API;
5. sign and deploy v2; it serves its probation and is committed;
6. deploy a broken v3 (as accurate, ~200x the compute): refused by the fleet's metric gate, then forced;
   the device rolls it back on its own during probation;
7. shift the inputs and watch the fleet collector raise a drift alert;
8. print fleet status.

Every command the demo runs is a command a user runs; its files stay under --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.demo_agent import DEVICE, Device, cli, json_object, stage

if TYPE_CHECKING:
    from edgekit.monitor.collector import Collector

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def model_version(resp: dict[str, Any]) -> str:
    model = resp.get("model")
    return str(model.get("version") if isinstance(model, dict) else resp.get("version", "?"))


def serve_while(device: Device, x: np.ndarray, proc: subprocess.Popen[str], timeout: float) -> tuple[int, dict[str, int]]:
    """Keep sending predictions (the traffic probation judges) until ``proc`` ends; count answers by version."""
    deadline = time.monotonic() + timeout
    sent, i = 0, 0
    versions: dict[str, int] = {}
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            v = model_version(device.predict(x[i % len(x)][None]))
            versions[v] = versions.get(v, 0) + 1
            sent += 1
        except OSError:
            versions["error"] = versions.get("error", 0) + 1
        i += 1
        time.sleep(0.01)
    if proc.poll() is None:
        proc.kill()
        raise SystemExit(f"demo: the deployment did not finish within {timeout:.0f} s")
    return sent, versions


def slow_variant(src: Path, dst: Path, width: int = 2048, depth: int = 32) -> None:
    """The same digits model plus a heavy branch multiplied by zero: identical outputs, ~200x the compute.

    The branch's square layers share one weight matrix, so the file stays small while each request
    costs milliseconds: far beyond the probation's latency bound (3x the previous model's p95) even
    when that baseline was measured on a busy machine.
    """
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    rng = np.random.default_rng(0)
    out = g.output[0].name
    g.node[-1].output[0] = "logits_core"
    nodes = [helper.make_node("Reshape", [g.input[0].name, "slow_shape"], ["slow_flat"])]
    inits = [numpy_helper.from_array(np.array([-1, 64], np.int64), "slow_shape"),
             numpy_helper.from_array((rng.standard_normal((64, width)) * 0.01).astype(np.float32), "slow_w0"),
             numpy_helper.from_array(np.zeros((1,), np.float32), "slow_zero")]
    prev = "slow_flat"
    nodes.append(helper.make_node("MatMul", [prev, "slow_w0"], ["slow_h0"]))
    prev = "slow_h0"
    inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) * 0.01).astype(np.float32), "slow_w"))
    for i in range(1, depth):
        nodes.append(helper.make_node("MatMul", [prev, "slow_w"], [f"slow_h{i}"]))
        prev = f"slow_h{i}"
    nodes += [
        helper.make_node("ReduceSum", [prev], ["slow_sum"], keepdims=1),
        helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nil"]),
        helper.make_node("Add", ["logits_core", "slow_nil"], [out]),
    ]
    g.node.extend(nodes)
    g.initializer.extend(inits)
    del g.value_info[:]
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))


@dataclass
class Story:
    """What the stages share: the output directory, the data, the keys and the running pieces."""

    out: Path
    paths: dict[str, Path]
    keys: Path
    x_eval: np.ndarray
    y_eval: np.ndarray
    url: str = ""
    device: Device | None = None
    collector: Collector | None = None

    @property
    def fleet_dir(self) -> Path:
        return self.out / "fleet-state"

    @property
    def agent(self) -> Device:
        if self.device is None:
            raise RuntimeError("demo: the device agent is not running yet")
        return self.device

    def compress(self, version: str, out: Path, model: Path, *extra: str, formats: str = "onnx,ort") -> Path:
        """``edgekit compress --int8`` of ``model`` into ``out``, then ``edgekit sign``."""
        cli("compress", "--int8", "--data", str(self.paths["calib"]), "--eval-data", str(self.paths["eval"]), "--format", formats,
            "--version", version, *extra, "-o", str(out), str(model))
        cli("sign", str(out), "--key", str(self.keys / "edgekit.key"))
        return out

    def deploy(self, release: Path, *extra: str) -> tuple[dict[str, Any], int, dict[str, int], str]:
        """``edgekit fleet deploy --json`` while predictions keep flowing: (result, requests sent, answers by version, version now)."""
        deploy = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "fleet", "deploy", str(release), "--broker", self.url, "--device", DEVICE,
                                   "--state-dir", str(self.fleet_dir), "--timeout", "150", *extra, "--key", str(self.keys / "edgekit.key"),
                                   "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sent, versions = serve_while(self.agent, self.x_eval, deploy, 170)
        result = _json(deploy.communicate()[0])
        return result, sent, versions, model_version(self.agent.predict(self.x_eval[:1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="edgekit end-to-end demo")
    ap.add_argument("--out", default="demo-out", type=Path)
    ap.add_argument("--broker", help="Use this MQTT broker (default: start an embedded one).")
    ap.add_argument("--tabular", action="store_true", help="The tabular story instead: a scikit-learn pipeline served from raw JSON rows.")
    args = ap.parse_args(argv)
    out: Path = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if args.tabular:
        from edgekit.demo_tabular import run_tabular

        return run_tabular(out, args.broker)
    t0 = time.monotonic()
    story = _train_and_compress(out)
    for name in ("amqtt", "transitions", "edgekit.monitor"):  # the demo's stage lines say what happened
        logging.getLogger(name).setLevel(logging.CRITICAL)
    broker = None
    story.url = args.broker
    if not story.url:
        from edgekit.broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
        story.url = broker.url
    from edgekit.monitor.collector import Collector

    story.collector = Collector(story.url, out / "fleet.sqlite", share=None if broker else "edgekit-demo")
    story.collector.register(out / "v1")
    story.collector.start()
    story.device = Device(out / "device", out / "v1", story.url, story.keys / "edgekit.pub")
    try:
        _serve(story, embedded=broker is not None)
        _deploy_v2(story)
        _broken_v3(story)
        _drift(story)
        _status(story)
    finally:
        story.device.stop()
        story.collector.stop()
        if broker:
            broker.stop()
    stage(9, f"done in {time.monotonic() - t0:.0f} s; everything is under {out}/ (agent log: {story.device.root / 'agent.log'})")
    return 0


def _train_and_compress(out: Path) -> Story:
    """Stages 1 and 2: train the digits CNN, compress and sign v1."""
    from edgekit.examples.digits import train_digits

    paths = train_digits(out / "model")
    with np.load(paths["eval"]) as z:
        x_eval, y_eval = z["x"], z["labels"]
    stage(1, f"trained a digits CNN on scikit-learn's bundled digits -> {paths['model']} (train/calib/eval .npz beside it)")
    keys = out / "keys"
    cli("keys", "generate", "-o", str(keys))
    story = Story(out, paths, keys, x_eval, y_eval)
    v1 = story.compress("1.0.0", out / "v1", paths["model"], "--data-desc", "scikit-learn digits",
                        formats="onnx,ort,tflite" if _has_tflite() else "onnx,ort")
    rep = json.loads((v1 / "report.json").read_text())
    # --int8 ships float where int8 does not pay off on this CPU (never slower): each artifact says what it is
    rows = "; ".join(f"{r['file']} {r['precision']} {r['size_ratio']:.2f}x size, {r['latency_ratio']:.2f}x p50, "
                     f"{r['accuracy']:.1f}% acc" for r in rep["rows"] if r.get("role", "artifact") == "artifact")
    stage(2, f"compressed v1 with --int8 ({rows}) -> {v1}/ (report.html, report.json, edgekit.json)")
    return story


def _serve(story: Story, *, embedded: bool) -> None:
    """Stages 3 and 4: the agent serves v1; predictions over HTTP."""
    device = story.agent
    info = device.wait_ready()
    artifact = info.get("artifact")
    served = artifact.get("file", "?") if isinstance(artifact, dict) else artifact
    stage(3, f"MQTT broker at {story.url} ({'embedded amqtt' if embedded else 'given'}); agent '{DEVICE}' serves "
             f"{info.get('name')} {info.get('version')} ({served}) on {device.url}; config {device.config}")
    correct = sum(int(np.argmax(device.predict(story.x_eval[i][None])["outputs"]["logits"][0]) == story.y_eval[i]) for i in range(200))
    stage(4, f"sent 200 predictions over HTTP: {correct / 2:.1f}% correct; telemetry every 2 s over MQTT")


def _deploy_v2(story: Story) -> None:
    """Stage 5: a better-calibrated v2, signed and deployed; it serves its probation and is committed."""
    v2 = story.compress("2.0.0", story.out / "v2", story.paths["model"], "--calibration", "percentile")
    result, sent, versions, now = story.deploy(v2)
    stage(5, f"signed and deployed v2: {_outcome(result)}; {sent} requests during the rollout answered by {versions}; now serving {now}")


def _broken_v3(story: Story) -> None:
    """Stage 6: a far slower v3; the fleet's metric gate refuses it, forced it is rolled back by the device."""
    slow = story.out / "model" / "digits_v3.onnx"
    slow_variant(story.paths["model"], slow)
    v3 = story.compress("3.0.0", story.out / "v3", slow, "--name", "digits")
    gate = cli("fleet", "deploy", str(v3), "--broker", story.url, "--device", DEVICE, "--state-dir", str(story.fleet_dir), check=False)
    refused = (gate.stderr or gate.stdout).strip().splitlines()[-1] if gate.returncode else "accepted (unexpected)"
    refused = refused.removeprefix("error: ")
    result, sent, versions, now = story.deploy(v3, "--force")
    stage(6, f"broken v3 (same accuracy, far slower): the fleet's metric gate said \"{refused[:220]}\"; forced past it, the device "
             f"{_outcome(result)}; {sent} requests answered by {versions}, none failed; now serving {now}")


def _drift(story: Story) -> None:
    """Stage 7: inverted inputs until the collector raises a drift alert (at most 60 s)."""
    collector, device = story.collector, story.agent
    if collector is None:
        raise RuntimeError("demo: the fleet collector is not running")
    shifted = (1.0 - story.x_eval).astype(np.float32)  # inverted images: a camera swapped to negative, say
    alerts_before = len(collector.alerts)
    deadline = time.monotonic() + 60
    n = 0
    while time.monotonic() < deadline and len(collector.alerts) == alerts_before:
        for i in range(100):
            device.predict(shifted[(n + i) % len(shifted)][None])
        n += 100
        time.sleep(0.5)
    new = collector.alerts[alerts_before:]
    if new:
        stage(7, f"shifted the inputs (inverted digits, {n} requests): drift alert on MQTT — {_alert_line(new[-1])}")
    else:
        stage(7, f"shifted the inputs ({n} requests) but no drift alert arrived within 60 s (see {story.out / 'fleet.sqlite'})")


def _status(story: Story) -> None:
    """Stage 8: ``edgekit fleet status``, drift column included."""
    status = cli("fleet", "status", "--broker", story.url, "--state-dir", str(story.fleet_dir), check=False)
    stage(8, "fleet status:")
    print(status.stdout.rstrip() or status.stderr.rstrip())


def _json(text: str) -> dict[str, Any]:
    try:
        return json_object(text)
    except (ValueError, TypeError):
        return {"raw": (text or "").strip()[-300:]}


def _outcome(result: dict[str, Any]) -> str:
    d = (result.get("outcomes") or {}).get(DEVICE)
    if isinstance(d, dict):
        detail = d.get("detail") or d.get("reason") or ""
        return f"job {d.get('state')}" + (f" ({detail})" if detail else "")
    return result.get("aborted") or result.get("raw") or json.dumps(result)[:200]


def _alert_line(a: dict[str, Any]) -> str:
    return str(a.get("message") or json.dumps(a)[:300])


def _has_tflite() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None and importlib.util.find_spec("onnx2tf") is not None


if __name__ == "__main__":
    sys.exit(main())
