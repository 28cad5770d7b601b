# The two commands: `make demo` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xreg-installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# constraints.txt: versions known to resolve together here (without it pip backtracks
	# the S3 stack, boto3/aiobotocore/moto, into sdists that cannot build offline).
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p demo-output
	$(VENV)/bin/xreg demo --output demo-output
	cd demo-output && MPLBACKEND=Agg ../$(PY) ../examples/walkthrough.py

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_rigid.py

clean:
	rm -rf $(VENV) demo-output
