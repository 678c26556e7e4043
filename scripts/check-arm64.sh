#!/usr/bin/env bash
# make check-arm64 — prove the Raspberry Pi path on an emulated arm64 Debian (opt-in: minutes).
#
# In the arm64 root built by ../shared/tools/arm64-root.sh (Debian bookworm, Python 3.11, qemu-user):
# the bundle from `edgekit agent bundle --with-deps`, locked for aarch64 / Python 3.11 under a
# constraint that pins onnxruntime to a version the emulator runs, installs offline with install.sh
# (every wheel checked against the lock's sha256), the agent starts, reports its runtime against the
# one the model was validated with (here: another minor release, so the self-test decides), passes
# its self-test, answers a prediction over HTTP and publishes telemetry to a Mosquitto on this machine.
# Then the agent's LiteRT backend runs edgekit's .tflite files (stripped; full-int8 and fp16) there and
# must give the outputs it gives here.
#
#   bash scripts/check-arm64.sh                 # ARM64_ROOT=/tmp/arm64root ORT_VERSION=1.27.0 LITERT_VERSION=1.4.0
#   KEEP=1 bash scripts/check-arm64.sh          # leave the agent's files in the root for a look
#
# Needs root (debootstrap, chroot) and network access to the package index. Exit 0 = all passed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
R=${ARM64_ROOT:-/tmp/arm64root}
ORT_VERSION=${ORT_VERSION:-1.27.0}   # qemu 7.2 cannot run onnxruntime >= 1.28 (real Pis can)
LITERT_VERSION=${LITERT_VERSION:-1.4.0}  # ...nor ai-edge-litert 2.x (segfaults loading any model; 1.4.0 runs)
PY=${PY:-$REPO/.venv/bin/python}
TOOLS=${TOOLS:-$REPO/../shared/tools}
WORK=$(mktemp -d /tmp/edgekit-arm64-check.XXXXXX)
DEVICE=arm64-check
BROKER_PID=""

say() { echo "check-arm64: $*"; }
fail() { echo "check-arm64: FAILED: $*" >&2; exit 1; }

