# Two commands for a new user: `make demo` and `make test`. Both create and use .venv by themselves.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# CPU build by default (lies on this project's machines); on a GPU box: make TORCH_SPEC="torch" ...
TORCH_SPEC ?= torch==2.13.0
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.torch_extensions/inductor

.PHONY: demo test test-fast venv clean-demo sweep-demo

venv: $(STAMP)

$(STAMP): setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[data,train,eval,dev]"
	touch $(STAMP)

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
	rm -rf outputs/demo_data outputs/demo128

# CPU scaling sweep over tiny VAR/M-VAR models: results table, fits, plots under outputs/sweeps/cpu_demo/
sweep-demo: $(STAMP)
	$(PY) -m mvar_dist demo-data outputs/demo_data64 --per-class 8 --size 64
	test -f outputs/sweeps/cpu_demo/shards/manifest.json || $(PY) launchers/tokenize.py --config mvar_tiny --source outputs/demo_data64 --dest outputs/sweeps/cpu_demo/shards
	$(PY) launchers/scaling_sweep.py run sweeps/cpu_demo
