# Everyday commands. `make help` lists them.
.PHONY: help test check fmt lint deploy-check demo kafka-start kafka-stop registry-start registry-stop avro-cost toxiproxy-start toxiproxy-stop sim run bench-sim

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

test: ## every test, against a real Kafka started (and stopped) by the script
	scripts/test.sh

check: fmt lint test deploy-check ## what CI runs

deploy-check: ## image, compose, Helm chart, dashboard and alerts, each with its real tool
	scripts/deploy-check.sh

demo: ## the whole loop in one process (embedded Kafka, captain-sim in process)
	cargo run -- demo

fmt: ## check formatting
	cargo fmt --all --check

lint: ## clippy, warnings denied
	cargo clippy --workspace --all-targets -- -D warnings

kafka-start: ## start a local broker (prints KAFKA_BOOTSTRAP_SERVERS=...)
	scripts/kafka.sh start

kafka-stop: ## stop it and delete its data
	scripts/kafka.sh stop

registry-start: ## start a local schema registry (prints SCHEMA_REGISTRY_URL=...)
	scripts/registry.sh start

registry-stop: ## stop it (its schemas are gone with it)
	scripts/registry.sh stop

avro-cost: ## ns per record to encode a RunResult, JSON vs Avro (needs SCHEMA_REGISTRY_URL)
	cargo run --release --example avro_cost

toxiproxy-start: ## start a local Toxiproxy (prints TOXIPROXY_URL=...)
	scripts/toxiproxy.sh start

toxiproxy-stop: ## stop it
	scripts/toxiproxy.sh stop

sim: ## run captain-sim on 127.0.0.1:8700 with API key "dev-key"
	cargo run -p captain-sim -- --listen 127.0.0.1:8700 --api-key dev-key
