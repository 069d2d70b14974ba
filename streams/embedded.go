package streams

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedConfig configures the NATS server that `khook run` starts in its own process.
type EmbeddedConfig struct {
	// StoreDir is where JetStream keeps its file storage.
	StoreDir string `koanf:"store_dir"`
	// Listen is the host:port other processes (khook publish, the nats CLI, external plugins)
	// connect to. Empty means in-process connections only.
	Listen string `koanf:"listen"`
}

// StartEmbedded starts a NATS server with JetStream and waits until it accepts connections.
// The caller owns the server and must call Shutdown and WaitForShutdown.
func StartEmbedded(cfg EmbeddedConfig) (*server.Server, error) {
	opts := &server.Options{
		ServerName: "khook-embedded",
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true,
		NoLog:      true,
	}
	if cfg.Listen == "" {
		opts.DontListen = true
	} else {
		host, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("nats.embedded.listen %q: %w", cfg.Listen, err)
		}
		opts.Host = host
		if opts.Port, err = strconv.Atoi(port); err != nil {
			return nil, fmt.Errorf("nats.embedded.listen %q: bad port: %w", cfg.Listen, err)
		}
		if opts.Port == 0 {
			opts.Port = server.RANDOM_PORT
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("embedded nats: not ready for connections after 30s (is the listen address in use?)")
	}
	return ns, nil
}
