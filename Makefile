# The two commands the README names: `make demo` and `make test`. Everything installs into .venv,
# always with constraints.txt (torch==2.13.0 CPU wheel; an unpinned install pulls gigabytes of CUDA).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) -e '.[test,app]'
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/pseudodepth demo --out demo_out

# The report test screenshots report.html and the app test drives the Gradio page (playwright, pip) in
# headless Chromium: Debian's package, never a downloaded browser. Installed when missing and possible
# (root + apt); otherwise those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "chromium not installed: the report screenshot and app browser tests will skip"

test: setup browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	$(BIN)/python bench/label_throughput.py
	$(BIN)/python bench/loss_filter.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
