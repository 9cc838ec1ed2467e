# The two front-door commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test broker clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,demo]'
	touch $(STAMP)

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

demo: $(STAMP)
	$(BIN)/linewatch demo --workdir build/demo

test: $(STAMP) broker
	$(BIN)/python -m pytest

clean:
	rm -rf build .pytest_cache
