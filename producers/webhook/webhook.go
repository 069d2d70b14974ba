// Package webhook is the webhook producer plugin: an HTTP ingress that turns requests from
// other systems (CI, Alertmanager, scripts, other clusters) into raw events, and answers
// 202 only after JetStream stored them.
package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/khook/khook/internal/tracing"
	"github.com/khook/khook/producers"
)

// Name is the plugin's name in plugins.yaml and the default source of its events.
const Name = "webhook"

// Version is the webhook plugin's version.
const Version = "1.0.0"

// Decoder turns one authenticated request into events, or refuses it with an error that
// carries an HTTP status (see Refuse). batch says whether to answer with a list.
type Decoder func(e Endpoint, source string, header http.Header, query url.Values, body []byte) (events []producers.Event, batch bool, err error)

// Webhook is the webhook plugin: an HTTP ingress. Other plugins that receive HTTP (the
// Alertmanager receiver) are the same server with another name and decoder.
type Webhook struct {
	name    string
	cfg     Config
	decode  Decoder
	types   []string
	logger  *zap.Logger
	metrics *metrics
	certs   *certReloader
	// OnListen, when set, is told the bound address; tests use it with port 0.
	OnListen func(net.Addr)
}

// New validates cfg and returns the webhook plugin. It starts nothing. reg receives the
// webhook's metrics; nil means they are not exported.
func New(cfg Config, logger *zap.Logger, reg prometheus.Registerer) (*Webhook, error) {
	return NewServer(Name, cfg, decodeRequest, nil, logger, reg)
}

// NewServer returns an HTTP ingress plugin called name that decodes requests with decode and
// emits only types (nil: any type).
func NewServer(name string, cfg Config, decode Decoder, types []string, logger *zap.Logger, reg prometheus.Registerer) (*Webhook, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("plugins.%s.config: %w", name, err)
	}
	if reg != nil {
		reg = prometheus.WrapRegistererWith(prometheus.Labels{"plugin": name}, reg)
	}
	for i, e := range cfg.endpoints() {
		auth := newAuthenticator(e)
		key := fmt.Sprintf("plugins.%s.config.endpoints[%d] (%s)", name, i, e.Path)
		if err := errors.Join(auth.token.Require(key+": token"), auth.hmacKey.Require(key+": hmac secret")); err != nil {
			return nil, err
		}
	}
	w := &Webhook{name: name, cfg: cfg, decode: decode, types: types, logger: logger, metrics: newMetrics(reg, cfg)}
	if cfg.EnableTLS {
		certs, err := newCertReloader(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("plugins.%s.config: %w", name, err)
		}
		w.certs = certs
	}
	return w, nil
}

// Refuse is an error a Decoder returns to answer with an HTTP status and reason.
func Refuse(code int, format string, args ...any) error {
	return &httpError{code: code, msg: fmt.Sprintf(format, args...)}
}

// FromSpec builds the plugin from its plugins.yaml entry.
func FromSpec(spec producers.Spec, logger *zap.Logger, reg prometheus.Registerer) (producers.Plugin, error) {
	cfg := DefaultConfig()
	if err := spec.DecodeConfig(&cfg); err != nil {
		return nil, err
	}
	return New(cfg, logger, reg)
}

// Name implements producers.EventSource.
func (w *Webhook) Name() string { return w.name }

// Version implements producers.EventSource.
func (w *Webhook) Version() string { return Version }

// URLs are where events are posted: one per endpoint, on the configured address (a
// wildcard one shown as 127.0.0.1).
func (w *Webhook) URLs() []string {
	scheme := "http"
	if w.cfg.EnableTLS {
		scheme = "https"
	}
	host := w.cfg.Address
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	base := scheme + "://" + net.JoinHostPort(host, strconv.Itoa(w.cfg.Port))
	var out []string
	for _, e := range w.cfg.endpoints() {
		out = append(out, base+e.Path)
	}
	return out
}

// SupportedEventTypes implements producers.EventSource: the types of the decoder, or any.
func (w *Webhook) SupportedEventTypes() []string { return w.types }

