# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create the virtualenv (.venv) and install the project on first use.

# python3.12, found directly or through pyenv (which hides it unless asked).
PYTHON ?= $(shell python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null || \
	PYENV_VERSION=3.12.1 python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null)
VENV ?= .venv
# Prepared TFDS datasets: $TFDS_DATA_DIR, else ../shared/tfds where it exists.
export TFDS_DATA_DIR ?= $(if $(wildcard ../shared/tfds),$(abspath ../shared/tfds),)
WORKDIR ?= workdirs/quickstart
# The authors' ResNet-56: the shared copy, else 'official' (fetched once into
# the cache folder, checksum verified).
INIT ?= $(if $(wildcard ../shared/pretrained/ekg_official_resnet56_cifar10.pkl),../shared/pretrained/ekg_official_resnet56_cifar10.pkl,official)
# What `make prepare` prepares ahead of a run (each is also prepared on first
# use): datasets into TFDS_DATA_DIR, weights into the cache folder.
PREPARE ?= cifar10 official
# Extra flags for `make demo`, e.g. a cut-down run:
# DEMO_ARGS='--config.pretrain.epochs=1 --config.data.train_split=train[:1000]'
DEMO_ARGS ?=
PYTEST_ARGS ?= -n 2 --dist worksteal

.PHONY: install demo prepare evaluate lint test test-slow docs torch-venv onnx \
	colab-venv tf-venv \
	bench bench-quick bench-authors bench-authors-quick bench-authors-all

# $(call venv,variable naming the python,its version,folder,pip arguments):
# the recipe every virtualenv below shares.
define venv
	@test -n "$($(1))" || { echo "python$(2) not found; set $(1)=/path/to/python$(2)"; exit 1; }
	$($(1)) -m venv $(3)
	$(3)/bin/python -m pip install -q --upgrade pip
	$(3)/bin/python -m pip install -q $(4)
endef

$(VENV)/.installed: setup.cfg pyproject.toml
	$(call venv,PYTHON,3.12,$(VENV),-e '.[test]')
	touch $@

install: $(VENV)/.installed

# The PyTorch side of the benchmarks, in its own virtualenv: the torch 2.13
# CPU wheel this machine kind carries is for Python 3.11.
TORCH_VENV ?= .venv-torch
PYTHON311 ?= $(shell python3.11 -c 'import sys; print(sys.executable)' 2>/dev/null || \
	PYENV_VERSION=3.11.7 python3.11 -c 'import sys; print(sys.executable)' 2>/dev/null)

$(TORCH_VENV)/.installed: benchmarks/requirements-torch.txt
	$(call venv,PYTHON311,3.11,$(TORCH_VENV),-r benchmarks/requirements-torch.txt)
	touch $@

torch-venv: $(TORCH_VENV)/.installed

# ONNX export (the [onnx] extra) in the same virtualenv: jax2onnx 0.17 pins
# orbax-checkpoint below 0.11.37, so pip moves it to 0.11.36, which ekg_jax
# works with (docs/deployment.md). Not part of `install`, which keeps the
# newest orbax-checkpoint for those who do not export to ONNX.
$(VENV)/.onnx: $(VENV)/.installed
	$(VENV)/bin/python -m pip install -q -e '.[test,onnx]'
	touch $@

onnx: $(VENV)/.onnx

# The Colab TPU image's JAX stack (tests/requirements-colab.txt) without
# ekg_jax, for tests/project/test_colab_versions.py: it installs the project through
# the notebook's own install cell, as a Colab user does.
COLAB_VENV ?= .venv-colab

$(COLAB_VENV)/.installed: tests/requirements-colab.txt
	$(call venv,PYTHON,3.12,$(COLAB_VENV),-r tests/requirements-colab.txt)
	touch $@

colab-venv: $(COLAB_VENV)/.installed

# The authors' TensorFlow code for benchmarks/authors_tf.py, in its own
# virtualenv (~2 min, 1.8 GB). tf-keras goes in without its dependencies: it
# requires the `tensorflow` package, a second TensorFlow over tensorflow-cpu.
TF_VENV ?= .venv-tf

