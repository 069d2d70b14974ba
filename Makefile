# khook's two everyday commands are `make run` and `make test`; see README.md.
GO       ?= go
BIN      := bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)

.PHONY: all build run test test-short bench bench-packages fuzz lint fmt vet clean docker-build helm-path helm-lint helm-template helm-upgrade
IMAGE_REPO ?= ghcr.io/khook/khook
IMAGE    ?= $(IMAGE_REPO):$(VERSION)

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/khook ./cmd/khook

# run starts the demo A2A agent and the whole pipeline with an embedded NATS server.
# In another terminal: see README.md for the curl that makes the agent print a task.
run: build
	@$(BIN)/khook agent --addr 127.0.0.1:8083 & agent=$$!; \
	trap 'kill $$agent 2>/dev/null' EXIT INT TERM; \
	$(BIN)/khook run --config examples/local/khook.yaml

# test runs every test, including the multi-process, crash and Kubernetes tests, with the race
# detector. The Kubernetes tests run a real kube-apiserver and etcd, built once from the Go
# module proxy into ~/.cache/khook (test/kube/build-assets.sh; a few minutes the first time).
# The chart tests use helm and promtool built from the module proxy (test/helm/build-helm.sh,
# test/promtool/build-promtool.sh, cached in ~/.cache/khook).
# The container tests run on the Docker engine with the Compose v2 and buildx plugins, built
# from the module proxy (test/docker/build-plugins.sh, cached in ~/.cache/khook), and use
# Debian's busybox-static as the shell of a stand-in Go image (installed with apt-get when
# missing: test/busybox/find-busybox.sh). test/tools.sh builds the tools side by side, prints
# one line per tool with its time, and sets the variables.
test: vet
	eval "$$(test/tools.sh)" && \
	$(GO) test -race -count=1 -timeout 30m ./...

# test-short is a contributor's fast loop: every package's own tests, against embedded NATS,
# without the end-to-end, multi-process, container and Kubernetes tests (test/,
# producers/kubernetes, internal/kubetest), so it needs none of the tools test/tools.sh
# builds. make test runs everything.
SHORT_PKGS = $$($(GO) list ./... | grep -v -e '/test$$' -e '/producers/kubernetes$$' -e '/internal/kubetest$$')
test-short:
	$(GO) test -count=1 $(SHORT_PKGS)

# bench runs every stage against raw JetStream in one run (about three minutes) and writes
# bench/results.json, bench/results.md and bench/results.png; see docs/benchmarks.md.
# bench-packages runs the per-package Go benchmarks (go test -bench).
bench:
	$(GO) run ./cmd/khook-bench --out bench

bench-packages:
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./...

# fuzz runs every fuzzer for FUZZTIME each; the committed seeds run in every `make test`.
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./streams/cloudevent/
	$(GO) test -run '^$$' -fuzz '^FuzzEncodeStrings$$' -fuzztime $(FUZZTIME) ./streams/cloudevent/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./mapping/
	$(GO) test -run '^$$' -fuzz '^FuzzMap$$' -fuzztime $(FUZZTIME) ./mapping/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRequest$$' -fuzztime $(FUZZTIME) ./producers/webhook/
	KHOOK_FUZZ_BOUND=150ms $(GO) test -run '^$$' -fuzz '^FuzzHooks$$' -fuzztime $(FUZZTIME) ./hook/
	$(GO) test -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime $(FUZZTIME) ./internal/config/

# lint runs golangci-lint with .golangci.yml: goimports with khook's import groups, errorlint,
# and depguard, which keeps the layering of CONTRIBUTING.md (pure hook/ and mapping/, stages
# that import neither app/ nor ops/, helpers at the bottom). GOLANGCI_LINT defaults to one on
# the PATH, else one built from the module proxy (test/lint/build-golangci-lint.sh, cached in
# ~/.cache/khook).
GOLANGCI_LINT ?= $(shell command -v golangci-lint || test/lint/build-golangci-lint.sh)
lint:
	$(GOLANGCI_LINT) run ./...

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt needed'; exit 1; }
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

# docker-build builds the one image every subcommand runs from (needs a Docker engine).
docker-build:
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

# The chart (helm/khook). HELM defaults to a helm on the PATH, else one built from the module
# proxy. helm-upgrade is the deployment guide's command; VALUES picks the environment:
#   make helm-upgrade VALUES=helm/khook/values-prod.yaml NAMESPACE=kagent
HELM      ?= $(shell command -v helm || test/helm/build-helm.sh)
NAMESPACE ?= kagent
VALUES    ?=
# helm-path prints the helm the targets use: alias helm="$(make -s helm-path)".
helm-path:
	@echo $(HELM)

helm-lint:
	$(HELM) lint --strict helm/khook-crds
	@for v in "" helm/khook/values-dev.yaml helm/khook/values-staging.yaml helm/khook/values-prod.yaml; do \
		$(HELM) lint --strict helm/khook $${v:+--values $$v} || exit 1; done

helm-template:
	$(HELM) template khook helm/khook --namespace $(NAMESPACE) $(if $(VALUES),--values $(VALUES))

# The CRD chart goes first, so a new Hook schema is in place before the dispatcher reads it.
helm-upgrade:
	$(HELM) upgrade --install khook-crds helm/khook-crds --namespace $(NAMESPACE) --create-namespace
	$(HELM) upgrade --install khook helm/khook --namespace $(NAMESPACE) --create-namespace \
		--set image.repository=$(IMAGE_REPO),image.tag=$(VERSION) $(if $(VALUES),--values $(VALUES))

clean:
	rm -rf $(BIN) data
