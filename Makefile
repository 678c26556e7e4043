# edgekit — the two set-up commands are `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision: this pair lies on the build machines' disk (see README); other pairs download GBs.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install install-test mosquitto test-debs lint bench check-arm64 clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml Makefile
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[all]' $(TORCH_PINS)
	touch $@

install: $(VENV)/.installed

# Mosquitto is a real broker the MQTT tests start and stop themselves.
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || \
	  { (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; }

# Debian packages the tests use: buildah + debootstrap (the container image test), PostgreSQL, Prometheus
# (promtool), Chromium and its driver. Installed only when one is missing, without recommends (they would
# pull in systemd), and no system service is started: the tests start their own instances.
TEST_DEBS := buildah debootstrap postgresql prometheus chromium chromium-driver
test-debs:
	@missing=$$(for p in $(TEST_DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -qx 'install ok installed' || echo $$p; done); \
	[ -z "$$missing" ] && exit 0; \
	[ "$$(id -u)" = 0 ] || { echo "make test-debs: missing Debian packages:" $$missing "- run as root or: sudo apt-get install" $$missing >&2; exit 1; }; \
	echo "installing Debian packages for the tests:" $$missing; \
	made=; [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made=1; }; \
	(apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; rc=$$?; \
	[ -z "$$made" ] || rm -f /usr/sbin/policy-rc.d; exit $$rc

install-test: install mosquitto test-debs

test: install-test lint
	$(BIN)/python -m pytest -q --basetemp=$(CURDIR)/.pytest_tmp -o cache_dir=$(CURDIR)/.pytest_cache tests || { rc=$$?; [ $$rc -eq 5 ] && echo "no tests collected" && exit 1; exit $$rc; }

demo: install
	$(BIN)/python -m edgekit.demo

# The house rules, checked: style (ruff), types (mypy: the agent, the fleet side, the library's public API),
# architecture (import-linter contracts in pyproject.toml: layers, no cycles, the agent stays light) and size
# (scripts/check_layout.py: modules <= 400 lines, functions <= 60, <= 6 positional parameters).
lint: install
	$(BIN)/ruff check edgekit device_agent tests benchmarks scripts
	$(BIN)/python scripts/check_layout.py
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# Performance targets live here, printed as ratios measured in one run (not in timed unit tests).
bench: install
	$(BIN)/python benchmarks/compress_int8.py
	$(BIN)/python benchmarks/tflite_export.py
	$(BIN)/python benchmarks/tflite_int8_matrix.py
	$(BIN)/python benchmarks/prune_distill.py
	$(BIN)/python benchmarks/agent.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/ota.py
	$(BIN)/python benchmarks/real_models.py
	$(BIN)/python benchmarks/fleet_scale.py --quick

check-arm64:
	bash scripts/check-arm64.sh

clean:
	rm -rf $(VENV) .pytest_tmp .pytest_cache demo-out
