# Two commands for a newcomer: `make tutorial` and `make test` (README.md).
PYTHON  ?= python3.11
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= cpu
OUTPUTS ?= outputs
PYTEST_ARGS ?=

.PHONY: install tutorial book test test-all lint format lab bench study experiments clean-outputs strip sync

## detectron2 and mmcv wheels for this machine (../shared/wheels here and in CI): when the folder
## has wheels, the detectron2 and MMSegmentation backends are installed from it too.
BACKEND_WHEELS ?= ../shared/wheels
comma := ,
HAVE_WHEELS := $(wildcard $(BACKEND_WHEELS)/*.whl)
EXTRAS := notebooks,dev$(if $(HAVE_WHEELS),$(comma)detectron2$(comma)mmseg)
FIND_LINKS := $(if $(HAVE_WHEELS),--find-links $(BACKEND_WHEELS))

## constraints.txt: the exact versions the results were computed with (README "Tests").
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(FIND_LINKS) -c constraints.txt -e ".[$(EXTRAS)]"
	$(PY) -m ipykernel install --sys-prefix --name icm --display-name "Python (icm)"
	touch $@

install: $(VENV)/.installed

## Execute notebooks/NN_*.ipynb in order with papermill (PROFILE=smoke|cpu|paper) into $(OUTPUTS)/.
tutorial: install
	$(PY) -m icm_lib.tutorial --profile $(PROFILE) --output-dir $(OUTPUTS)

## The tutorial as a static book (Sphinx + MyST-NB; works offline): the notebooks as `make tutorial`
## executed them into $(OUTPUTS)/$(PROFILE)/, the README, a page per study, the explorer as a
## gallery, the exercises' solutions -> $(OUTPUTS)/book/html/index.html. Without those outputs it
## builds from $(OUTPUTS)/smoke/ with a banner, or says how to make them (book/build.py --help).
book: install
	$(PY) book/build.py --profile $(PROFILE) --outputs $(OUTPUTS)

## Lint and format check (ruff), then unit tests + smoke notebook tests (skips `slow` and `gpu`).
LINTED := icm_lib tests tools notebooks book
test: install lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

## Apply the formatter and the safe lint fixes (then `make sync` if notebooks changed).
format: install
	$(VENV)/bin/ruff format $(LINTED)
	$(VENV)/bin/ruff check --fix $(LINTED)

test-all: install
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

## JupyterLab rooted here (so jupytext finds jupytext.toml and saves notebooks/NN_*.py with
## each .ipynb), opened on notebooks/.
lab: install
	$(VENV)/bin/jupyter lab --ContentsManager.preferred_dir=notebooks

bench: install
	$(PY) -m icm_lib.bench codec
	$(PY) -m icm_lib.bench icm --profile $(PROFILE)

## The studies, resumable, into results/: Iino et al. (both tasks, 4 lambda, baseline / aux-enc + ROI),
## its branch-position ablation (section 4.2) and Le et al. (PatchGAN presets), seeds 0-2; then
## the claims (results/claims-<profile>.json) and the README's tables.
SEEDS ?= 0 1 2
study: install
	$(PY) -m icm_lib.study --profile $(PROFILE) --seeds $(SEEDS)
	$(PY) -m icm_lib.study --study ablation --profile $(PROFILE) --seeds $(SEEDS)
	$(PY) -m icm_lib.study --study gan --profile $(PROFILE) --seeds $(SEEDS)
	$(PY) -m icm_lib.claims --profile $(PROFILE)
	$(PY) -m icm_lib.report --readme README.md

## The experiments of a profile whose λ a pilot chooses (make experiments PROFILE=cpu-patterns),
## in their order, each step load-or-compute (a stopped one resumes): the world's acceptance
## checks, the λ pilot, a stop unless the profile holds the λ the pilot chose (it says what to
## set), the three studies over EXPERIMENT_SEEDS, the gradients, the claims, their tables.
EXPERIMENT_SEEDS ?= 0 1 2 3 4 5
experiments: install
	$(PY) -m icm_lib.world_check --profile $(PROFILE)
	$(PY) -m icm_lib.pilot --profile $(PROFILE)
	$(PY) -m icm_lib.pilot --profile $(PROFILE) --check
	$(PY) -m icm_lib.study --profile $(PROFILE) --seeds $(EXPERIMENT_SEEDS)
	$(PY) -m icm_lib.study --study ablation --profile $(PROFILE) --seeds $(EXPERIMENT_SEEDS)
	$(PY) -m icm_lib.study --study gan --profile $(PROFILE) --seeds $(EXPERIMENT_SEEDS)
	$(PY) -m icm_lib.gradients --profile $(PROFILE)
	$(PY) -m icm_lib.claims --profile $(PROFILE)
	$(PY) -m icm_lib.report --readme README.md

## Sync each notebooks/NN_*.py with its .ipynb (jupytext.toml pairs them): the newer one wins.
sync: install
	$(VENV)/bin/jupytext --sync notebooks/[0-9][0-9]_*.py

## Strip outputs from the committed notebooks, then sync. Syncing first too keeps .py edits made
## after a run: stripping rewrites the .ipynb, which would then be the newer of the pair.
strip: sync
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb
	$(VENV)/bin/jupytext --sync notebooks/[0-9][0-9]_*.py

clean-outputs:
	rm -rf $(OUTPUTS)
