# edgekit — the two set-up commands are `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision: this pair lies on the build machines' disk (see README); other pairs download GBs.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install install-test mosquitto lint bench check-arm64 clean

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

install-test: install mosquitto

test: install-test
	$(BIN)/python -m pytest -q --basetemp=$(CURDIR)/.pytest_tmp -o cache_dir=$(CURDIR)/.pytest_cache tests || { rc=$$?; [ $$rc -eq 5 ] && echo "no tests collected" && exit 1; exit $$rc; }

demo: install
	$(BIN)/python -m edgekit.demo

lint: install
	$(BIN)/ruff check edgekit device_agent tests benchmarks

# Performance targets live here, printed as ratios measured in one run (not in timed unit tests).
bench: install
	$(BIN)/python benchmarks/compress_int8.py
	$(BIN)/python benchmarks/tflite_export.py
	$(BIN)/python benchmarks/prune_distill.py
	$(BIN)/python benchmarks/agent.py
	$(BIN)/python benchmarks/ota.py
	$(BIN)/python benchmarks/real_models.py

check-arm64:
	bash scripts/check-arm64.sh

clean:
	rm -rf $(VENV) .pytest_tmp .pytest_cache demo-out
