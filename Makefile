# `make demo` and `make test` each do their own set-up on a fresh Debian 12 machine (run as root).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
# checkov pins a boto3 older than ours (requirements-checkov.txt): a venv of its own.
CHECKOV_VENV := .venv-checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov --framework cloudformation --quiet --compact --skip-download
# Lambda runs python3.12: prefer it (pyenv keeps it under its versions dir), else the system python3.
PYTHON ?= $(firstword $(wildcard /root/.pyenv/versions/3.12*/bin/python3.12) $(shell command -v python3.12 2>/dev/null) python3)
DEBIAN_PACKAGES := slurmctld slurmd slurm-client slurmdbd munge mariadb-server mariadb-client iproute2 util-linux procps shellcheck debootstrap
export SAM_CLI_TELEMETRY := 0

.PHONY: help setup system-packages test unit lint documents forwarder demo bench bench-rotation lab-up lab-down lab-roots clean

help:
	@echo "make demo   pair two local Slurm clusters through the real workflow (root, Linux)"
	@echo "make test   every test: unit, node scripts, workflow in moto, real Slurm lab, linters"

setup: system-packages $(VENV)/.installed node_modules/.installed

system-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: requirements-dev.txt functions/shared/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install -q -r requirements-checkov.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --silent --no-audit --no-fund
	touch $@

# Debian roots for the lab's Slurm 24.11 and 26.05 (built once per machine, cached under /var/cache)
lab-roots: setup
	$(PY) -m lab roots

test: setup lint lab-roots
	$(PY) -m pytest

unit: setup
	$(PY) -m pytest tests/unit tests/node_scripts tests/workflow

lint: setup $(CHECKOV_VENV)/.installed
	$(VENV)/bin/sam validate --lint
	$(VENV)/bin/sam validate --lint -t node-documents.yaml
	$(VENV)/bin/sam validate --lint -t region-forwarder.yaml
	for f in statemachine/*.asl.json; do node_modules/.bin/asl-validator --json-path "$$f" || exit 1; done
	shellcheck -x functions/shared/slurm_multicluster/node_scripts/*.sh
	$(CHECKOV) -f template.yaml  # every skip carries its reason in place (Metadata: checkov: skip)
	$(CHECKOV) -f node-documents.yaml
	$(CHECKOV) -f region-forwarder.yaml

# node-documents.yaml (the node scripts as SSM Command documents) from slurm_multicluster.ssm_documents
documents: $(VENV)/.installed
	PYTHONPATH=functions/shared $(PY) -m slurm_multicluster.ssm_documents > node-documents.yaml.new
	mv node-documents.yaml.new node-documents.yaml

# region-forwarder.yaml (each other FederationRegions region's rules forwarding to the home bus) from template.yaml
forwarder: $(VENV)/.installed
	$(PY) -m tools.region_forwarder > region-forwarder.yaml.new
	mv region-forwarder.yaml.new region-forwarder.yaml

demo: setup
	$(PY) -m lab roots $(if $(SLURM),$(SLURM),24.11)
	$(PY) -m lab.demo $(if $(SLURM),--slurm $(SLURM)) $(DEMO_ARGS)

bench: setup
	$(PY) bench/pairing.py

bench-rotation: setup
	$(PY) bench/rotation.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules .aws-sam .pytest_cache
