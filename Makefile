# Two commands for a new user: `make demo` and `make test`. Both create and use .venv by themselves.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# CPU build by default (its wheel lies on this project's machines). On a GPU box pick the CUDA build:
#   make venv TORCH_SPEC="torch==2.14.1"                       (PyPI's Linux wheel, CUDA 12)
#   make venv TORCH_SPEC="torch==2.14.1" TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
# Exact versions CI was green with; with another TORCH_SPEC the torch family follows that torch (install_lock.py).
LOCK        := constraints.txt
VENV_LOCK   := $(VENV)/constraints.txt
PIP_VERSION := 26.3
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.torch_extensions/inductor

.PHONY: demo test test-fast venv lock clean-demo sweep-demo

venv: $(STAMP)

# torch is installed once, first; the constraints then pin it so no later step replaces it.
$(STAMP): setup.py $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "pip==$(PIP_VERSION)"
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) mvar_dist/install_lock.py $(LOCK) $(VENV_LOCK)
	$(PY) -m pip install -q -c $(VENV_LOCK) -e ".[data,train,eval,dev]"
	# torch-fidelity only for its Inception module (adm-mode parity tests); its package __init__ needs torchvision,
	# which a CPU install leaves out, so it comes without dependencies, at the version pinned in the lock.
	$(PY) -m pip install -q --no-deps -c $(VENV_LOCK) torch-fidelity
	touch $(STAMP)

# Rewrite constraints.txt from the current (green) .venv.
lock: $(STAMP)
	{ sed -n '1,3p' $(LOCK); $(PY) -m pip freeze --exclude-editable; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

# The main job on the embedded default dataset; prints where its outputs are.
demo: $(STAMP)
	$(PY) launchers/demo.py

# The whole suite, multi-process (gloo/Ray/S3) tests included. Exit code 5 (no tests) counts as a pass.
test: $(STAMP)
	$(PY) -m pytest tests -ra; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# Without the slow multi-process tests, for quick iteration.
test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow" -q

clean-demo:
	rm -rf outputs/demo_data outputs/demo

# CPU scaling sweep over tiny VAR/M-VAR models on the demo tokenizer's tokens (the demo's first stages,
# skipped when done): results table, fits, FD-demo and plots under outputs/sweeps/cpu_demo/
sweep-demo: $(STAMP)
	$(PY) launchers/demo.py --until shards
	$(PY) launchers/scaling_sweep.py run cpu_demo