// Run serves HTTP (or HTTPS) until ctx ends, then stops accepting requests and waits for
// in-flight requests, and their publishes, to finish.
func (w *Webhook) Run(ctx context.Context, emit producers.Emit) error {
	ln, err := net.Listen("tcp", net.JoinHostPort(w.cfg.Address, strconv.Itoa(w.cfg.Port)))
	if err != nil {
		return fmt.Errorf("webhook: %w; set address and port in the plugin's plugins.yaml entry", err)
	}
	if w.OnListen != nil {
		w.OnListen(ln.Addr())
	}
	srv := &http.Server{
		Handler:           w.Handler(emit),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      w.cfg.Timeout + 10*time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          zap.NewStdLog(w.logger.Named("http")),
	}
	if w.certs != nil {
		srv.TLSConfig = w.certs.tlsConfig()
	}
	w.logger.Info(w.name+" listening", zap.String("addr", ln.Addr().String()), zap.Bool("tls", w.certs != nil),
		zap.Int("endpoints", len(w.cfg.endpoints())))
	errc := make(chan error, 1)
	go func() {
		if w.certs != nil {
			errc <- srv.ServeTLS(ln, "", "")
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("webhook: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), w.cfg.Timeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("webhook shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("webhook: %w", err)
	}
	return nil
}

// Handler returns the plugin's HTTP handler: POST on each endpoint's path, and GET /healthz
// for load balancers.
func (w *Webhook) Handler(emit producers.Emit) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) {
		writeJSON(rw, http.StatusOK, map[string]string{"status": "ok"})
	})
	inflight := make(chan struct{}, w.cfg.MaxConcurrentRequests)
	// Bodies read before their signature is checked get a pool of their own, a quarter of
	// the request slots, so unauthenticated uploads cannot take the slots signed ones need.
	unverified := make(chan struct{}, max(1, w.cfg.MaxConcurrentRequests/4))
	for _, e := range w.cfg.endpoints() {
		ep := &endpoint{Endpoint: e, auth: newAuthenticator(e), w: w, emit: emit, inflight: inflight, unverified: unverified}
		if e.RateLimitRPS > 0 {
			ep.limiter = rate.NewLimiter(rate.Limit(e.RateLimitRPS), int(math.Max(1, math.Ceil(e.RateLimitRPS))))
		}
		mux.Handle(e.Path, ep)
	}
	return mux
}

// endpoint serves one path.
type endpoint struct {
	Endpoint
	auth     authenticator
	limiter  *rate.Limiter
	w        *Webhook
	emit     producers.Emit
	inflight chan struct{}
	// unverified bounds requests whose body is being read before its HMAC is checked.
	unverified chan struct{}
}

// accepted is one stored event in a 202 answer.
type accepted struct {
	ID        string `json:"id"`
	Duplicate bool   `json:"duplicate"`
}

func (ep *endpoint) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	// A caller's traceparent is continued; each stored event's publish span is a child of
	// this one, and the trace follows the event to the agent.
	ctx := otel.GetTextMapPropagator().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	ctx, span := tracing.Tracer().Start(ctx, "khook.webhook.receive", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("http.route", ep.Path)))
	defer span.End()
	r = r.WithContext(ctx)
	code, reason := ep.serve(rw, r)
	span.SetAttributes(attribute.Int("http.response.status_code", code))
	if code >= 500 {
		span.SetStatus(codes.Error, reason)
	}
	ep.w.metrics.requests.WithLabelValues(ep.Path, strconv.Itoa(code)).Inc()
	if ep.w.cfg.EnableDebug || code >= 500 {
		level := zap.DebugLevel
		if code >= 500 {
			level = zap.WarnLevel
		}
		ep.w.logger.Check(level, "webhook request").Write(zap.String("endpoint", ep.Path), zap.Int("status", code),
			zap.String("reason", reason), zap.String("remote", r.RemoteAddr))
	}
}

// unverifiedReadTimeout bounds how long a body whose signature is not yet checked may take
// to arrive: such a request holds a slot of the small unverified pool, not a request slot.
const unverifiedReadTimeout = 10 * time.Second

