# Two commands: `make run` (the default experiment) and `make test` (the suite).
# Each creates .venv and installs what it needs the first time; later calls install nothing.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.fedstack-installed
ARGS    ?=

.PHONY: run test data setup clean proto

run: setup data
	$(VENV)/bin/fedstack run $(ARGS)

test: setup data
	$(PY) -m pytest tests

setup: $(STAMP)

# torch first, pinned: this version is a CPU build on local disk; an unpinned torch pulled in
# by another package would download a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,ray]'
	touch $@

# Fashion-MNIST from Debian's package when it is missing and apt-get exists; otherwise the
# loader's error says where it looked and how to get the files.
data: setup
	@$(VENV)/bin/fedstack data fashion_mnist >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    echo "installing Debian's dataset-fashion-mnist"; \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	  else $(VENV)/bin/fedstack data fashion_mnist; fi; }

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis

# Regenerate the protobuf and gRPC modules after editing src/fedstack/transport/fedstack.proto.
proto: setup
	$(PY) -m pip install --quiet -e '.[dev]'
	cd src && ../$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
	  fedstack/transport/fedstack.proto
