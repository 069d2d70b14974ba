// Package tracing sets up OpenTelemetry tracing from the standard environment and carries
// the W3C trace context through NATS headers, so one event can be followed from the
// webhook request through every stage to the agent call, across processes.
//
// Tracing is off unless an exporter endpoint is configured. Off, the stages still pass an
// incoming traceparent along unchanged (the global no-op tracer keeps the parent's span
// context), so a caller's trace reaches the agent even when khook records nothing.
package tracing

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
)

// Name is the instrumentation scope of every khook span.
const Name = "github.com/khook/khook"

// Tracer returns khook's tracer from the global provider. The global provider delegates, so
// a tracer taken before Setup still records once Setup installs a real provider.
func Tracer() trace.Tracer { return otel.Tracer(Name) }

func init() {
	// The propagator is set whether or not tracing is on, so traceparent passes through.
	// Only the W3C trace context: khook neither reads nor forwards baggage.
	otel.SetTextMapPropagator(propagation.TraceContext{})
}

// Settings is what Setup read from the environment, for the start-up log.
type Settings struct {
	Enabled  bool
	Service  string
	Protocol string
	Endpoint string // empty when the exporter reads its own OTEL_EXPORTER_OTLP_* variables
}

// Setup installs a tracer provider exporting over OTLP when the environment asks for one:
//
//   - OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, with
//     OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL grpc or http/protobuf (the default), and the
//     exporters' other standard variables (headers, timeout, certificates);
//   - or the deployment guide's JAEGER_ENDPOINT, sent as OTLP over HTTP, which Jaeger has
//     received natively since 1.35: the legacy collector address
//     http://host:14268/api/traces becomes http://host:4318/v1/traces, any other URL is used
//     as the OTLP traces URL as it is.
//
// The service name is OTEL_SERVICE_NAME, else JAEGER_SERVICE_NAME, else service. Sampling is
// the SDK's: OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (parentbased_always_on by
// default; parentbased_traceidratio with a ratio for busy pipelines). OTEL_SDK_DISABLED=true
// or OTEL_TRACES_EXPORTER=none turn tracing off. The returned function flushes and stops the
// provider. getenv decides whether and how to trace; the OTLP exporters read their own
// variables from the process environment, so in production getenv is os.Getenv.
func Setup(ctx context.Context, service string, getenv func(string) string) (Settings, func(context.Context) error, error) {
	noop := func(context.Context) error { return nil }
	s := Settings{Service: firstOf(getenv("OTEL_SERVICE_NAME"), getenv("JAEGER_SERVICE_NAME"), service)}
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") || getenv("OTEL_TRACES_EXPORTER") == "none" {
		return s, noop, nil
	}
	otlp := getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != ""
	jaeger := getenv("JAEGER_ENDPOINT")
	if !otlp && jaeger == "" {
		return s, noop, nil
	}
	s.Enabled = true
	s.Protocol = firstOf(getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), getenv("OTEL_EXPORTER_OTLP_PROTOCOL"), "http/protobuf")

	var exp sdktrace.SpanExporter
	var err error
	switch {
	case !otlp:
		s.Protocol = "http/protobuf"
		if s.Endpoint, err = JaegerToOTLP(jaeger); err != nil {
			return s, nil, err
		}
		exp, err = otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(s.Endpoint))
	case s.Protocol == "grpc":
		exp, err = otlptracegrpc.New(ctx)
	case s.Protocol == "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	default:
		return s, nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL: want grpc or http/protobuf, got %q", s.Protocol)
	}
	if err != nil {
		return s, nil, fmt.Errorf("tracing: %w", err)
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(attribute.String("service.name", s.Service)))
	if err != nil {
		return s, nil, fmt.Errorf("tracing: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	return s, tp.Shutdown, nil
}

// JaegerToOTLP maps the guide's JAEGER_ENDPOINT to an OTLP/HTTP traces URL.
func JaegerToOTLP(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("JAEGER_ENDPOINT: want a URL such as http://jaeger-collector:4318/v1/traces, got %q", endpoint)
	}
	if u.Port() == "14268" || u.Path == "/api/traces" {
		u.Host = u.Hostname() + ":4318"
		u.Path = "/v1/traces"
	}
	return u.String(), nil
}

func firstOf(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// Header is a propagation carrier over NATS message headers. NATS header keys are
// case-sensitive, and khook has always written "traceparent" in lower case, so the keys are
// used exactly as the W3C names them.
type Header nats.Header

// Get implements propagation.TextMapCarrier.
func (h Header) Get(key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Set implements propagation.TextMapCarrier.
func (h Header) Set(key, value string) { h[key] = []string{value} }

// Keys implements propagation.TextMapCarrier.
func (h Header) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}

// Extract returns ctx carrying the trace context of a message's headers.
func Extract(ctx context.Context, h nats.Header) context.Context {
	if len(h["traceparent"]) == 0 {
		// Most events carry no trace when tracing is off; skip the propagator for them.
		return ctx
	}
	return otel.GetTextMapPropagator().Extract(ctx, Header(h))
}

// Inject writes ctx's trace context into a message's headers.
func Inject(ctx context.Context, h nats.Header) {
	otel.GetTextMapPropagator().Inject(ctx, Header(h))
}

// FromTraceparent returns ctx continuing a W3C traceparent value, when ctx has no span yet.
func FromTraceparent(ctx context.Context, traceparent string) context.Context {
	if traceparent == "" || trace.SpanContextFromContext(ctx).IsValid() {
		return ctx
	}
	return otel.GetTextMapPropagator().Extract(ctx, propagation.MapCarrier{"traceparent": traceparent})
}

// Traceparent returns ctx's trace context as a W3C traceparent value, or "".
func Traceparent(ctx context.Context) string {
	c := propagation.MapCarrier{}
	otel.GetTextMapPropagator().Inject(ctx, c)
	return c["traceparent"]
}

// TraceID returns ctx's trace id for log lines, or "" when there is none.
func TraceID(ctx context.Context) string {
	if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
		return sc.TraceID().String()
	}
	return ""
}

// Fail marks a span failed with err.
func Fail(span trace.Span, err error) {
	if err == nil {
		return
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
}

// LogField is the trace_id field for a log line about an event, or nothing when the event
// has no trace, so that lines can be joined with the trace in a tracing backend.
func LogField(ctx context.Context) zap.Field {
	if id := TraceID(ctx); id != "" {
		return zap.String("trace_id", id)
	}
	return zap.Skip()
}
