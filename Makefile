# banditd: every job has one entry point here. `make run` and `make test` bootstrap
# .venv from pyproject.toml on a fresh machine; nothing needs installing by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed


.PHONY: run test test-fast proto proto-check lint bench load docker-lint clean constraints

# Every version is pinned by $(CONSTRAINTS), the same file the Dockerfile installs with.
CONSTRAINTS := constraints.txt

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	$(MAKE) --no-print-directory engine
	touch $(STAMP)

## The engine replicas share (--workers N, the replica tests): redis-server 7 from Debian's
## packages, unpacked under .venv/engine (nothing installed system-wide, no daemon started).
## Debian ships the server binary in redis-tools as redis-check-rdb, which is the server when
## started under a name containing "redis-server"; the redis-server package would only add
## that symlink and a system service. Skipped when redis-server or valkey-server is on PATH.
ENGINE_DEBS := redis-tools liblzf1 libjemalloc2
ENGINE_DIR  := $(VENV)/engine
.PHONY: engine
engine:
	@if command -v redis-server >/dev/null || command -v valkey-server >/dev/null \
		|| test -x $(BIN)/redis-server; then exit 0; fi; \
	set -e; rm -rf $(ENGINE_DIR); mkdir -p $(ENGINE_DIR)/debs $(ENGINE_DIR)/root; \
	cd $(ENGINE_DIR)/debs; \
	apt-get download $(ENGINE_DEBS) 2>/dev/null \
		|| { apt-get update -qq && apt-get download $(ENGINE_DEBS); }; \
	for deb in *.deb; do dpkg -x $$deb ../root; done; \
	ln -sf redis-check-rdb ../root/usr/bin/redis-server; \
	libs=$$(cd ../root && ls -d $$PWD/usr/lib/*-linux-gnu | head -1); \
	printf '%s\n' '#!/bin/sh' \
		'# redis-server from .venv/engine (see the Makefile target engine)' \
		"LD_LIBRARY_PATH=\"$$libs\$${LD_LIBRARY_PATH:+:\$$LD_LIBRARY_PATH}\" exec \"$$(cd ../root && pwd)/usr/bin/redis-server\" \"\$$@\"" \
		> ../../bin/redis-server; \
	chmod +x ../../bin/redis-server; \
	../../bin/redis-server --version

## Re-pin $(CONSTRAINTS) to the newest versions pyproject.toml allows (in a scratch venv).
constraints:
	rm -rf .venv-pin && $(PYTHON) -m venv .venv-pin
	.venv-pin/bin/python -m pip install --quiet '.[dev]'
	{ sed -n '1,3p' $(CONSTRAINTS); .venv-pin/bin/python -m pip freeze --exclude-editable \
		| grep -v '^banditd'; } > $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf .venv-pin

## Start the server on its embedded default (127.0.0.1:50051, ./data).
run: $(STAMP)
	$(BIN)/banditd serve

## Whole test suite, what CI runs (.ci/run): also ruff, mypy, buf lint, hadolint and the
## proto drift check (tests/test_lint.py, test_proto.py, test_docker.py).
## Extra pytest arguments: make test ARGS='-k pacing -x'
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=30 $(ARGS)

## The quick loop: every test not marked slow (about 40 s of CPU with a warm Numba cache);
## it still starts a real server and calls every RPC through it.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not slow" $(ARGS)

## Regenerate the checked-in Python code (+ .pyi) from proto/.
proto: $(STAMP)
	$(BIN)/python proto/generate.py

## The linters alone (make test runs them too). mypy checks the installed banditd package
## through a symlink tree of the package-dir mapping (tests/typecheck.py builds it).
lint: $(STAMP)
	cd proto && ../$(BIN)/buf lint
	$(BIN)/hadolint Dockerfile
	$(BIN)/ruff check server kernels clients benchmarks tests proto/generate.py
	$(BIN)/python tests/typecheck.py build/mypy-path/banditd tests/helpers.py tests/conftest.py \
		tests/typecheck.py

## Benchmarks (bounded, loopback only); results go to benchmarks/results/*.json (+ PNG plots).
bench: $(STAMP)
	$(BIN)/python -m benchmarks.kernel_bench --out benchmarks/results/kernels.json
	$(BIN)/python -m benchmarks.grpc_throughput --out benchmarks/results/grpc_throughput.json
	$(BIN)/python -m benchmarks.grpc_throughput --only select_thompson_k10 --echo-work-us 20 \
		--no-plots --out benchmarks/results/grpc_throughput_working_echo.json
	$(BIN)/python -m benchmarks.grpc_throughput --only select_thompson_k10 --duration 30 --rounds 20 \
		--no-plots --out benchmarks/results/grpc_throughput_select_long.json
	$(BIN)/python -m benchmarks.grpc_throughput --only select_thompson_k10 --duration 30 --rounds 20 \
		--echo-sched-batch --no-plots \
		--out benchmarks/results/grpc_throughput_select_long_echo_sched_batch.json
	$(BIN)/python -m benchmarks.grpc_throughput --only select_thompson_k10 --rounds 4 --duration 6 \
		--no-plots --out benchmarks/results/grpc_throughput_select_plain.json
	$(BIN)/python -m benchmarks.grpc_throughput --only select_thompson_k10 --rounds 4 --duration 6 \
		--tls --no-plots --out benchmarks/results/grpc_throughput_select_tls.json
	$(BIN)/python -m benchmarks.auth_check --out benchmarks/results/auth_check.json
	$(BIN)/python -m benchmarks.cold_start --out benchmarks/results/cold_start.json
	$(BIN)/python -m benchmarks.instructions --out benchmarks/results/instructions.json; \
		rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 2 ]  # 2: no valgrind on this machine, skipped
	$(BIN)/python -m benchmarks.first_request --out benchmarks/results/first_request.json
	$(BIN)/python -m benchmarks.startup_load --out benchmarks/results/startup_load.json
	$(BIN)/python -m benchmarks.analytics_bench --out benchmarks/results/analytics.json
	$(BIN)/python -m benchmarks.durability_bench --out benchmarks/results/durability.json
	$(BIN)/python -m benchmarks.pacing_sim --out benchmarks/results/pacing.json
	$(BIN)/python -m benchmarks.workers_bench --out benchmarks/results/workers.json
	$(BIN)/python -m benchmarks.settlement_bench --out benchmarks/results/settlement.json
	$(BIN)/python -m benchmarks.conversions_only --out benchmarks/results/conversions_only.json
	$(BIN)/python -m benchmarks.ope_accuracy --out benchmarks/results/ope_accuracy.json
	$(BIN)/python -m benchmarks.replica_bench --out benchmarks/results/replicas.json
	$(BIN)/python -m benchmarks.replica_bench --parts footprint \
		--out benchmarks/results/replicas_footprint.json

## Locust load test: a local server, a headless run of LOAD_TIME with LOAD_USERS users;
## CSV + HTML reports in benchmarks/results/locust/ (e.g. make load LOAD_TIME=5m LOAD_USERS=64).
LOAD_TIME  ?= 60s
LOAD_USERS ?= 32
load: $(STAMP)
	$(BIN)/python -m benchmarks.run_load --run-time $(LOAD_TIME) --users $(LOAD_USERS) \
		--out benchmarks/results/locust

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find kernels -name '*.nb[ic]' -delete
