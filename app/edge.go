package app

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/streams"
)

// Edge is `khook edge`: one cluster's producers, over an embedded NATS server that is a leaf
// node of the hub's, with JetStream in the cluster's own domain. No mapper and no
// dispatcher run at an edge; the hub's raw stream sources the edge's.
var Edge = Stages{Producers: true, Embedded: true, Edge: true}

// edgeServer sets up cfg's embedded server as an edge: its domain is the cluster's name, and
// it dials the hub as a leaf node, denying khook's own subjects both ways so that the hub
// stores each event once, through its source.
func edgeServer(cfg config.Config) (streams.EmbeddedConfig, error) {
	if err := cfg.ValidateEdge(); err != nil {
		return streams.EmbeddedConfig{}, err
	}
	e := cfg.NATS.Embedded
	e.Domain = cfg.Cluster
	h := cfg.Edge.Hub
	remote := &streams.LeafRemote{CredentialsFile: h.CredentialsFile, Deny: cfg.Streams.LeafDeny()}
	var password string
	if h.PasswordFile != "" {
		b, err := os.ReadFile(h.PasswordFile)
		if err != nil {
			return e, fmt.Errorf("edge.hub.password_file: %w", err)
		}
		if password = strings.TrimSpace(string(b)); password == "" {
			return e, fmt.Errorf("edge.hub.password_file: %s is empty", h.PasswordFile)
		}
	}
	for _, one := range strings.Split(h.URL, ",") {
		u, err := url.Parse(strings.TrimSpace(one))
		if err != nil {
			return e, fmt.Errorf("edge.hub.url: %w", err)
		}
		if h.Username != "" {
			u.User = url.UserPassword(h.Username, password)
		}
		remote.URLs = append(remote.URLs, u)
	}
	if t := h.TLS; t.CAFile != "" || t.CertFile != "" {
		tc, err := tlsConfig(t)
		if err != nil {
			return e, fmt.Errorf("edge.hub.%w", err)
		}
		remote.TLS = tc
	}
	e.Remote = remote
	return e, nil
}

// applyEdge creates the edge's raw stream, retrying while its JetStream starts.
func applyEdge(ctx context.Context, js jetstream.JetStream, cfg config.Config, logger *zap.Logger) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := streams.ApplyEdge(actx, js, cfg.Streams, cfg.Edge.Buffer)
		cancel()
		if err == nil {
			if c.Action != streams.Unchanged {
				logger.Info("edge stream applied", zap.String("name", c.Name), zap.String("action", string(c.Action)))
			}
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("edge stream: %w", err)
		}
		logger.Warn("edge stream apply failed, retrying", zap.Error(err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// hubConnected reports whether the edge's server has its leaf connection to the hub.
func hubConnected(ns *server.Server) bool { return ns.NumLeafNodes() > 0 }

// watchHub logs when the edge's leaf connection to its hub comes up and goes down: events
// are stored at the edge either way, and forwarded once it is up.
func (a *App) watchHub(ctx context.Context, ns *server.Server) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	was := false
	a.logger.Info("khook edge is storing events; connecting to the hub", zap.String("cluster", a.cfg.Cluster),
		zap.String("hub", a.cfg.Edge.Hub.URL), zap.Strings("post", a.producers.sup.URLs()))
	for {
		if now := hubConnected(ns); now != was {
			if now {
				a.logger.Info("hub connected: forwarding stored events", zap.String("cluster", a.cfg.Cluster))
			} else {
				a.logger.Warn("hub disconnected: storing events until it is back", zap.String("cluster", a.cfg.Cluster))
			}
			was = now
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