// serve handles one request and returns its status and, for refusals, the reason given.
// The checks run cheapest first, so floods are turned away before bodies are read, and a
// request holds one of maxConcurrentRequests slots only once its credentials check out:
//
//  1. the method, then the bearer token (headers only: 401 before any body is read);
//  2. for an HMAC endpoint, the body is read within unverifiedReadTimeout while holding a
//     slot of a separate, smaller pool, and the signature checked (401);
//  3. a request slot (503 when all are taken) and the rate limit (429);
//  4. the body, at most maxBodyBytes (413), decoding (400/415), and the store (413 for an
//     event larger than the server takes, 503 when the store is unavailable).
func (ep *endpoint) serve(rw http.ResponseWriter, r *http.Request) (int, string) {
	// Until the body is read, a refusal closes the connection: otherwise the server would
	// read (and wait for) the unread body before answering, which is exactly the cost a
	// refusal must not have.
	rw.Header().Set("Connection", "close")
	if r.Method != http.MethodPost {
		rw.Header().Set("Allow", http.MethodPost)
		return refuse(rw, &httpError{http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed: POST events to %s", r.Method, ep.Path)})
	}
	if err := ep.auth.checkHeaders(r.Header); err != nil {
		return ep.unauthenticated(rw, r, err)
	}
	var body []byte
	if ep.auth.needsBody() {
		select {
		case ep.unverified <- struct{}{}:
		default:
			rw.Header().Set("Retry-After", "1")
			return refuse(rw, &httpError{http.StatusServiceUnavailable, "too many requests awaiting signature checks, retry later"})
		}
		_ = http.NewResponseController(rw).SetReadDeadline(time.Now().Add(unverifiedReadTimeout))
		var he *httpError
		body, he = ep.readBody(rw, r)
		if he == nil {
			if err := ep.auth.checkBody(r.Header, body); err != nil {
				<-ep.unverified
				return ep.unauthenticated(rw, r, err)
			}
		}
		<-ep.unverified
		if he != nil {
			return refuse(rw, he)
		}
		rw.Header().Del("Connection")
	}
	select {
	case ep.inflight <- struct{}{}:
		ep.w.metrics.inflight.Inc()
		defer func() {
			ep.w.metrics.inflight.Dec()
			<-ep.inflight
		}()
	default:
		rw.Header().Set("Retry-After", "1")
		return refuse(rw, &httpError{http.StatusServiceUnavailable, "too many concurrent requests, retry later"})
	}
	if ep.limiter != nil {
		if res := ep.limiter.Reserve(); res.Delay() > 0 {
			res.Cancel()
			rw.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(res.Delay().Seconds()))))
			return refuse(rw, &httpError{http.StatusTooManyRequests, fmt.Sprintf("rate limit of %g requests/s exceeded", ep.RateLimitRPS)})
		}
	}
	if body == nil {
		var he *httpError
		if body, he = ep.readBody(rw, r); he != nil {
			return refuse(rw, he)
		}
	}
	rw.Header().Del("Connection")
	events, batch, err := ep.w.decode(ep.Endpoint, ep.w.name, r.Header, r.URL.Query(), body)
	if err != nil {
		var he *httpError
		errors.As(err, &he)
		return refuse(rw, he)
	}

	ctx, cancel := context.WithTimeout(r.Context(), ep.w.cfg.Timeout)
	defer cancel()
	out := make([]accepted, 0, len(events))
	for _, ev := range events {
		start := time.Now()
		res, err := ep.emit(ctx, ev)
		ep.w.metrics.publish.WithLabelValues(ep.Path).Observe(time.Since(start).Seconds())
		switch {
		case errors.Is(err, producers.ErrTooLarge):
			// The client's event, not the store, is the problem: no retry will help, and
			// the producer stays ready.
			return refuse(rw, &httpError{http.StatusRequestEntityTooLarge, err.Error()})
		case errors.Is(err, producers.ErrInvalidEvent):
			return refuse(rw, badRequest("%v", err))
		case err != nil:
			// Never 2xx for an event that was not stored. Events of a batch stored before
			// this one stay stored; a retry of the batch stores each at most once, because
			// their ids are the same.
			ep.w.logger.Warn("event not stored", zap.String("event_id", ev.ID), tracing.LogField(ctx), zap.Error(err))
			rw.Header().Set("Retry-After", "1")
			return refuse(rw, &httpError{http.StatusServiceUnavailable, "event store unavailable, retry later"})
		}
		out = append(out, accepted{ID: res.ID, Duplicate: res.Duplicate})
	}
	if batch {
		writeJSON(rw, http.StatusAccepted, map[string]any{"events": out})
	} else {
		writeJSON(rw, http.StatusAccepted, out[0])
	}
	return http.StatusAccepted, ""
}

// unauthenticated logs why a request failed authentication and answers 401; the caller
// learns only that it failed.
func (ep *endpoint) unauthenticated(rw http.ResponseWriter, r *http.Request, err error) (int, string) {
	ep.w.logger.Info("request not authenticated", zap.String("endpoint", ep.Path),
		zap.String("remote", r.RemoteAddr), zap.String("reason", err.Error()))
	return refuse(rw, &httpError{http.StatusUnauthorized, "missing or invalid credentials"})
}

// readBody reads the body, at most maxBodyBytes.
func (ep *endpoint) readBody(rw http.ResponseWriter, r *http.Request) ([]byte, *httpError) {
	body, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, ep.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", ep.MaxBodyBytes)}
		}
		return nil, badRequest("reading body: %v", err)
	}
	ep.w.metrics.bytes.WithLabelValues(ep.Path).Add(float64(len(body)))
	return body, nil
}

func refuse(rw http.ResponseWriter, e *httpError) (int, string) {
	writeJSON(rw, e.code, map[string]string{"error": e.msg})
	return e.code, e.msg
}

func writeJSON(rw http.ResponseWriter, code int, v any) {
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(code)
	_ = json.NewEncoder(rw).Encode(v)
}

type metrics struct {
	requests *prometheus.CounterVec
	publish  *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
	inflight prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, cfg Config) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_webhook_requests_total",
			Help: "Webhook requests, by endpoint path and HTTP status code.",
		}, []string{"endpoint", "code"}),
		publish: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "khook_webhook_publish_duration_seconds",
			Help:    "Time JetStream took to acknowledge one event of a webhook request.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12),
		}, []string{"endpoint"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_webhook_received_bytes_total",
			Help: "Request body bytes read, by endpoint path.",
		}, []string{"endpoint"}),
		// One gauge for the server, not per endpoint, because the slots it counts are shared
		// by every endpoint: it is the number to compare with maxConcurrentRequests.
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "khook_webhook_requests_in_flight",
			Help: "Webhook requests holding one of the maxConcurrentRequests slots.",
		}),
	}
	for _, e := range cfg.endpoints() {
		m.bytes.WithLabelValues(e.Path)
		m.publish.WithLabelValues(e.Path)
		for _, code := range []string{"202", "400", "401", "405", "413", "415", "429", "503"} {
			m.requests.WithLabelValues(e.Path, code)
		}
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.publish, m.bytes, m.inflight)
	}
	return m
}
