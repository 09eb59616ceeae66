# Two commands do all set-up from a fresh clone:  make book  and  make test.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: venv book test test-fast test-unit test-chapters lint bench clean chromium check-book student train vllm

# The book checks (site in Chromium, a simulated Colab, the student notebooks): tests/book/, or the
# three files they were in before that folder existed.
BOOK_CHECKS := $(or $(wildcard tests/book),$(wildcard tests/test_site.py tests/test_colab_sim.py tests/test_student.py))

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

# Debian's Chromium for the browser checks of the book (tests/book/test_site.py); skipped when present.
chromium:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium (apt-get)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { echo "chromium is not installed: the book's browser checks need it"; exit 1; }

# tests/ includes the book checks (tests/book/): build with warnings as errors, every page in Chromium,
# a chapter in a simulated Colab, the student notebooks (check-book runs only those).
test: venv chromium
	$(VENV)/bin/pytest tests chapters --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg \
		--nbval-cell-timeout=300 -p no:cacheprovider

check-book: venv chromium
	$(VENV)/bin/pytest $(BOOK_CHECKS) -p no:cacheprovider
	@echo "Screenshots of the site: $(CURDIR)/artifacts/screenshots"

# Student notebooks (solutions taken out) in student/
student: venv
	$(PY) -m tools.make_student -o student

test-unit: venv chromium
	$(VENV)/bin/pytest tests -p no:cacheprovider

# The developer loop: unit and reference tests, without the slow ones and without the book checks.
test-fast: venv
	$(VENV)/bin/pytest tests --ignore=tests/book $(addprefix --ignore=,$(filter %.py,$(BOOK_CHECKS))) \
		-m "not slow" -q -p no:cacheprovider

test-chapters: venv
	$(VENV)/bin/pytest chapters --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=300

# The book's trained model (chapter 10) and the recall study, into src/qwen3next/data/tiny-qwen3-next:
# about 35 minutes on 2 idle cores (2.5 hours when others share them). Seeded; nothing is downloaded.
# TRAIN_ARGS: more options of tools/train_tiny.py (--mixed-precision, --out DIR, --quick, ...).
train: venv
	OMP_NUM_THREADS=2 $(PY) tools/train_tiny.py --threads 2 $(TRAIN_ARGS)

# Optional, not in `make test`: serve the book's trained model with vLLM's CPU build (its own environment,
# .venv-vllm, ~2.5 GB from requirements-vllm.txt) and compare its greedy output and MTP acceptance with the
# book's; writes src/qwen3next/data/vllm_compare.json. A few minutes on 2 cores, nothing downloaded.
VLLM_VENV := .venv-vllm

$(VLLM_VENV)/.installed: requirements-vllm.txt
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -r requirements-vllm.txt
	touch $@

vllm: venv $(VLLM_VENV)/.installed
	OMP_NUM_THREADS=2 $(PY) tools/vllm_compare.py

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks tools

# Ours and the reference side by side (benchmarks/timing.py); the thread count comes from here, BENCH_THREADS=1
# unless given (make bench BENCH_THREADS=2), for torch and for the Rust tokenizer alike.
BENCH_THREADS ?= 1
bench: venv
	for b in benchmarks/bench_*.py; do OMP_NUM_THREADS=$(BENCH_THREADS) RAYON_NUM_THREADS=$(BENCH_THREADS) \
		TOKENIZERS_PARALLELISM=false $(PY) $$b || exit 1; done

clean:
	rm -rf _build $(VENV) student artifacts
