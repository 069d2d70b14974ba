package tracing

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

func env(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

func TestJaegerEndpointMapsToOTLP(t *testing.T) {
	for in, want := range map[string]string{
		// The guide's value: the legacy collector port and path become Jaeger's OTLP/HTTP.
		"http://jaeger-collector:14268/api/traces":    "http://jaeger-collector:4318/v1/traces",
		"https://jaeger.example.com:14268/api/traces": "https://jaeger.example.com:4318/v1/traces",
		// Anything else is taken as the OTLP traces URL it already is.
		"http://jaeger-collector:4318/v1/traces": "http://jaeger-collector:4318/v1/traces",
		"http://otel-gateway:9000/custom":        "http://otel-gateway:9000/custom",
	} {
		got, err := JaegerToOTLP(in)
		require.NoError(t, err)
		require.Equal(t, want, got, in)
	}
	_, err := JaegerToOTLP("jaeger-collector")
	require.ErrorContains(t, err, "JAEGER_ENDPOINT")
}

func TestSetupIsOffWithoutAnEndpoint(t *testing.T) {
	prev := otel.GetTracerProvider()
	s, stop, err := Setup(context.Background(), "khook-mapper", env(nil))
	require.NoError(t, err)
	require.False(t, s.Enabled)
	require.Equal(t, "khook-mapper", s.Service)
	require.NoError(t, stop(context.Background()))
	require.Equal(t, prev, otel.GetTracerProvider(), "tracing off installs nothing")

	s, _, err = Setup(context.Background(), "khook", env(map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "true"}))
	require.NoError(t, err)
	require.False(t, s.Enabled)

	_, _, err = Setup(context.Background(), "khook", env(map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}))
	require.ErrorContains(t, err, `want grpc or http/protobuf, got "http/json"`)
}

// JAEGER_ENDPOINT and JAEGER_SERVICE_NAME from the guide export spans over OTLP/HTTP.
func TestSetupExportsToJaegerEndpoint(t *testing.T) {
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/traces" && r.Header.Get("Content-Type") == "application/x-protobuf" {
			posts.Add(1)
		}
	}))
	t.Cleanup(srv.Close)
	prev := otel.GetTracerProvider()
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	s, stop, err := Setup(context.Background(), "khook", env(map[string]string{
		"JAEGER_ENDPOINT": srv.URL + "/v1/traces", "JAEGER_SERVICE_NAME": "khook-prod"}))
	require.NoError(t, err)
	require.True(t, s.Enabled)
	require.Equal(t, "khook-prod", s.Service)
	_, span := Tracer().Start(context.Background(), "test")
	span.End()
	require.NoError(t, stop(context.Background()), "shutdown flushes the span")
	require.Equal(t, int32(1), posts.Load())
}

func TestHeaderCarrierRoundTrip(t *testing.T) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(tracetest.NewInMemoryExporter()))
	ctx, span := tp.Tracer("t").Start(context.Background(), "s")
	defer span.End()
	h := nats.Header{}
	Inject(ctx, h)
	require.Len(t, h["traceparent"], 1, "the W3C key, in lower case as khook has always written it")
	got := trace.SpanContextFromContext(Extract(context.Background(), h))
	require.Equal(t, span.SpanContext().TraceID(), got.TraceID())
	require.Equal(t, span.SpanContext().SpanID(), got.SpanID())
	require.Equal(t, Traceparent(ctx), h.Get("traceparent"))
	require.Equal(t, span.SpanContext().TraceID().String(), TraceID(ctx))

	// Off, an incoming traceparent passes through a stage unchanged.
	off := Extract(context.Background(), h)
	off, s2 := otel.GetTracerProvider().Tracer("t").Start(off, "noop")
	s2.End()
	out := nats.Header{}
	Inject(off, out)
	require.Equal(t, h.Get("traceparent"), out.Get("traceparent"))
	require.Empty(t, TraceID(context.Background()))
	require.Equal(t, ctx, FromTraceparent(ctx, "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01"), "a span in ctx wins")
}

// BenchmarkStageSpan is what one stage does per event for tracing: extract from headers,
// start a span, inject into the next message, end. "off" is khook's default.
func BenchmarkStageSpan(b *testing.B) {
	traced := nats.Header{"traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}
	run := func(b *testing.B, tracer trace.Tracer, in nats.Header) {
		b.ReportAllocs()
		for b.Loop() {
			ctx, span := tracer.Start(Extract(context.Background(), in), "khook.map")
			out := nats.Header{}
			Inject(ctx, out)
			span.End()
		}
	}
	// Off with an untraced event is the common case; off with a caller's traceparent passes
	// it through.
	b.Run("off-untraced", func(b *testing.B) { run(b, otel.GetTracerProvider().Tracer(Name), nats.Header{}) })
	b.Run("off-traceparent", func(b *testing.B) { run(b, otel.GetTracerProvider().Tracer(Name), traced) })
	b.Run("on", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter(), sdktrace.WithBatchTimeout(time.Second)))
		defer func() { _ = tp.Shutdown(context.Background()) }()
		run(b, tp.Tracer(Name), traced)
	})
}

// grpcReceiver is an OTLP/gRPC trace receiver counting the spans it is sent.
type grpcReceiver struct {
	collectortrace.UnimplementedTraceServiceServer
	spans atomic.Int32
	names chan string
}

func (g *grpcReceiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				g.spans.Add(1)
				g.names <- s.Name
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// OTEL_EXPORTER_OTLP_PROTOCOL=grpc exports over gRPC, to a real gRPC server.
func TestSetupExportsOverGRPC(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	recv := &grpcReceiver{names: make(chan string, 8)}
	collectortrace.RegisterTraceServiceServer(srv, recv)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	prev := otel.GetTracerProvider()
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	// The exporters read their own variables from the process environment.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+ln.Addr().String())
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	s, stop, err := Setup(context.Background(), "khook-dispatcher", os.Getenv)
	require.NoError(t, err)
	require.True(t, s.Enabled)
	require.Equal(t, "grpc", s.Protocol)
	_, span := Tracer().Start(context.Background(), "khook.deliver")
	span.End()
	require.NoError(t, stop(context.Background()), "shutdown flushes the span")
	require.Equal(t, int32(1), recv.spans.Load())
	require.Equal(t, "khook.deliver", <-recv.names)
}
