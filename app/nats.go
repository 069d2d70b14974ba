package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/streams"
)

// Connect connects to nats.url (or, when it is empty, to where `khook run` with the same
// configuration serves its embedded server) and returns the connection and its JetStream
// context. extra options come last; reconnects never give up, so a stage outlives NATS
// restarts.
func Connect(cfg config.Config, extra ...nats.Option) (*nats.Conn, jetstream.JetStream, error) {
	return ConnectContext(context.Background(), cfg, extra...)
}

// ConnectContext is Connect, given up at once when ctx ends (Ctrl-C while NATS is away).
func ConnectContext(ctx context.Context, cfg config.Config, extra ...nats.Option) (*nats.Conn, jetstream.JetStream, error) {
	if cfg.NATS.URL == "" {
		cfg.NATS.URL = localNATSURL(cfg)
	}
	nc, err := connect(ctx, cfg, extra...)
	if err != nil {
		return nil, nil, err
	}
	// An asynchronous publish whose acknowledgement is lost (its stream's leader died) would
	// otherwise never complete, and the mapper settles its acknowledgements in order: one
	// lost ack would hold every later raw event. With a timeout the publish fails, the raw
	// event is redelivered, and its message id makes the republish a no-op if it was stored.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(asyncPublishTimeout))
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// asyncPublishTimeout bounds the wait for one asynchronous publish's acknowledgement; a
// healthy JetStream answers in milliseconds, and a new stream leader is elected in seconds.
const asyncPublishTimeout = 5 * time.Second

// localNATSURL is where a command finds NATS when nats.url is empty: the embedded server's
// listen address when the configuration gives one (what `khook run` with the same file
// serves), else the default local server.
func localNATSURL(cfg config.Config) string {
	listen := cfg.NATS.Embedded.Listen
	if listen == "" {
		return config.DefaultNATSURL
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return config.DefaultNATSURL
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "nats://" + net.JoinHostPort(host, port)
}

func connect(ctx context.Context, cfg config.Config, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name("khook"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.Timeout(cfg.NATS.ConnectTimeout),
		// Three unanswered pings and the client reconnects to another server: a server cut
		// off by a network partition is left within three ping intervals.
		nats.PingInterval(cfg.NATS.PingInterval),
		nats.MaxPingsOutstanding(3),
	}
	opts = append(opts, extra...)
	if cfg.NATS.CredentialsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.NATS.CredentialsFile))
	}
	if t := cfg.NATS.TLS; t.CAFile != "" || t.CertFile != "" {
		tc, err := tlsConfig(t)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.Secure(tc))
	}
	url := cfg.NATS.URL
	deadline := time.Now().Add(cfg.NATS.ConnectTimeout)
	for {
		nc, err := connectOnce(ctx, url, opts)
		if err == nil {
			return nc, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("nats connect %s: %w", url, ctx.Err())
		}
		// Wrong credentials will not become right by waiting.
		if errors.Is(err, nats.ErrAuthorization) || strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
			return nil, fmt.Errorf("nats connect %s: %w", url, err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("nats connect %s: %w", url, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("nats connect %s: %w", url, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// connectOnce is one nats.Connect, which may wait up to its timeout for a server that
// accepted the connection but does not answer; ctx ending abandons the wait (the attempt's
// connection, should it succeed after all, is closed).
func connectOnce(ctx context.Context, url string, opts []nats.Option) (*nats.Conn, error) {
	type result struct {
		nc  *nats.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(url, opts...)
		done <- result{nc, err}
	}()
	select {
	case r := <-done:
		return r.nc, r.err
	case <-ctx.Done():
		go func() {
			if r := <-done; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

func tlsConfig(t config.TLS) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("nats.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("nats.tls.ca_file: no certificates in %s", t.CAFile)
		}
		tc.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("nats.tls: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// applyWithRetry applies the stream topology, retrying while the server is still starting
// (a JetStream cluster electing its meta leader answers with errors for a few seconds).
func applyWithRetry(ctx context.Context, js jetstream.JetStream, topo streams.Config, logger *zap.Logger) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		changes, err := streams.Apply(actx, js, topo)
		cancel()
		if err == nil {
			for _, c := range changes {
				if c.Action != streams.Unchanged {
					logger.Info("topology applied", zap.String("kind", c.Kind), zap.String("name", c.Name), zap.String("action", string(c.Action)))
				}
			}
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("streams apply: %w", err)
		}
		logger.Warn("streams apply failed, retrying", zap.Error(err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
