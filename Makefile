# Two commands: `make run` (the default experiment) and `make test` (the suite).
# Each creates .venv and installs what it needs the first time; later calls install nothing.
# What they install comes from lock files with a SHA-256 for every file (pip --require-hashes):
# requirements.lock (fedstack's core, every extra but ray, the test and docs tools, the build backend) and
# requirements-ray.lock (the `ray` extra, installed by `make test` and `make ray` only).
# `make lock` regenerates both after a change to the dependencies in pyproject.toml.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP   := $(VENV)/.fedstack-installed
RAY_STAMP := $(VENV)/.fedstack-ray-installed
ARGS    ?=

.PHONY: run test data browser setup ray lock clean proto

run: setup data
	$(VENV)/bin/fedstack run $(ARGS)

test: setup ray data browser
	$(PY) -m pytest tests

setup: $(STAMP)

# Every file checked against the lock's SHA-256, torch included: the lock pins the CPU build that
# pip finds on this kind of machine's disk (its pip configuration names the folder), so no other
# torch (a multi-GB CUDA build) can come in. fedstack itself is then installed editable, without
# dependencies and with the locked setuptools as its build backend (no unpinned download).
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --require-hashes -r requirements.lock
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

# Ray (engine.name = "ray") is an optional extra: the suite's Ray tests need it, `make run` does not.
ray: $(RAY_STAMP)

$(RAY_STAMP): $(STAMP) requirements-ray.lock
	$(PIP) --require-hashes -r requirements-ray.lock
	touch $@

# Regenerate the lock files with pip-tools in a throwaway environment; the versions they pin stay
# unless pyproject.toml asks otherwise (LOCKARGS=--upgrade moves everything to the newest).
PIP_TOOLS ?= pip-tools==7.7.0
LOCKARGS  ?=
LOCK      := --quiet --allow-unsafe --generate-hashes --no-emit-index-url --no-emit-find-links --strip-extras

lock:
	d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && $(PYTHON) -m venv "$$d" && \
	"$$d/bin/pip" install --quiet --disable-pip-version-check '$(PIP_TOOLS)' && \
	"$$d/bin/pip-compile" $(LOCK) $(LOCKARGS) --extra test --all-build-deps -o requirements.lock pyproject.toml && \
	"$$d/bin/pip-compile" $(LOCK) $(LOCKARGS) --extra ray -c requirements.lock -o requirements-ray.lock pyproject.toml

# Fashion-MNIST from Debian's package when it is missing and apt-get exists; otherwise the
# loader's error says where it looked and how to get the files.
data: setup
	@$(VENV)/bin/fedstack data fashion_mnist >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    echo "installing Debian's dataset-fashion-mnist"; \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	  else $(VENV)/bin/fedstack data fashion_mnist; fi; }

# The dashboard's browser tests drive a real headless Chromium through Playwright: Debian's chromium package
# (Playwright's own browser download needs a host it may not reach), installed when missing and apt-get exists.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    echo "installing Debian's chromium"; \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; \
	  else echo "the dashboard's browser tests need chromium on PATH"; fi; }

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis

# Regenerate the protobuf and gRPC modules after editing src/fedstack/transport/fedstack.proto.
proto: setup
	$(PY) -m pip install --quiet -e '.[dev]'
	cd src && ../$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
	  fedstack/transport/fedstack.proto
