"""``python -m edgekit.demo --tabular``: a scikit-learn pipeline from a real table to raw JSON rows on a device.

1. fit a pipeline (imputers, scaler, one-hot encoder, random forest) on the Palmer penguins table
   (shipped in the palmerpenguins package: string columns, missing values);
2. compress it whole with the ``tabular`` recipe (parity with the pipeline's own predict_proba) and sign it;
3. start an MQTT broker (embedded amqtt unless --broker), a fleet collector and a device agent serving it;
4. predict held-out rows sent as raw JSON (missing values, an island the model never saw);
5. send one bad row: the 400 names the row, the field, the value and what is allowed;
6. send rows from one island and from an unknown one: the collector raises a categorical drift alert.

Every command the demo runs is a command a user runs; its files stay under --out.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.demo_agent import Device, cli, stage

__all__ = ["run_tabular"]

NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year"]
CATEGORICAL = ["island", "sex"]


def post(url: str, doc: object) -> tuple[int, dict[str, Any]]:
    """POST a JSON body to the agent: (status, answer), errors included."""
    req = urllib.request.Request(f"{url}/v1/predict", json.dumps(doc).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _fit(out: Path) -> dict[str, Path]:
    """Stage 1: the penguins split 80/20 (the held-out rows get an unseen island and more missing values), a pipeline fitted."""
    import importlib.resources

    import joblib
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    out.mkdir(parents=True, exist_ok=True)
    src = importlib.resources.files("palmerpenguins") / "data" / "penguins.csv"
    df = pd.read_csv(str(src)).sample(frac=1.0, random_state=0).reset_index(drop=True)
    cut = int(len(df) * 0.8)
    train, held = df.iloc[:cut].copy(), df.iloc[cut:].copy().reset_index(drop=True)
    held.loc[0, "island"] = "Atlantis"  # a category the encoder never saw
    held.loc[1, "sex"] = np.nan
    held.loc[2, "bill_length_mm"] = np.nan
    paths = {"train": out / "train.csv", "heldout": out / "heldout.csv", "model": out / "penguins.joblib"}
    train.to_csv(paths["train"], index=False)
    held.to_csv(paths["heldout"], index=False)
    pipe = Pipeline([
        ("pre", ColumnTransformer([
            ("num", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]), NUMERIC),
            ("cat", Pipeline([("impute", SimpleImputer(strategy="most_frequent")), ("onehot", OneHotEncoder(handle_unknown="ignore"))]),
             CATEGORICAL),
        ])),
        ("clf", RandomForestClassifier(60, random_state=0)),
    ])
    y = train.pop("species")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.fit(train, y)
    joblib.dump(pipe, paths["model"])
    stage(1, f"fitted a scikit-learn pipeline (imputers, scaler, one-hot, random forest) on {len(train)} penguins -> {paths['model']}")
    return paths


def _compress(paths: dict[str, Path], out: Path, keys: Path) -> Path:
    """Stage 2: ``edgekit compress --recipe tabular`` and ``edgekit sign``."""
    model = out / "v1"
    cli("compress", str(paths["model"]), "--recipe", "tabular", "--data", str(paths["train"]), "--eval-data", str(paths["heldout"]),
        "--label", "species", "--version", "1.0.0", "-o", str(model))
    cli("sign", str(model), "--key", str(keys / "edgekit.key"))
    metrics = json.loads((model / "edgekit.json").read_text())["metrics"]
    art, origin = metrics["penguins.fp32.ort"], metrics["origin"]
    parity = art["origin_parity"]
    stage(2, f"compressed the whole pipeline (.onnx + .ort, one input per column): {parity['agreement']:.1f}% agreement with "
             f"predict_proba (max error {parity['proba_max_abs_error']:.1e}), {art['accuracy']:.1f}% accurate on held-out rows, "
             f"p50 {art['latency_p50_ms']:.3f} ms vs {origin['latency_p50_ms']:.1f} ms for the pickle in scikit-learn -> {model}/")
    return model


def _rows(csv: Path) -> tuple[list[dict[str, Any]], list[str]]:
    import pandas as pd

    df = pd.read_csv(csv)
    species = df.pop("species").tolist()
    return df.astype(object).where(df.notna(), None).to_dict(orient="records"), species


def _predict(device: Device, paths: dict[str, Path]) -> None:
    """Stages 4 and 5: held-out rows as raw JSON; then one bad row."""
    import joblib
    import pandas as pd

    rows, species = _rows(paths["heldout"])
    status, answer = post(device.url, {"instances": rows})
    if status != 200:
        raise SystemExit(f"demo: the agent refused the held-out rows ({status}): {answer}")
    labels = answer["outputs"]["label"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = joblib.load(paths["model"]).predict(pd.read_csv(paths["heldout"]).drop(columns=["species"])).tolist()
    agree = sum(a == b for a, b in zip(labels, want, strict=True))
    correct = sum(a == b for a, b in zip(labels, species, strict=True))
    stage(4, f"sent {len(rows)} held-out rows as raw JSON in one request ({{\"instances\": [{json.dumps(rows[0])}, ...]}}): "
             f"{correct / len(rows):.1%} correct, {agree}/{len(rows)} as the pipeline's own predict; row 0's island 'Atlantis' "
             f"is unseen (served, counted), rows 1-2 have nulls (imputed)")
    bad = rows[5] | {"body_mass_g": "heavy"}
    status, answer = post(device.url, {"instances": [rows[4], bad]})
    stage(5, f"a bad row answered {status}: {answer['error']['message']}")


def _drift(device: Device, paths: dict[str, Path], collector: Any) -> None:
    """Stage 6: rows from one island, one in five from an unknown island, until the collector raises a drift alert (≤ 60 s)."""
    rows, _ = _rows(paths["train"])
    rng = np.random.default_rng(0)
    before = len(collector.alerts)
    deadline, sent = time.monotonic() + 60, 0
    while time.monotonic() < deadline and len(collector.alerts) == before:
        batch = [rows[i] | {"island": "Torgersen" if k % 5 else "Atlantis"} for k, i in enumerate(rng.integers(0, len(rows), 100))]
        post(device.url, {"instances": batch})
        sent += len(batch)
        time.sleep(0.3)
    new = collector.alerts[before:]
    if new:
        stage(6, f"shifted the islands ({sent} rows, all Torgersen or unknown): drift alert on MQTT — {new[-1].get('message')}")
    else:
        stage(6, f"shifted the islands ({sent} rows) but no drift alert arrived within 60 s")


def run_tabular(out: Path, broker_url: str | None) -> int:
    """The tabular story under ``out`` (a fresh directory); ``broker_url`` None starts an embedded broker."""
    import logging

    from edgekit.monitor.collector import Collector

    t0 = time.monotonic()
    paths = _fit(out / "data")
    keys = out / "keys"
    cli("keys", "generate", "-o", str(keys))
    model = _compress(paths, out, keys)
    for name in ("amqtt", "transitions", "edgekit.monitor"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    broker = None
    if not broker_url:
        from edgekit.broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
        broker_url = broker.url
    collector = Collector(broker_url, out / "fleet.sqlite", share=None if broker else "edgekit-demo")
    collector.register(model)
    collector.start()
    device = Device(out / "device", model, broker_url, keys / "edgekit.pub")
    try:
        info = device.wait_ready()
        fields = [f["name"] for f in json.loads((model / "edgekit.json").read_text())["signature"]["fields"]]
        stage(3, f"MQTT broker at {broker_url}; agent serves {info.get('name')} {info.get('version')} on {device.url}, "
                 f"taking rows of {', '.join(fields)} (see {device.url}/openapi.json)")
        _predict(device, paths)
        _drift(device, paths, collector)
    finally:
        device.stop()
        collector.stop()
        if broker:
            broker.stop()
    stage(7, f"done in {time.monotonic() - t0:.0f} s; everything is under {out}/ (agent log: {device.root / 'agent.log'})")
    return 0
