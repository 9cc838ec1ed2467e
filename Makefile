# The two front-door commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON    ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
# The device tier runs in a venv of its own with only what a Pi installs: linewatch[edge] and the test runner.
EDGE_VENV := .venv-edge
EDGE_BIN  := $(EDGE_VENV)/bin
EDGE_STAMP := $(EDGE_VENV)/.installed

.PHONY: demo demo-learn test test-device test-workstation lint docs schemas tiny-model dist pi-check soak bench bench-train bench-anomaly bench-line broker browser node-red clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,demo]'
	touch $(STAMP)

$(EDGE_BIN)/python:
	$(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_BIN)/pip install --quiet --upgrade pip

$(EDGE_STAMP): pyproject.toml | $(EDGE_BIN)/python
	$(EDGE_BIN)/pip install --quiet -e '.[edge,test]'
	touch $(EDGE_STAMP)

# mosquitto is the broker the tests run against; install it when it is missing.
broker:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing mosquitto (apt-get)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto >/dev/null; \
	else \
		echo "mosquitto is missing: install it with your package manager (the tests need a real broker)" >&2; exit 1; \
	fi

# Debian's Chromium drives the setup page's browser test (no browser is downloaded); install it when missing.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt-get), for the setup page's browser test"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "chromium is missing: the setup page's browser test will be skipped (install chromium to run it)" >&2; \
	fi

# Node-RED, the Modbus nodes of docs/node-red/'s flow and Eclipse Tahu's Sparkplug B decoder, from the npm registry
# into build/node, for the tests that run them (Debian's nodejs and npm). Where npm or its registry cannot be reached,
# those tests skip and say why (build/node/npm-error.log).
node-red:
	@mkdir -p build/node && cp docs/node-red/package.json build/node/package.json
	@if [ -f build/node/node_modules/.installed ] && cmp -s docs/node-red/package.json build/node/node_modules/.installed; then :; \
	elif ! command -v npm >/dev/null 2>&1; then echo "npm is missing: the Node-RED and Sparkplug decoder tests will skip" | tee build/node/npm-error.log >&2; \
	elif (cd build/node && npm install --no-audit --no-fund --loglevel=error >/dev/null 2>npm-error.log); then \
		cp docs/node-red/package.json build/node/node_modules/.installed; \
	else echo "npm install failed (build/node/npm-error.log): the Node-RED and Sparkplug decoder tests will skip" >&2; fi

demo: $(STAMP)
	$(BIN)/linewatch demo --workdir build/demo

# The line learns: three devices, a drift, the station, RUN2 --from RUN1, shadow, promotion (docs/station.md).
demo-learn: $(STAMP)
	$(BIN)/linewatch demo --learn --workdir build/demo

# ruff, then both type checkers over linewatch/ (the folders as the installed namespace): mypy, and pyright as editors
# run it.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/basedpyright -p pyproject.toml

# Regenerate what is generated from the code: payload schemas, configuration reference, exit-code tables.
docs: $(STAMP)
	$(BIN)/python docs/generate.py
schemas: docs

# The tiny int8 models the device tier runs on (needs TensorFlow; commit the result).
tiny-model: $(STAMP)
	$(BIN)/python tests/fixtures/make_tiny_model.py

# Unit, device and broker tests where TensorFlow is not even installed, as on a Pi.
test-device: $(EDGE_STAMP) broker browser node-red
	@$(EDGE_BIN)/python -c "import importlib.util, sys; sys.exit('TensorFlow is installed in $(EDGE_VENV)' if importlib.util.find_spec('tensorflow') else 0)"
	$(EDGE_BIN)/python -m pytest -m "not workstation"

# Training, conversion, packaging: the workstation tier.
test-workstation: $(STAMP) broker
	$(BIN)/python -m pytest -m workstation

# The README's test command: the lint and both tiers at once (each one's output when it ends). The device tier mostly
# waits (on brokers, daemons, a browser) and the lint is short: both fit in the share of the two cores TensorFlow's
# training leaves idle. Each alone: make lint, make test-device, make test-workstation.
test: broker browser node-red
	$(MAKE) --no-print-directory -j3 --output-sync=line test-workstation test-device lint

# The offline release for a Pi with no network (docs/raspberry-pi.md): dist/linewatch-VERSION-pi.tar.gz, the wheel and
# the aarch64 wheels of everything apt does not give, for bookworm and trixie, and its .sha256.
dist: $(STAMP)
	$(BIN)/python tests/pi/dist.py

# The Pi install of docs/raspberry-pi.md in emulated arm64 trixie and bookworm roots (root; roots cached in
# ~/.cache/linewatch/pi, about 30 minutes with them). qemu comes from trixie's qemu-user: bookworm's 7.2 crashes
# inside LiteRT's interpreter. PI_CHECK_FLAGS: e.g. --suite bookworm, --budget-s 3000 (see tests/pi/check.py).
pi-check: $(STAMP) broker
	$(BIN)/python tests/pi/check.py $(PI_CHECK_FLAGS)

# The bounded fault and bad-input run of docs/reliability.md (about 6 minutes; root for the network partition
# and the full disk, skipped with a message without it). It writes its table into docs/reliability.md.
soak: $(EDGE_STAMP) broker
	$(EDGE_BIN)/python tests/soak.py --record
	$(EDGE_BIN)/python docs/generate.py

# linewatch's figures on this host in one run (about 12 minutes on 2 cores): benchmarks/results.md, results.json and
# PNGs; the summary goes into the README. The device tier's venv is made too, for the import time without TensorFlow.
bench: $(STAMP) $(EDGE_STAMP) broker
	$(BIN)/python benchmarks/suite.py
	$(BIN)/python docs/generate.py

# Plain `linewatch train` against a classic CNN on four data sets and three seeds (about 40 minutes on 2 cores);
# the table goes into docs/training.md and, by `make docs`, the README.
bench-train: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/train_defaults.py --json --record
	$(BIN)/python docs/generate.py

# Anomaly models from good photos only: every method, three seeds, the line, real digit scans and one-class MNIST
# (about two hours on 2 cores, a run at a time; an interrupted run resumes); the tables go into docs/anomaly.md and,
# by `make docs`, the README.
bench-anomaly: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/anomaly.py --record
	$(BIN)/python docs/generate.py

# The simulated line with its photo-eye and reject gate: 300 parts, then inference stalled (about 2 minutes).
bench-line: $(STAMP)
	$(BIN)/python benchmarks/line.py --record
	$(BIN)/python docs/generate.py

clean:
	rm -rf build .pytest_cache
