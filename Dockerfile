# One image for every khook subcommand: a static binary on distroless, running as non-root.
#   make docker-build   (or: docker build -t khook:dev .)
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/khook ./cmd/khook

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/khook /khook
USER nonroot:nonroot
EXPOSE 8080 8081 8090
ENTRYPOINT ["/khook"]
CMD ["run"]
