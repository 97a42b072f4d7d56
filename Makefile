# karabo-async: set-up, checks, demo and benchmarks. `make demo` and `make test` are all a newcomer needs.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the dependencies change: the stamp is newer than pyproject.toml otherwise.
INSTALLED := $(VENV)/.installed
# Folders that may not exist yet on a fresh checkout (git keeps no empty folders).
CODE_DIRS := $(wildcard karabo_async tests devices macros bench)

.PHONY: help venv broker postgres check lint format test demo bench image container-smoke container-tools compose-tool clean

help:
	@echo "make demo             start a broker if none answers, then run the demo"
	@echo "make test             lint, type-check, check layering and run the whole test suite"
	@echo "make lint             ruff (check and format), mypy, import layering"
	@echo "make bench            run every benchmark in bench/"
	@echo "make venv | clean     (re)create the virtualenv | remove caches and build output"

venv: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,shell,logger]'
	touch $@

# A RabbitMQ that answers at $$KARABO_BROKER (default amqp://guest:guest@127.0.0.1:5672/), or a
# private node started in the background (see docs/broker.md).
broker: venv
	$(BIN)/python broker/local_node.py ensure

# PostgreSQL on 127.0.0.1:5432 with a database "test", for the archive tests.
postgres:
	bash scripts/ensure-postgres.sh

# What `make test` runs before the tests.
check: venv
	$(BIN)/ruff check $(CODE_DIRS)
	$(BIN)/mypy
	$(BIN)/lint-imports

lint: check
	$(BIN)/ruff format --check $(CODE_DIRS)

format: venv
	$(BIN)/ruff format $(CODE_DIRS)
	$(BIN)/ruff check --fix $(CODE_DIRS)

test: venv broker postgres compose-tool check
	$(BIN)/pytest -q

demo: venv broker
	$(BIN)/python -m karabo_async demo

bench: venv broker
	shopt -s nullglob; scripts=(bench/*.py); \
	if (( $${#scripts[@]} == 0 )); then echo "no benchmarks in bench/"; exit 0; fi; \
	for script in "$${scripts[@]}"; do echo "== $$script"; $(BIN)/python "$$script"; done

# The device-server image, built with podman on a Debian 12 base made here (no registry needed):
# debootstrap a root filesystem, `podman import` it once, then build the Dockerfile FROM it. The
# host's CA bundle (PIP_CERT) is mounted for pip when the site inspects HTTPS. See docs/server.md.
BASE_IMAGE ?= localhost/karabo-async/debian-base:bookworm
IMAGE ?= localhost/karabo-async/device-server:latest
DEBIAN_MIRROR ?= http://deb.debian.org/debian
HOST_CA := $(or $(PIP_CERT),$(wildcard /etc/ssl/certs/ca-certificates.crt))

image: container-tools
	if ! podman image exists $(BASE_IMAGE); then \
	  rootfs=$$(mktemp -d); trap 'rm -rf "$$rootfs"' EXIT; \
	  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$$rootfs" $(DEBIAN_MIRROR); \
	  tar -C "$$rootfs" -c . | podman import - $(BASE_IMAGE); \
	fi
	podman build --format docker --network host --build-arg BASE=$(BASE_IMAGE) \
	  $(if $(HOST_CA),-v $(HOST_CA):/run/host-ca.crt:ro --build-arg HOST_CA_BUNDLE=/run/host-ca.crt) \
	  -t $(IMAGE) .

# Outside `make test`: a server container on the host network, its devices checked from outside.
container-smoke: venv broker image
	$(BIN)/python docker/smoke.py --image $(IMAGE)

# podman and debootstrap for the image, docker-compose to validate docker-compose.yml (Debian packages).
container-tools:
	command -v podman >/dev/null && command -v debootstrap >/dev/null || \
	  (apt-get update -q && apt-get install -y -q podman debootstrap)

compose-tool:
	command -v docker-compose >/dev/null || (apt-get update -q && apt-get install -y -q docker-compose)

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info $(INSTALLED)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
