# mtkd: `make test` alone works on a fresh machine (it installs into .venv first when needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SHARED ?= $(abspath ..)/shared
PYTEST_WORKERS ?= 2

.PHONY: install link-shared prepare-train291 test demo reproduce mutation clean

$(VENV)/.installed: requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements.txt
	# basicsr's own requirements clash with opencv-python-headless and tensorboard: install it without them.
	$(PIP) install --quiet --disable-pip-version-check --no-deps --no-build-isolation basicsr==1.4.2
	$(PIP) install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

# Link ../shared/data/* under datasets/ and ../shared/weights/* under pretrained/official/ (nothing is copied).
link-shared:
	@MTKD_SHARED=$(SHARED) bash scripts/link_shared.sh

# The classic 291-image training set (T91 + BSD200) with MATLAB-bicubic LR at x2/x3/x4 in datasets/train291.
prepare-train291: install link-shared
	$(PY) scripts/prepare_benchmark.py --hr-dir datasets/T91/HR --out-dir datasets --name train291 --workers 2
	$(PY) scripts/prepare_benchmark.py --hr-dir datasets/BSD200/HR --out-dir datasets --name train291 --workers 2

# With a shared folder present, a test that needs its data or weights FAILS instead of skipping
# (MTKD_REQUIRE_SHARED=1, tests/conftest.py), and tests/test_shared_data.py names every missing file; without one,
# those tests skip and pytest lists why (-rfEs in pytest.ini). `make test SHARED=/nonexistent` runs without it.
test: install
	@if [ -d "$(SHARED)" ]; then $(MAKE) --no-print-directory link-shared; \
	else echo "make test: no shared folder at $(SHARED): tests that need its data or weights will skip"; fi
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MTKD_SHARED=$(SHARED) MTKD_REQUIRE_SHARED=$(if $(wildcard $(SHARED)),1,0) \
		$(PY) -m pytest -q -n $(PYTEST_WORKERS) tests

# The whole MTKD pipeline on embedded data (no download): the three committed teachers (pretrained/demo/), stage 1,
# stage 2, the student alone, one table, the claims and results/demo/comparison.png (docs/demo.md).
# DEMO_QUICK=1: the students at a fifth of their iterations; DEMO_TRAIN_TEACHERS=1: retrain the teachers first.
demo: install
	$(PY) scripts/demo.py

# Re-measure the README's reproduction table (about 10 minutes on 2 CPU cores).
reproduce: install link-shared
	bash scripts/reproduce_official.sh

# Mutation testing of the formula modules (docs/testing.md, "Mutation testing"; not part of `make test` or CI):
# installs the pinned mutmut (requirements-mutation.txt) into .venv, then runs scripts/mutation.py, one process at nice 19, work folders
# outside the repository ($(MUTATION_DIR)). MUTATION_ARGS="--groups dukd losses" for some groups, "--baseline"
# for the scores without tests/test_mutation_survivors.py, "--show" for the diffs of the mutants left.
MUTMUT_VERSION := 3.8.1
MUTATION_DIR ?= /tmp/mtkd-mutation
MUTATION_ARGS ?=
mutation: install
	@$(PY) -m pip show mutmut 2>/dev/null | grep -q '^Version: $(MUTMUT_VERSION)$$' || \
		$(PIP) install --quiet --disable-pip-version-check -r requirements-mutation.txt
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 19 $(PY) scripts/mutation.py --work-dir $(MUTATION_DIR) $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) results experiments tb_logger .pytest_cache
