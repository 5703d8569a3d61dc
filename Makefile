# Everyday commands. `make help` lists them.
.PHONY: help test check fmt lint kafka-start kafka-stop toxiproxy-start toxiproxy-stop sim run bench-sim

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

test: ## every test, against a real Kafka started (and stopped) by the script
	scripts/test.sh

check: fmt lint test ## what CI runs

fmt: ## check formatting
	cargo fmt --all --check

lint: ## clippy, warnings denied
	cargo clippy --workspace --all-targets -- -D warnings

kafka-start: ## start a local broker (prints KAFKA_BOOTSTRAP_SERVERS=...)
	scripts/kafka.sh start

kafka-stop: ## stop it and delete its data
	scripts/kafka.sh stop

toxiproxy-start: ## start a local Toxiproxy (prints TOXIPROXY_URL=...)
	scripts/toxiproxy.sh start

toxiproxy-stop: ## stop it
	scripts/toxiproxy.sh stop

sim: ## run captain-sim on 127.0.0.1:8700 with API key "dev-key"
	cargo run -p captain-sim -- --listen 127.0.0.1:8700 --api-key dev-key
