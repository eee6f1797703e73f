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

# Notebooks run on the venv's own kernelspec (JUPYTER_PATH first, so a user-level `python3`
# kernel elsewhere cannot take over); executed copies go to the ignored runs/notebooks/.
NOTEBOOKS := $(wildcard notebooks/*.ipynb)
PAPERMILL := JUPYTER_PATH=$(CURDIR)/$(VENV)/share/jupyter $(VENV)/bin/papermill --log-output

run: install
	@mkdir -p runs/notebooks
	$(PAPERMILL) notebooks/03_train.ipynb runs/notebooks/03_train-$$(date +%Y%m%d-%H%M%S).ipynb

nbdime: install
	$(VENV)/bin/nbdime config-git --enable
	@echo "git diff / git merge now use nbdime for *.ipynb in this clone; nbdiff-web A B compares two"

strip-notebooks: install
	$(VENV)/bin/nbstripout $(NOTEBOOKS)

check-notebooks: install
	$(VENV)/bin/nbstripout --verify $(NOTEBOOKS)

gradcheck: install
	$(VENV)/bin/workbench gradcheck --model mlp --scheme centered --beta 0.0001 --iterations 20

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
