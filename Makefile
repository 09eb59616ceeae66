# Two commands do all set-up from a fresh clone:  make book  and  make test.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0

.PHONY: venv book test test-unit test-chapters lint bench clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

book: venv
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "The book is at $(CURDIR)/_build/html/index.html"

test: venv
	$(VENV)/bin/pytest tests chapters --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg \
		--nbval-cell-timeout=300 -p no:cacheprovider

test-unit: venv
	$(VENV)/bin/pytest tests

test-chapters: venv
	$(VENV)/bin/pytest chapters --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=300

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

bench: venv
	for b in benchmarks/bench_*.py; do OMP_NUM_THREADS=1 $(PY) $$b || exit 1; done

clean:
	rm -rf _build $(VENV)
