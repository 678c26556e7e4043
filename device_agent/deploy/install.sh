#!/usr/bin/env bash
# Install the edgekit device agent from a bundle made by `edgekit agent bundle`.
#
#   tar xzf pi-07.tar.gz && sudo ./install.sh
#
# What it does: checks every file of the bundle against SHA256SUMS (a modified or damaged file stops
# it, named in one line), creates a venv under --prefix, installs the agent's dependencies exactly as
# requirements.lock pins them (pip --require-hashes --no-deps: numpy, onnxruntime, paho-mqtt,
# cryptography, orjson, pysimdjson and what they need, each wheel checked against its sha256) and the edgekit
# wheel without its workstation dependencies, writes the config (and certificates, password) to
# --config-dir, puts the model in --state-dir/model, checks that the model loads and passes its
# self-test on this device, then installs and enables a sandboxed systemd unit running as a
# dedicated user, with a memory and task ceiling (--memory-max, --tasks-max).
# Re-running upgrades the agent; an existing agent.toml or model is kept (see --force-config).
set -euo pipefail

PREFIX=/opt/edgekit-agent
CONFIG_DIR=/etc/edgekit
STATE_DIR=/var/lib/edgekit
UNIT_DIR=/etc/systemd/system
AGENT_USER=edgekit
PYTHON=python3
SYSTEMD=1
CREATE_USER=1
CONSTRAINT=""
MEMORY_MAX=512M
TASKS_MAX=128
OFFLINE=0
IMAGES=0
FORCE_CONFIG=0
CHECK=1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
  cat <<USAGE
usage: install.sh [options]
  --prefix DIR        agent venv goes to DIR/venv             (default $PREFIX)
  --config-dir DIR    agent.toml, certificates, secrets        (default $CONFIG_DIR)
  --state-dir DIR     outbox, model                            (default $STATE_DIR)
  --unit-dir DIR      where the systemd unit is written        (default $UNIT_DIR)
  --user NAME         system user the agent runs as            (default $AGENT_USER)
  --python PATH       Python >= 3.10 with venv                 (default $PYTHON)
  --constraint FILE   a device that needs other versions than the bundle's lock, e.g. 'onnxruntime==1.27.0':
                      resolves requirements.txt under FILE from the package index (no hashes; recorded
                      in PREFIX/constraints.txt). Better: a bundle made with 'edgekit agent bundle --constraint'
  --offline           install only from the bundle's wheels/ (no package index; needs a --with-deps bundle)
  --with-images       also install Pillow and simplejpeg from the package index, for image/jpeg and image/png request bodies
                      (models compressed with --preprocess); not pinned by requirements.lock
  --memory-max SIZE   the unit's MemoryMax=: the kernel stops the agent above it and systemd restarts it
                      (default $MEMORY_MAX; e.g. 1G for a large model, or infinity)
  --tasks-max N       the unit's TasksMax=: threads and processes (default $TASKS_MAX, or infinity)
  --force-config      overwrite an existing agent.toml (default: keep it, write agent.toml.new)
  --no-systemd        write the unit file but do not enable/start it
  --no-user           do not create the user or chown (containers, tests)
  --no-check          skip 'edgekit-agent check' (model load + self-test) after installing
USAGE
}

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --config-dir) CONFIG_DIR="$2"; shift 2 ;;
    --state-dir) STATE_DIR="$2"; shift 2 ;;
    --unit-dir) UNIT_DIR="$2"; shift 2 ;;
    --user) AGENT_USER="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --constraint) CONSTRAINT="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
    --offline) OFFLINE=1; shift ;;
    --with-images) IMAGES=1; shift ;;
    --memory-max) MEMORY_MAX="$2"; shift 2 ;;
    --tasks-max) TASKS_MAX="$2"; shift 2 ;;
    --force-config) FORCE_CONFIG=1; shift ;;
    --no-systemd) SYSTEMD=0; shift ;;
    --no-user) CREATE_USER=0; shift ;;
    --no-check) CHECK=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1'" ;;
  esac
done

[ "$IMAGES" = 1 ] && [ "$OFFLINE" = 1 ] \
  && die "--with-images installs Pillow from the package index, which --offline forbids: drop one of them (or later: $PREFIX/venv/bin/pip install Pillow)"
