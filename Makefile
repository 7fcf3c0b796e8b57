# conch — see README.md. `make run` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

CLIENT_URL ?= http://127.0.0.1:2379
HTTP_URL ?= http://127.0.0.1:2381
DATA_DIR ?= default.conch

.PHONY: venv run test lint proto bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# One member on 127.0.0.1:2379 (gRPC, like plain `etcd`), data in ./default.conch,
# HTTP endpoints (/health, /version, /metrics) on 127.0.0.1:2381.
run: $(STAMP)
	$(VENV)/bin/conch --name default --data-dir $(DATA_DIR) \
		--listen-client-urls $(CLIENT_URL) --advertise-client-urls $(CLIENT_URL) \
		--listen-client-http-urls $(HTTP_URL)

# The default suite (what CI runs). CONCH_REQUIRE_ETCD=1 turns missing-etcd skips into failures.
test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check conch tests bench
	$(VENV)/bin/mypy conch

proto: $(STAMP)
	PYTHON=$(PY) scripts/gen_proto.sh

bench: $(STAMP)
	$(PY) bench/put_bench.py

clean:
	rm -rf $(VENV) default.conch build *.egg-info
