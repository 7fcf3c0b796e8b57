# conch — see README.md. `make run` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

CLIENT_URL ?= http://127.0.0.1:2379
HTTP_URL ?= http://127.0.0.1:2381
DATA_DIR ?= default.conch

.PHONY: venv run test lint proto bench clean cluster demo

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

# Three members infra1..3 on 127.0.0.1 in the foreground, like etcd's Procfile: client ports
# 2379/22379/32379, peer ports 2380/22380/32380, data in ./cluster.conch, output lines prefixed
# with the member's name; Ctrl-C stops them all. Options: CLUSTER_ARGS='--base-port 40000
# --port-step 10' (see scripts/local_cluster.py --help).
cluster: $(STAMP)
	$(PY) scripts/local_cluster.py $(CLUSTER_ARGS)

# The seed's nanoPing service (examples/nanoping/): a local three-member cluster, three copies
# campaigning on /nanoPing; kills the master with SIGTERM, then SIGKILL, and prints who took
# over and how long it took. Options: DEMO_ARGS='--ttl 5 --interval 1 --base-port 42379'.
demo: $(STAMP)
	$(PY) examples/nanoping/demo.py $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check conch devkit tests bench
	$(VENV)/bin/mypy conch devkit
	$(VENV)/bin/mypy tests

proto: $(STAMP)
	PYTHON=$(PY) scripts/gen_proto.sh

bench: $(STAMP)
	$(PY) bench/put_bench.py

clean:
	rm -rf $(VENV) default.conch cluster.conch build *.egg-info