cleanup() {
  stop_chroot_agent
  [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
stop_chroot_agent() {
  # the agent runs under qemu inside the root: stop exactly the process we started (its pid file)
  if [ -f "$R/run-edgekit-agent.pid" ]; then
    kill "$(cat "$R/run-edgekit-agent.pid")" 2>/dev/null || true
    rm -f "$R/run-edgekit-agent.pid"
  fi
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || fail "run as root (debootstrap and chroot need it)"
[ -x "$PY" ] || fail "no $PY: run 'make install' first"
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || fail "mosquitto is not installed: make mosquitto"
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

say "1/7 the arm64 root ($R)"
bash "$TOOLS/arm64-root.sh" "$R" | sed 's/^/  /'
[ "$(chroot "$R" uname -m)" = aarch64 ] || fail "the root does not run aarch64 code"

say "2/7 a model: the digits CNN, edgekit compress --int8"
"$PY" -m edgekit.examples.digits "$WORK/digits" >/dev/null 2>&1
"$PY" -c "import sys; from edgekit.cli.main import main; main(sys.argv[1:])" compress --int8 --data "$WORK/digits/calib.npz" \
  -o "$WORK/model" "$WORK/digits/digits.onnx" >/dev/null 2>&1 || fail "edgekit compress failed"

say "3/7 a Mosquitto on 127.0.0.1 and the device bundle"
read -r MQTT_PORT API_PORT < <("$PY" -c "
import socket
ports = []
for _ in range(2):
    s = socket.socket(); s.bind(('127.0.0.1', 0)); ports.append(s.getsockname()[1]); s.close()
print(*ports)")
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n' "$MQTT_PORT" > "$WORK/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
BROKER_PID=$!
echo "onnxruntime==$ORT_VERSION" > "$WORK/constraints.txt"
"$PY" -c "import sys; from edgekit.cli.main import main; main(sys.argv[1:])" agent bundle --device-id "$DEVICE" \
  --broker "mqtt://127.0.0.1:$MQTT_PORT" --model "$WORK/model" --set "api.port=$API_PORT" --set telemetry.interval_s=2 \
  --set model.threads=1 --with-deps --platform manylinux_2_36_aarch64 --python-version 3.11 \
  --constraint "$WORK/constraints.txt" --lock "$WORK/aarch64.lock" -o "$WORK/bundle.tar.gz" | sed 's/^/  /' \
  || fail "edgekit agent bundle failed"

say "4/7 install.sh inside the arm64 root (offline, from the bundle's lock for aarch64: onnxruntime==$ORT_VERSION)"
rm -rf "$R/root/edgekit-bundle" "$R/opt/edgekit-agent" "$R/etc/edgekit" "$R/var/lib/edgekit"
mkdir -p "$R/root/edgekit-bundle"
tar xzf "$WORK/bundle.tar.gz" -C "$R/root/edgekit-bundle"
T0=$(date +%s)
chroot "$R" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  bash /root/edgekit-bundle/install.sh --no-systemd --offline 2>&1 | sed 's/^/  /' || fail "install.sh failed in the arm64 root"
say "   installed in $(( $(date +%s) - T0 )) s"
grep -qE '^(MemoryMax|TasksMax)=' "$R/etc/systemd/system/edgekit-agent.service" || fail "the unit has no MemoryMax/TasksMax"
cp "$WORK/aarch64.lock" "$R/root/aarch64.lock"
chroot "$R" /opt/edgekit-agent/venv/bin/python -c "
import importlib.metadata as m, importlib.util as u, platform, re
heavy = [x for x in ('onnx', 'torch', 'tensorflow', 'pydantic') if u.find_spec(x)]
assert not heavy, heavy
pins = dict(re.findall(r'^([A-Za-z0-9._-]+)==(\\S+)', open('/root/aarch64.lock').read(), re.M))
got = {n: m.version(n) for n in pins}
assert got == pins, (got, pins)
print('  ', platform.machine(), 'onnxruntime', got['onnxruntime'], '- the lock exactly (%d wheels); no onnx/torch/tensorflow/pydantic' % len(pins))
import simdjson
assert simdjson.Parser().parse(b'[1.5, 2]').as_list() == [1.5, 2]
print('   pysimdjson', got['pysimdjson'], 'imports and parses')"

say "5/7 start the agent (as user edgekit, inside the root)"
chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/var/lib/edgekit LANG=C.UTF-8 bash -c \
  'runuser -u edgekit -- /opt/edgekit-agent/venv/bin/edgekit-agent run --config /etc/edgekit/agent.toml >/var/lib/edgekit/agent.log 2>&1 & echo $! > /run-edgekit-agent.pid'
T0=$(date +%s)

say "6/7 ready, a prediction over HTTP, telemetry on the broker"
"$PY" - "$API_PORT" "$MQTT_PORT" "$DEVICE" "$WORK/digits/eval.npz" "$R/run-edgekit-agent.pid" <<'PY' || { cat "$R/var/lib/edgekit/agent.log" >&2 || true; fail "the agent did not serve"; }
import json, os, sys, time, urllib.request
import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

api, mqtt_port, device, eval_npz = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
got = []
c = paho.Client(CallbackAPIVersion.VERSION2, client_id="arm64-check-sub")
c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"edgekit/v1/{device}/#", qos=1)
c.on_message = lambda cl, u, m: got.append((m.topic, json.loads(m.payload)))
c.connect("127.0.0.1", mqtt_port)
c.loop_start()
t0 = time.monotonic()
deadline = t0 + 600  # emulation is 10-30x slower than a Pi
pid = int(open(sys.argv[5]).read())
while time.monotonic() < deadline:
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{api}/readyz", timeout=5).status == 200:
            break
    except OSError:
        time.sleep(1)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("the agent exited before it was ready")
else:
    sys.exit("not ready within 600 s")
print(f"   ready {time.monotonic() - t0:.0f} s after the check started polling")
x = np.load(eval_npz)["x"][:2]
req = urllib.request.Request(f"http://127.0.0.1:{api}/v1/predict", data=json.dumps({"inputs": {"x": x.tolist()}}).encode(),
                             headers={"Content-Type": "application/json"})
body = json.loads(urllib.request.urlopen(req, timeout=120).read())
assert len(body["outputs"]["logits"]) == 2, body
print(f"   prediction: top-1 {[t[0]['label'] for t in body['top_k']]} in {body['latency_ms']:.1f} ms (runtime)")
# a body over 256 KB takes the agent's simdjson path (pysimdjson's aarch64 wheel, NEON): its answer must be the
# .npy body's, value for value
import io
# [api] max_batch (256) samples, each value given a float32's full digits so that the body passes 256 KB
big = (np.load(eval_npz)["x"][:256] + np.random.default_rng(0).uniform(0, 1e-3, (256, 1, 8, 8))).astype(np.float32)
doc = json.dumps({"inputs": {"x": big.tolist()}}).encode()
assert len(doc) > 256 * 1024, len(doc)
npy = io.BytesIO()
np.save(npy, big)
answers = []
for data, ctype in ((doc, "application/json"), (npy.getvalue(), "application/x-npy")):
    r = urllib.request.Request(f"http://127.0.0.1:{api}/v1/predict", data=data, headers={"Content-Type": ctype})
    answers.append(np.asarray(json.loads(urllib.request.urlopen(r, timeout=300).read())["outputs"]["logits"]))
assert answers[0].shape == (256, 10) and np.array_equal(answers[0], answers[1]), "large JSON and .npy bodies answer differently"
print(f"   a {len(doc) / 2**20:.1f} MB JSON body (256 samples) answers exactly as its .npy body")
info = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{api}/v1/model", timeout=30).read())
print(f"   model {info['name']} {info['version']} via {info['runtime']} ({info['artifact']}), self-test {info['selftest']['detail']}")
rc = info["runtime_check"]
print(f"   runtime check: {rc['status']} ({rc['detail']})")
assert rc["installed"] and rc["validated"] and rc["status"] in ("match", "drift", "mismatch"), rc
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    tel = [p for t, p in got if t.endswith("/telemetry") and p.get("requests", 0) >= 1]
    if tel:
        break
    time.sleep(1)
else:
    sys.exit(f"no telemetry with the prediction within 300 s; got topics {sorted({t for t, _ in got})}")
state = [p for t, p in got if t.endswith("/state")]
print(f"   telemetry seq {tel[0]['seq']}: {tel[0]['requests']} request(s), latency p50 {tel[0]['latency_ms']['p50']} ms; "
      f"state {state[-1]['status'] if state else '?'} on {state[-1]['hardware'].get('machine') if state else '?'}")
assert tel[0]["agent_version"] and tel[0]["runtime"].get("onnxruntime") == rc["installed"] and tel[0]["runtime_check"] == rc, tel[0]
assert state and state[-1]["runtime_check"] == rc and state[-1]["runtime"].get("onnxruntime") == rc["installed"], state[-1:]
c.loop_stop()
PY
stop_chroot_agent

say "7/7 .tflite artifacts under the agent's LiteRT backend (ai-edge-litert==$LITERT_VERSION)"
EDGEKIT=(-c "import sys; from edgekit.cli.main import main; main(sys.argv[1:])")
"$PY" "${EDGEKIT[@]}" compress --int8 --data "$WORK/digits/calib.npz" --format tflite -o "$WORK/tflite-int8" \
  "$WORK/digits/digits.onnx" >/dev/null 2>&1 || fail "edgekit compress --int8 --format tflite failed"
"$PY" "${EDGEKIT[@]}" compress --fp16 --format tflite -o "$WORK/tflite-fp16" \
  "$WORK/digits/digits.onnx" >/dev/null 2>&1 || fail "edgekit compress --fp16 --format tflite failed"
CHECK='
import sys
import numpy as np
from device_agent.contract.manifest import load_manifest
from device_agent.runtime import open_backend
x = np.load(sys.argv[2])["x"][:16]
out = {}
for d in sys.argv[3:]:
    m = load_manifest(d, verify_files=True)
    art = next(a for a in m.artifacts if a.format == "tflite")
    out[art.file] = open_backend(f"{d}/{art.file}", art, threads=1).run({"x": x})["logits"]
np.savez(sys.argv[1], **out)
'
"$PY" -c "$CHECK" "$WORK/expected.npz" "$WORK/digits/eval.npz" "$WORK/tflite-int8" "$WORK/tflite-fp16"
rm -rf "$R/root/tflite-check" && mkdir -p "$R/root/tflite-check"
cp -r "$WORK/tflite-int8" "$WORK/tflite-fp16" "$WORK/digits/eval.npz" "$WORK/expected.npz" "$R/root/tflite-check/"
chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  /opt/edgekit-agent/venv/bin/pip install -q "ai-edge-litert==$LITERT_VERSION" 2>&1 | grep -v "/opt/wheels" | sed 's/^/  /' || true
chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 /opt/edgekit-agent/venv/bin/python -c "$CHECK" \
  /root/tflite-check/got.npz /root/tflite-check/eval.npz /root/tflite-check/tflite-int8 /root/tflite-check/tflite-fp16 \
  || fail "the agent's LiteRT backend cannot run the .tflite files on aarch64"
"$PY" - "$WORK/expected.npz" "$R/root/tflite-check/got.npz" <<'PY' || fail "the .tflite outputs on aarch64 differ from this machine's"
import sys
import numpy as np
want, got = np.load(sys.argv[1]), np.load(sys.argv[2])
for k in want.files:
    err = float(np.abs(want[k] - got[k]).max())
    same = bool((want[k].argmax(1) == got[k].argmax(1)).all())
    print(f"   {k}: max abs difference from x86 {err:.3g}, top-1 {'identical' if same else 'DIFFERENT'}")
    assert same and err <= 1e-3 * max(1.0, float(np.abs(want[k]).max())), k
PY
[ "${KEEP:-0}" = 1 ] || rm -rf "$R/root/edgekit-bundle" "$R/root/tflite-check"
say "PASSED: the bundle installs, the agent serves and reports on aarch64 (onnxruntime $ORT_VERSION), and runs the .tflite files (ai-edge-litert $LITERT_VERSION)"
