# `make test` and `make run` install first when needed, so each is one command on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast run gradcheck nbdime strip-notebooks check-notebooks clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -c constraints.txt -e '.[notebooks,dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not browser"

run: install
	$(VENV)/bin/workbench gradcheck --model vgg5 --scheme centered --beta 0.001 --iterations 20 --batch-size 8

gradcheck: install
	$(VENV)/bin/workbench gradcheck --model mlp --scheme centered --beta 0.0001 --iterations 20

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
