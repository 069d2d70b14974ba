package test

import (
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

// A caller's trace: khook must continue it, not start a new one.
const (
	callerTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerSpanID  = "00f067aa0ba902b7"
)

// postTraced POSTs a deploy-failed event with the caller's traceparent.
func postTraced(t *testing.T, port int, resource string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/webhook", port),
		strings.NewReader(`{"type":"deploy-failed","namespace":"shop","resourceName":"`+resource+`","message":"rollout stuck"}`))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", "00-"+callerTraceID+"-"+callerSpanID+"-01")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode, string(body))
}

// span is one recorded span, reduced to what the assertions need.
type span struct {
	service, name, traceID, spanID, parentID string
}

// checkChain asserts the spans form one trace, stage after stage, under the caller's span,
// and that the agent's traceparent names the delivery span as its parent.
func checkChain(t *testing.T, spans []span, agentTraceparent string) {
	t.Helper()
	byName := map[string]span{}
	for _, s := range spans {
		require.Equal(t, callerTraceID, s.traceID, "every span is in the caller's trace: %+v", s)
		byName[s.name] = s
	}
	chain := []string{"khook.webhook.receive", "khook.publish", "khook.map", "khook.dispatch", "khook.deliver"}
	parent := callerSpanID
	for _, name := range chain {
		s, ok := byName[name]
		require.True(t, ok, "no %s span in %+v", name, spans)
		require.Equal(t, parent, s.parentID, "%s's parent", name)
		parent = s.spanID
	}
	require.Equal(t, byName["khook.dispatch"].spanID, byName["khook.match"].parentID)
	require.Equal(t, byName["khook.dispatch"].spanID, byName["khook.suppress"].parentID)
	require.Equal(t, "00-"+callerTraceID+"-"+byName["khook.deliver"].spanID+"-01", agentTraceparent,
		"the agent is called with the delivery span as parent")
}

// TestTraceInProcess follows one webhook POST through every stage in one process, with an
// in-memory span exporter.
func TestTraceInProcess(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	agent, agentURL := startAgent(t)
	p := startInProcess(t, agentURL)
	postTraced(t, p.webhook, "cart")
	got := waitReceived(t, agent, 1, 10*time.Second)
	// The dispatch span ends after the event is acknowledged, a moment after the call.
	require.Eventually(t, func() bool { return len(exp.GetSpans()) >= 7 }, 10*time.Second, 5*time.Millisecond)
	var spans []span
	for _, s := range exp.GetSpans() {
		spans = append(spans, span{name: s.Name, traceID: s.SpanContext.TraceID().String(),
			spanID: s.SpanContext.SpanID().String(), parentID: s.Parent.SpanID().String()})
	}
	require.Len(t, spans, 7, "receive, publish, map, dispatch, match, suppress, deliver: %+v", spans)
	checkChain(t, spans, got[0].Traceparent)
	p.stop()
}

// otlpReceiver is a minimal OTLP/HTTP traces endpoint: it decodes what khook's exporter
// sends, as a collector or Jaeger would.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []span
}

func (o *otlpReceiver) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/traces" {
		http.NotFound(rw, r)
		return
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	b, err := io.ReadAll(body)
	if err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	var req collectortrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &req); err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	for _, rs := range req.ResourceSpans {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.Key == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				o.spans = append(o.spans, span{service: service, name: s.Name, traceID: hex.EncodeToString(s.TraceId),
					spanID: hex.EncodeToString(s.SpanId), parentID: hex.EncodeToString(s.ParentSpanId)})
			}
		}
	}
	o.mu.Unlock()
	out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
	rw.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = rw.Write(out)
}

func (o *otlpReceiver) get() []span {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]span(nil), o.spans...)
}

// TestTraceAcrossProcesses runs the three stages as processes exporting over OTLP/HTTP to a
// receiver in the test: the spans of producer, mapper and dispatcher form one trace, linked
// by the traceparent in the NATS headers, and the log lines about the event carry its id.
func TestTraceAcrossProcesses(t *testing.T) {
	recv := &otlpReceiver{}
	srv := httptest.NewServer(recv)
	t.Cleanup(srv.Close)

	dir := t.TempDir()
	_, natsURL := startNATS(t, dir+"/nats", freePort(t))
	agent, agentURL := startAgent(t)
	base := pipelineFiles{dir: dir, natsURL: natsURL, agentURL: agentURL, webhook: freePort(t)}
	runOnce(t, "streams", "apply", "--config", base.write(t))
	env := []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + srv.URL, "OTEL_BSP_SCHEDULE_DELAY=50", "LOG_LEVEL=debug"}
	procs := map[string]*proc{}
	for _, stage := range []string{"producer", "mapper", "dispatcher"} {
		f := base
		f.dir = t.TempDir()
		f.metrics, f.probes = freePort(t), freePort(t)
		p := startEnv(t, "khook "+stage, env, bins.khook(), stage, "--config", f.write(t))
		waitReady(t, p, f.probes)
		procs[stage] = p
	}

	postTraced(t, base.webhook, "cart")
	got := waitReceived(t, agent, 1, 10*time.Second)
	require.Eventually(t, func() bool { return len(recv.get()) >= 7 }, 20*time.Second, 20*time.Millisecond)
	spans := recv.get()
	require.Len(t, spans, 7, "%+v", spans)
	checkChain(t, spans, got[0].Traceparent)
	services := map[string]string{}
	for _, s := range spans {
		services[s.name] = s.service
	}
	require.Equal(t, map[string]string{
		"khook.webhook.receive": "khook-producer", "khook.publish": "khook-producer", "khook.map": "khook-mapper",
		"khook.dispatch": "khook-dispatcher", "khook.match": "khook-dispatcher", "khook.suppress": "khook-dispatcher",
		"khook.deliver": "khook-dispatcher",
	}, services)

	// The dispatcher's log line about the delivery names the event and its trace.
	require.Eventually(t, func() bool {
		return strings.Contains(procs["dispatcher"].out.String(), `"trace_id": "`+callerTraceID+`"`)
	}, 10*time.Second, 10*time.Millisecond, "the delivery log carries the trace id:\n%s", procs["dispatcher"].out.String())
	for _, line := range strings.Split(procs["dispatcher"].out.String(), "\n") {
		if strings.Contains(line, "\tdelivered\t") {
			require.Contains(t, line, `"event_id": "`)
			require.Contains(t, line, `"trace_id": "`+callerTraceID+`"`)
		}
	}
	for _, p := range procs {
		require.NoError(t, p.stop(t))
	}
	require.True(t, bytes.Contains([]byte(procs["producer"].out.String()), []byte("tracing on")))
}
