# `make test` and `make run` install first when needed, so each is one command on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast run gradcheck mutation nbdime strip-notebooks check-notebooks clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -c constraints.txt -e '.[notebooks,dev,slurm]'
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

# nbdime's git drivers for *.ipynb in this clone (.git/config, .gitattributes), called by
# absolute path so that they work without activating the venv.
NBDIME_BIN := $(CURDIR)/$(VENV)/bin
nbdime: install
	$(VENV)/bin/nbdime config-git --enable
	git config diff.jupyternotebook.command "$(NBDIME_BIN)/git-nbdiffdriver diff"
	git config merge.jupyternotebook.driver "$(NBDIME_BIN)/git-nbmergedriver merge %O %A %B %L %P"
	git config difftool.nbdime.cmd '$(NBDIME_BIN)/git-nbdifftool diff "$$LOCAL" "$$REMOTE" "$$BASE"'
	git config mergetool.nbdime.cmd '$(NBDIME_BIN)/git-nbmergetool merge "$$BASE" "$$LOCAL" "$$REMOTE" "$$MERGED"'

strip-notebooks: install
	$(VENV)/bin/nbstripout $(NOTEBOOKS)

check-notebooks: install
	$(VENV)/bin/nbstripout --verify $(NOTEBOOKS)

# Mutation testing of the engine (docs/mutation.md; not in CI: about 25 minutes on 2 cores).
# One thread per process: mutmut forks its workers from a process that ran torch.
mutation: install
	$(PY) -m pip install -q -c constraints.txt 'mutmut==3.8.1'
	rm -rf mutants
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children 2
	mkdir -p runs && $(VENV)/bin/mutmut results --all true > runs/mutation-results.txt || true

gradcheck: install
	$(VENV)/bin/workbench gradcheck --model mlp --scheme centered --beta 0.0001 --iterations 20

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
