# k8s-libvirt-lab. `make up` builds the lab; `make test` runs every test tier.
# Everything is installed by these targets: a fresh machine needs nothing by hand.

SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
LAB   := $(VENV)/bin/lab
STACK ?= dev
export LAB_STACK := $(STACK)

# Debian packages per use: rendering checks, the integration harness, the engine tier.
UNIT_DEBS        := cloud-init genisoimage
INTEGRATION_DEBS := openssh-server openssh-client iproute2 iptables openssl util-linux procps
ENGINE_DEBS      := libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base genisoimage iproute2

.PHONY: help venv up down preview plan diagnose verify engine image image-check lint test test-unit test-program \
        test-integration test-engine bench clean

help:
	@echo "make up        set up and run pulumi up (dev stack, local state)"
	@echo "make test      set up and run every test tier"
	@echo "make preview | down | plan | diagnose | verify | engine | image | lint | bench"

$(VENV)/.installed: requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.lock
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

venv: $(VENV)/.installed

# --- the lab -------------------------------------------------------------------------------
up: venv
	scripts/apt-ensure genisoimage
	$(LAB) preflight --stack $(STACK)
	scripts/pulumi up --yes --stack $(STACK)

preview: venv
	$(LAB) preflight --stack $(STACK)
	scripts/pulumi preview --stack $(STACK)

down: venv
	scripts/pulumi destroy --yes --stack $(STACK)

plan: venv
	$(LAB) plan --stack $(STACK)

diagnose: venv
	$(LAB) diagnose --stack $(STACK)

verify: venv
	$(LAB) verify --stack $(STACK)

engine:
	engine/build.sh

# The node image, offline: Debian's packages + Kubernetes built from Go modules (image/README.md).
IMAGE_DEBS := mmdebstrap extlinux syslinux-common fdisk e2fsprogs qemu-utils
image:
	scripts/apt-ensure $(IMAGE_DEBS)
	image/build.sh

image-check: image
	scripts/apt-ensure qemu-system-x86 genisoimage
	image/check.sh

# --- tests ---------------------------------------------------------------------------------
lint: venv
	$(VENV)/bin/ruff check lab tests benchmarks image __main__.py
	$(VENV)/bin/ruff format --check lab tests benchmarks image __main__.py
	$(VENV)/bin/mypy

test: lint test-unit test-program test-integration test-engine

test-unit: venv
	scripts/apt-ensure $(UNIT_DEBS)
	$(PY) -m pytest tests/unit

test-program: venv
	$(PY) -m pytest tests/program

test-integration: venv
	scripts/apt-ensure $(INTEGRATION_DEBS)
	$(PY) -m pytest tests/integration

test-engine: venv engine
	scripts/apt-ensure $(ENGINE_DEBS)
	$(PY) -m pytest tests/engine

# Speed figures live here, not in tests: lab join vs the seed's strategy, diagnose in parallel.
bench: venv
	scripts/apt-ensure $(INTEGRATION_DEBS)
	$(PY) -m benchmarks.join_bench --runs 3

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