$(TF_VENV)/.installed: benchmarks/requirements-tf.txt
	$(call venv,PYTHON,3.12,$(TF_VENV),-r benchmarks/requirements-tf.txt)
	$(TF_VENV)/bin/python -m pip install -q --no-deps tf-keras==2.21.0
	touch $@

tf-venv: $(TF_VENV)/.installed

# Every benchmark against PyTorch (~30 min on 2 cores); results and the
# Markdown table in benchmarks/results/. bench-quick: a smoke run.
bench: install torch-venv
	$(VENV)/bin/python benchmarks/run.py

bench-quick: install torch-venv
	$(VENV)/bin/python benchmarks/run.py --quick --out-dir=workdirs/bench-quick

# ekg_jax against the authors' TensorFlow code: start-up and the first 10
# search steps, 3 repetitions (~35 min on 2 quiet cores; benchmarks/README.md).
# AUTHORS_REPO: a clone of sseung0703/EKG.
AUTHORS_REPO ?= workdirs/authors-EKG
bench-authors: install tf-venv
	$(VENV)/bin/python benchmarks/authors_tf.py --authors-repo=$(AUTHORS_REPO)

bench-authors-quick: install tf-venv
	$(VENV)/bin/python benchmarks/authors_tf.py --quick --authors-repo=$(AUTHORS_REPO)

# Both whole searches to FLOPs rate 0.45, alternating, 2 repetitions each
# (~90 min of quiet cores): benchmarks/results/authors-tf-*-all.{json,md,png}.
bench-authors-all: install tf-venv
	$(VENV)/bin/python benchmarks/authors_tf.py --steps=all --reps=2 --authors-repo=$(AUTHORS_REPO)

# The evidence study's Torch-Pruning arms (experiments/README.md): Torch-
# Pruning 1.6 prunes the official ResNet-56 to FLOPs rate 0.45 and writes
# experiments/results/evidence/tp_*/kept_channels.json and pruning.json.
.PHONY: tp-arms
tp-arms: install torch-venv
	$(VENV)/bin/python experiments/torch_pruning_arms.py

# The quickstart: the whole pipeline (pretrain, search, memory bank,
# fine-tuning) on a CIFAR-10 subset with ResNet-20, minutes on a laptop CPU.
# CIFAR-10 is prepared on first use when TFDS_DATA_DIR lacks it.
demo: install
	$(VENV)/bin/python -m ekg_jax.main --config=configs/quickstart.py --workdir=$(WORKDIR) $(DEMO_ARGS)

# Downloads (checksum verified) and prepares ahead of time what a run would
# fetch on first use (no TensorFlow): make prepare PREPARE='cifar10 cifar100'.
prepare: install
	$(VENV)/bin/python -m ekg_jax.prepare $(PREPARE)

# Evaluates the official ResNet-56 on the CIFAR-10 test split.
evaluate: install
	$(VENV)/bin/python -m ekg_jax.main --config=configs/resnet56_cifar.py \
	  --config.init_checkpoint=$(INIT) --config.phases=evaluate --workdir=workdirs/evaluate

# The package's layers (.importlinter): an import that runs back up a layer
# or closes a circle fails, named.
lint: install
	$(VENV)/bin/lint-imports

# The test suite without the slow integration checks (under 10 minutes on
# 2 cores) ...
test: install
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS) -m 'not slow'

# The documentation site (docs/, README.md and the two folder READMEs as
# pages) into docs/_build/html, warnings as errors: a broken link, anchor or
# docstring fails it. The [docs] extra goes into .venv on first use.
$(VENV)/.docs: $(VENV)/.installed
	$(VENV)/bin/python -m pip install -q -e '.[test,docs]'
	touch $@

docs: $(VENV)/.docs
	$(VENV)/bin/python -m sphinx -c docs -W --keep-going -q -b html . docs/_build/html

# ... and the slow ones: kill-and-resume, fault injection, the notebook.
test-slow: install
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS) -m slow
