# k8s-libvirt-lab. `make up` builds the lab; `make test` runs every test tier.
# Everything is installed by these targets: a fresh machine needs nothing by hand.

SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
LAB   := $(VENV)/bin/lab
STACK ?= dev
export LAB_STACK := $(STACK)

# Debian packages per use: rendering checks and seed ISOs, the integration harness, libvirt (the
# lab, engine, e2e).
UNIT_DEBS        := cloud-init genisoimage haproxy xsltproc
INTEGRATION_DEBS := openssh-server openssh-client iproute2 iptables openssl util-linux procps \
                    keepalived haproxy curl qemu-utils
LIBVIRT_DEBS     := libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base \
                    genisoimage xsltproc iproute2 util-linux
IMAGE_DEBS       := mmdebstrap extlinux syslinux-common fdisk e2fsprogs qemu-utils

.PHONY: help venv up down preview plan diagnose verify engine image image-check lint test test-unit test-program \
        test-integration test-engine test-e2e e2e-ha bench bench-cluster clean

help:
	@echo "make up        set up and run pulumi up (dev stack, local state)"
	@echo "make test      set up and run every test tier"
	@echo "make preview | down | plan | diagnose | verify | engine | image | lint | bench | bench-cluster | e2e-ha"
	@echo "then: .venv/bin/lab kubectl get nodes | lab ssh cp1 -- CMD | lab diagnose"

$(VENV)/.installed: requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.lock
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

venv: $(VENV)/.installed

# --- the lab -------------------------------------------------------------------------------
# Where the host runs no libvirtd, `lab libvirtd start` starts the lab's own in a network
# namespace; `lab libvirtd exec` runs pulumi there (other `lab` commands enter it by themselves).
IN_LAB := $(LAB) libvirtd exec --stack $(STACK) --

up: venv image engine
	scripts/apt-ensure $(LIBVIRT_DEBS)
	$(LAB) libvirtd start --stack $(STACK)
	$(LAB) preflight --stack $(STACK)
	$(IN_LAB) scripts/pulumi up --yes --stack $(STACK)

# What `make up` does before its `pulumi up`, then the preview (the node image is not needed).
preview: venv engine
	scripts/apt-ensure $(LIBVIRT_DEBS)
	$(LAB) libvirtd start --stack $(STACK)
	$(LAB) preflight --preview --stack $(STACK)
	$(IN_LAB) scripts/pulumi preview --stack $(STACK)

down: venv
	$(IN_LAB) scripts/pulumi destroy --yes --stack $(STACK)
	$(LAB) libvirtd stop --stack $(STACK)

plan: venv
	$(LAB) plan --stack $(STACK)

diagnose: venv
	$(LAB) diagnose --stack $(STACK)

verify: venv
	$(LAB) verify --stack $(STACK)

engine:
	engine/build.sh

# The node image of kubernetes.version (or VERSION=1.36.3), offline: Debian's packages + Kubernetes
# built from Go modules (image/README.md); cached by its stamps outside the clone.
image: venv
	scripts/apt-ensure $(IMAGE_DEBS)
	image/build.sh $(or $(VERSION),$$($(LAB) version --short --stack $(STACK)))

image-check: image
	scripts/apt-ensure qemu-system-x86 genisoimage
	image/check.sh $(or $(VERSION),$$($(LAB) version --short --stack $(STACK)))

# --- tests ---------------------------------------------------------------------------------
lint: venv
	$(VENV)/bin/ruff check lab tests benchmarks image __main__.py
	$(VENV)/bin/ruff format --check lab tests benchmarks image __main__.py
	$(VENV)/bin/mypy

test: lint test-unit test-program test-integration test-engine test-e2e

test-unit: venv
	scripts/apt-ensure $(UNIT_DEBS)
	$(PY) -m pytest tests/unit

test-program: venv
	scripts/apt-ensure $(UNIT_DEBS)
	$(PY) -m pytest tests/program

test-integration: venv
	scripts/apt-ensure $(INTEGRATION_DEBS)
	$(PY) -m pytest tests/integration

test-engine: venv engine
	scripts/apt-ensure $(LIBVIRT_DEBS) $(INTEGRATION_DEBS)
	$(PY) -m pytest tests/engine

# The e2e tiers make a cluster of LAB_UPGRADE_FROM, then upgrade it in place to kubernetes.version.
export LAB_UPGRADE_FROM := 1.36.3

# A real cluster (1 control plane + 1 worker) from the node image, under software emulation,
# upgraded with a workload serving: about 20-35 min on a 2-core host (docs/testing.md).
test-e2e: venv engine image
	scripts/apt-ensure $(LIBVIRT_DEBS)
	$(MAKE) image VERSION=$(LAB_UPGRADE_FROM)
	$(PY) -m pytest -s tests/e2e/test_cluster.py

# The HA cluster (3 control planes behind the VIP + 1 worker), failover, scaling and a partition:
# over an hour on a 2-core host, so by hand, not in `make test` (docs/testing.md).
e2e-ha: venv engine image
	scripts/apt-ensure $(LIBVIRT_DEBS)
	$(MAKE) image VERSION=$(LAB_UPGRADE_FROM)
	$(PY) -m pytest -s tests/e2e/test_ha.py

# Speed figures live here, not in tests: lab join vs the seed's strategy, diagnose in parallel.
bench: venv
	scripts/apt-ensure $(INTEGRATION_DEBS)
	$(PY) -m benchmarks.join_bench --runs 3

# The real cluster: pulumi up to Ready against its floor, then the lab's joins against the seed's
# on the same guests (two hours or more on a 2-core host: run 2 had 78 min of pulumi up).
bench-cluster: venv engine image
	scripts/apt-ensure $(LIBVIRT_DEBS)
	$(PY) -u -m benchmarks.cluster_bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
