# pgflow for Go. `make help` lists the targets.

GO      ?= go
PKGS    ?= ./...
# Extra flags for `go test`, e.g. make test TESTFLAGS='-run Fanout -v'.
TESTFLAGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

.PHONY: demo
demo: postgres ## run the example flow end to end (a throwaway PostgreSQL unless DATABASE_URL is set)
	$(GO) run ./example demo

.PHONY: bench
bench: postgres ## measure runs/s, fanout spawn and drain, chain latency, worker RSS (BENCHFLAGS=-quick for a short run)
	$(GO) run ./cmd/pgflowbench $(BENCHFLAGS)

.PHONY: test
test: postgres ## vet, check formatting and generated files, run every test with the race detector
	$(GO) run ./cmd/pgflowgen -check ./...
	$(GO) vet $(PKGS)
	@unformatted="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) test -race -count=1 $(TESTFLAGS) $(PKGS)

.PHONY: chaos
chaos: postgres ## the long fault suite: kills, restarts, races, large data (a short version runs in make test)
	PGFLOW_FAULTS_LONG=1 $(GO) test -count=1 -timeout 60m -v -run . ./internal/faults/

.PHONY: generate
generate: ## regenerate pgflow_gen.go and pgflow_gen.sql of every package with //pgflow: annotations
	$(GO) run ./cmd/pgflowgen ./...

.PHONY: bench-engine
bench-engine: postgres ## measure the SQL engine: fanout spawn and drain (durable server)
	$(GO) test -run '^$$' -bench . -benchtime 3x ./internal/schema/

.PHONY: lint
lint: ## go vet and gofmt only
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }

# The tests start their own throwaway PostgreSQL server from the installed
# binaries (unless PGFLOW_TEST_DATABASE_URL is set); install them if missing.
.PHONY: postgres
postgres:
	@if [ -n "$$PGFLOW_TEST_DATABASE_URL" ] || command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "PostgreSQL server binaries not found; installing them with apt-get"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	else \
		echo "PostgreSQL server binaries (initdb, pg_ctl) are needed: install them (apt-get install postgresql) or set PGFLOW_TEST_DATABASE_URL" >&2; exit 1; \
	fi
