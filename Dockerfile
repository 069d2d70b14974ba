# One image for every khook subcommand: a static binary on distroless, running as non-root.
#   make docker-build                          (or: docker build -t khook:dev .)
#   docker buildx build --platform linux/amd64,linux/arm64 -t REPO/khook:TAG .
# BuildKit is required (the cache mounts). The base images and the module proxy are build
# arguments, so a build without a registry or behind a mirror can substitute its own:
#   --build-arg GO_IMAGE=... --build-arg RUNTIME_IMAGE=... --build-arg GOPROXY=...
ARG GO_IMAGE=golang:1.26
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

# The build stage runs on the builder's own platform and cross-compiles for the target, so a
# multi-architecture build needs no emulation.
FROM --platform=$BUILDPLATFORM ${GO_IMAGE} AS build
ARG GOPROXY=https://proxy.golang.org,direct
ENV GOPROXY=${GOPROXY} CGO_ENABLED=0 GOFLAGS=-buildvcs=false
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
ARG TARGETOS=linux
ARG TARGETARCH=amd64
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/khook ./cmd/khook && \
    mkdir -p /out/data

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/khook /khook
# `khook run` keeps the embedded server's JetStream files in ./data, which is /data here:
# writable by the non-root user (mount a volume there to keep them).
COPY --from=build --chown=65532:65532 /out/data /data
# 65532 is distroless' nonroot user; numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080 8081 8090
ENTRYPOINT ["/khook"]
# With no arguments the image prints its commands; compose and the chart name the command.
CMD ["--help"]
