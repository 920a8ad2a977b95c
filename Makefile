# `make demo` and `make test` create .venv when it is missing and (re)install the project when
# pyproject.toml changed; both are idempotent.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo demo-quick test docs bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	# One install command, so torch==2.13.0 (the CPU build here) is resolved together with the rest.
	$(VENV)/bin/python -m pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mtforget demo

demo-quick: $(STAMP)
	$(VENV)/bin/mtforget demo --quick

# The site, built strictly: a broken link, a missing page or a config key without a docstring fails it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs build --strict --quiet

test: docs
	$(VENV)/bin/lint-imports --no-cache  # the package's layers (pyproject.toml, tool.importlinter)
	bash scripts/install_browser.sh  # Debian's Chromium for the report's browser test (once)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/demo_stages.py
	$(VENV)/bin/python benchmarks/generation.py
	$(VENV)/bin/python benchmarks/training.py
	$(VENV)/bin/python benchmarks/demo_wall.py --quick

clean:
	rm -rf runs site .pytest_cache
