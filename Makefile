# tdm-alerts: every verb does its own set-up (virtualenv at .venv/, packages, Kafka jars).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint typecheck unit integration bench clean lock

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,confluent]'
	touch $(STAMP)

.cache/kafka/.fetched: ops/kafka/pom.xml
	ops/kafka/local-broker fetch
	mkdir -p .cache/kafka && touch $@

# A real FHIR server (HAPI FHIR JPA over in-memory H2) for the FHIR receiver's test and the demo.
FHIR_SERVER_SOURCES := ops/fhir-server/pom.xml $(shell find ops/fhir-server/src -type f)
.cache/fhir-server/.complete: $(FHIR_SERVER_SOURCES)
	ops/fhir-server/local-fhir-server fetch

# promtool (rule tests) comes from Debian's prometheus package.
.cache/prometheus.installed:
	{ command -v promtool && command -v amtool; } >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq prometheus prometheus-alertmanager; }
	mkdir -p .cache && touch $@

## demo: start a local broker, run the service over the sample feed, print its alerts, and page
## them to a real Alertmanager through `tdm-alerts notify` (printed with amtool)
demo: $(STAMP) .cache/kafka/.fetched .cache/prometheus.installed .cache/fhir-server/.complete
	$(BIN)/python ops/demo.py

## bench: start a local broker, pre-load a 200,000-message mixed feed, compare tdm-alerts with
## the kafka-python ceiling and its peers; prints a table, writes docs/benchmarks.json
bench: $(STAMP) .venv/.bench-installed .cache/kafka/.fetched
	$(BIN)/python ops/bench/run.py
	$(BIN)/python ops/bench/forecast_check.py
	$(BIN)/python ops/bench/follow_up_check.py
	$(BIN)/python ops/bench/restore_check.py
	$(BIN)/python ops/bench/cds_hooks_check.py

.venv/.bench-installed: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

## test: lint, type checks, then every test: the integration suite (real broker) once per Kafka
## client, kafka-python and confluent-kafka, in the background, and the rest alongside
test: lint typecheck .cache/prometheus.installed .cache/kafka/.fetched .cache/fhir-server/.complete
	tests/run-suites

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy interpretation consumer

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP) .cache/kafka/.fetched .cache/fhir-server/.complete
	$(BIN)/pytest tests/integration
	TEST_KAFKA_CLIENT=confluent-kafka $(BIN)/pytest tests/integration

## lock: re-pin the runtime dependencies (with hashes) after changing pyproject.toml
lock: $(STAMP)
	$(BIN)/pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links \
		--extra confluent --output-file requirements.lock pyproject.toml

clean:
	-ops/kafka/local-broker stop
	rm -rf .cache .mypy_cache .ruff_cache .pytest_cache .hypothesis