[ -f "$HERE/agent.toml" ] || die "no agent.toml next to install.sh: run it from an unpacked 'edgekit agent bundle' archive"
[[ "$MEMORY_MAX" =~ ^([0-9]+[KMGT]?|[0-9]+(\.[0-9]+)?%|infinity)$ ]] \
  || die "--memory-max '$MEMORY_MAX' is not a size; use bytes with K, M, G or T (e.g. 512M, 1G), a percentage of RAM (50%) or infinity"
[[ "$TASKS_MAX" =~ ^([0-9]+|[0-9]+(\.[0-9]+)?%|infinity)$ ]] \
  || die "--tasks-max '$TASKS_MAX' is not a count; use a number (e.g. 128), a percentage of the system's limit, or infinity"

# --- the bundle as packed: every file against SHA256SUMS, nothing extra among the wheels ------------------
[ -f "$HERE/SHA256SUMS" ] && [ -f "$HERE/requirements.lock" ] \
  || die "no SHA256SUMS or requirements.lock next to install.sh: rebuild the bundle with this edgekit's 'edgekit agent bundle'"
while read -r sum name; do
  [ -f "$HERE/$name" ] || die "$name is missing from the bundle (SHA256SUMS lists it): unpack the whole archive again"
  got=$(sha256sum "$HERE/$name" | cut -d' ' -f1)
  [ "$got" = "$sum" ] || die "$name does not match its sha256 in SHA256SUMS: the bundle was modified or damaged; make it again with 'edgekit agent bundle'"
done < "$HERE/SHA256SUMS"
for w in "$HERE"/wheels/*.whl; do
  grep -qxF "wheels/$(basename "$w")" <(cut -d' ' -f3- "$HERE/SHA256SUMS") \
    || die "wheels/$(basename "$w") is not part of the bundle (SHA256SUMS does not list it): remove it"
done
EDGEKIT_WHEEL=$(cut -d' ' -f3- "$HERE/SHA256SUMS" | grep -E '^wheels/edgekit-[^/]+\.whl$' | tail -n 1 || true)
[ -n "$EDGEKIT_WHEEL" ] || die "no edgekit wheel in $HERE/wheels"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install python3 and python3-venv (apt-get install python3-venv)"
"$PYTHON" - <<'PY' || die "Python >= 3.10 with the venv module is required (apt-get install python3-venv)"
import sys, venv, ensurepip  # noqa: F401
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY
if [ "$CREATE_USER" = 1 ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo ./install.sh), or pass --no-user with directories you can write"
fi

VENV="$PREFIX/venv"
mkdir -p "$PREFIX" "$CONFIG_DIR" "$STATE_DIR" "$UNIT_DIR"

# --- the venv and the agent ---------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input -q install --find-links "$HERE/wheels")
[ "$OFFLINE" = 1 ] && PIP+=(--no-index)
pip_install() {  # pip's errors run to many lines: they go to a log, and the one line that matters is said
  local log bad
  log=$(mktemp "${TMPDIR:-/tmp}/edgekit-install-pip.XXXXXX")
  if "${PIP[@]}" "$@" >"$log" 2>&1; then rm -f "$log"; return 0; fi
  bad=$(sed -n '/DO NOT MATCH THE HASHES/,$p' "$log" | sed -nE 's|^[[:space:]]+([^[:space:]]+==[^[:space:]]+) from ([^[:space:]]*/)?([^/[:space:]]+)( \(from .*\))?:$|\1 (\3)|p' | head -n 1)
  [ -z "$bad" ] || die "$bad does not match its sha256 in requirements.lock: the wheel was modified, or the index serves another file; make the bundle again (pip's output: $log)"
  die "pip failed: $(grep -E '^ERROR' "$log" | tail -n 1 || tail -n 1 "$log") (pip's output: $log)"
}
if [ -n "$CONSTRAINT" ]; then
  say "--constraint $(basename "$CONSTRAINT"): resolving requirements.txt under it from the package index (not the bundle's lock, whose hashes are for other versions)"
  pip_install -r "$HERE/requirements.txt" -c "$CONSTRAINT"
  cp -f "$CONSTRAINT" "$PREFIX/constraints.txt"
else
  say "installing the agent's dependencies as requirements.lock pins them ($(grep -oE '^[A-Za-z0-9._-]+==[^ ]+' "$HERE/requirements.lock" | paste -sd ' ')), each checked against its sha256"
  pip_install --require-hashes --no-deps -r "$HERE/requirements.lock"
  rm -f "$PREFIX/constraints.txt"
