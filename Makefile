# soc-pipeline: the two commands a fresh Debian 12 machine needs (as root): `make up` and `make test`.
PYTHON ?= /usr/bin/python3
VENV   ?= .venv
BIN    := $(VENV)/bin
APT_PACKAGES := python3 python3-venv python3-dev build-essential git postgresql-15
DAY    ?= 2016-08-01
SCALE  ?= 0.001

.PHONY: up test deps venv lint unit bench clean

# Debian packages the project needs; installs only what is missing.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BIN)/soc: pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(BIN)/soc

# Provision the one-machine topology (as far as it exists) and run the main job on it.
up: venv
	$(BIN)/soc local-db start --dir var/pg
	SOC_WRITE_DSN="$$($(BIN)/soc local-db dsn --dir var/pg)" $(BIN)/soc run-day --date $(DAY) --scale $(SCALE) --workdir var

lint: venv
	$(BIN)/ruff check .

unit: venv
	$(BIN)/pytest

# The whole suite.
test: lint unit

bench: venv
	$(MAKE) --no-print-directory deps APT_PACKAGES=postgresql-15-q3c
	$(BIN)/python bench/bench_telemetry.py
	$(BIN)/python bench/bench_transits.py
	$(BIN)/python bench/bench_simulate.py
	$(BIN)/python bench/bench_image_params.py
	$(BIN)/python bench/bench_crossmatch.py
	$(BIN)/python bench/bench_load.py

clean:
	rm -rf var build dist *.egg-info