fi
cp -f "$HERE/requirements.lock" "$PREFIX/requirements.lock"  # what this device was installed from, for the record
# the edgekit wheel carries the agent; its workstation dependencies (onnx, torch, ...) are not needed here
say "installing $(basename "$EDGEKIT_WHEEL")"
pip_install --no-deps --force-reinstall "$HERE/$EDGEKIT_WHEEL"
if [ "$IMAGES" = 1 ]; then
  # Pillow and simplejpeg have wheels for aarch64 and x86_64; they are the agent-images extra, outside the bundle's lock.
  # simplejpeg decodes a plain JPEG straight into the array (~0.7 ms less for 640x480); Pillow does the rest
  say "installing Pillow and simplejpeg (--with-images: JPEG and PNG request bodies)"
  pip_install "Pillow>=10" "simplejpeg>=1.7"
fi

# --- config, secrets, model -------------------------------------------------------------------
render() {  # fill in the install locations
  sed -e "s|@CONFIG_DIR@|$CONFIG_DIR|g" -e "s|@STATE_DIR@|$STATE_DIR|g" -e "s|@PREFIX@|$PREFIX|g" -e "s|@USER@|$AGENT_USER|g" \
      -e "s|@MEMORY_MAX@|$MEMORY_MAX|g" -e "s|@TASKS_MAX@|$TASKS_MAX|g" "$1"
}
if [ -f "$CONFIG_DIR/agent.toml" ] && [ "$FORCE_CONFIG" = 0 ]; then
  render "$HERE/agent.toml" > "$CONFIG_DIR/agent.toml.new"
  say "kept the existing $CONFIG_DIR/agent.toml; the bundle's is in agent.toml.new (use --force-config to replace)"
else
  render "$HERE/agent.toml" > "$CONFIG_DIR/agent.toml"
fi
for d in certs secrets keys; do
  if [ -d "$HERE/$d" ]; then
    mkdir -p "$CONFIG_DIR/$d"
    cp -f "$HERE/$d"/* "$CONFIG_DIR/$d/"
    chmod 0750 "$CONFIG_DIR/$d"
    find "$CONFIG_DIR/$d" -type f \( -name '*.key' -o -path '*/secrets/*' \) -exec chmod 0640 {} +
  fi
done
if [ -d "$HERE/model" ]; then
  if [ -e "$STATE_DIR/model/edgekit.json" ]; then
    say "kept the model in $STATE_DIR/model (updates go through the fleet)"
  else
    mkdir -p "$STATE_DIR/model.tmp"
    cp -f "$HERE/model"/* "$STATE_DIR/model.tmp/"
    rm -rf "$STATE_DIR/model"
    mv "$STATE_DIR/model.tmp" "$STATE_DIR/model"
  fi
fi

if [ "$CREATE_USER" = 1 ]; then
  if ! id -u "$AGENT_USER" >/dev/null 2>&1; then
    say "creating system user $AGENT_USER"
    useradd --system --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin "$AGENT_USER"
  fi
  chown -R "$AGENT_USER:$AGENT_USER" "$STATE_DIR"
  chown -R "root:$AGENT_USER" "$CONFIG_DIR"
  chmod 0750 "$CONFIG_DIR"
  chmod 0640 "$CONFIG_DIR/agent.toml"
fi

# --- prove it works here before enabling it ---------------------------------------------------
if [ "$CHECK" = 1 ]; then
  say "checking the model on this device (load + self-test)"
  if [ "$CREATE_USER" = 1 ] && command -v runuser >/dev/null 2>&1; then
    runuser -u "$AGENT_USER" -- "$VENV/bin/edgekit-agent" check --config "$CONFIG_DIR/agent.toml"
  else
    "$VENV/bin/edgekit-agent" check --config "$CONFIG_DIR/agent.toml"
  fi
fi

# --- systemd --------------------------------------------------------------------------------------
render "$HERE/edgekit-agent.service" > "$UNIT_DIR/edgekit-agent.service"
if [ "$SYSTEMD" = 1 ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable edgekit-agent.service
  systemctl restart edgekit-agent.service
  say "edgekit-agent is running: systemctl status edgekit-agent; journalctl -u edgekit-agent -f"
else
  say "unit written to $UNIT_DIR/edgekit-agent.service (systemd not used); run: $VENV/bin/edgekit-agent run --config $CONFIG_DIR/agent.toml"
fi
say "done"
