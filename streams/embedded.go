package streams

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/khook/khook/streams/subject"
)

// EmbeddedConfig configures the NATS server that `khook run` starts in its own process.
type EmbeddedConfig struct {
	// StoreDir is where JetStream keeps its file storage.
	StoreDir string `koanf:"store_dir"`
	// Listen is the host:port other processes (khook publish, the nats CLI, external plugins)
	// connect to. Empty means in-process connections only.
	Listen string `koanf:"listen"`
	// PluginUsers gives each out-of-process plugin its own user, allowed to publish only to
	// its own raw subjects (<prefix>.raw.<name>.>). With any listed, the server requires a
	// user for every connection.
	PluginUsers []PluginUser `koanf:"plugin_users"`
	// Leafnodes makes the server a hub: edges (`khook edge` in other clusters) connect to
	// it as leaf nodes, and its raw stream sources theirs.
	Leafnodes Leafnodes `koanf:"leafnodes"`
	// Domain is the server's JetStream domain. Empty means none, or "hub" when Leafnodes
	// is set: a hub and its edges each need their own. An edge's is its cluster's name.
	Domain string `koanf:"domain"`

	// Remote, set by `khook edge` (not a setting), makes the server a leaf node of a hub.
	Remote *LeafRemote `koanf:"-"`
}

// Leafnodes is the port a hub listens on for its edges, and how they authenticate.
type Leafnodes struct {
	// Listen is the host:port edges dial, e.g. 0.0.0.0:7422.
	Listen string `koanf:"listen"`
	// Username and PasswordFile are what every edge presents. Required: a hub's leaf port
	// reaches its whole pipeline, so it is never open without a password.
	Username     string `koanf:"username"`
	PasswordFile string `koanf:"password_file"`
	// TLS serves the leaf port with the certificate in CertFile and KeyFile; with CAFile,
	// edges must present a certificate it signed.
	TLS ServerTLS `koanf:"tls"`
}

// ServerTLS is a TLS listener's certificate and, optionally, the CA that signs its clients'.
type ServerTLS struct {
	CertFile string `koanf:"cert_file"`
	KeyFile  string `koanf:"key_file"`
	CAFile   string `koanf:"ca_file"`
}

// Validate names every problem under prefix.
func (l Leafnodes) Validate(prefix string) error {
	var errs []error
	if _, _, err := net.SplitHostPort(l.Listen); err != nil {
		errs = append(errs, fmt.Errorf("%s.listen: %q: %w", prefix, l.Listen, err))
	}
	if l.Username == "" {
		errs = append(errs, fmt.Errorf("%s.username: required: edges must authenticate", prefix))
	}
	if l.PasswordFile == "" {
		errs = append(errs, fmt.Errorf("%s.password_file: required: edges must authenticate", prefix))
	}
	if (l.TLS.CertFile == "") != (l.TLS.KeyFile == "") {
		errs = append(errs, fmt.Errorf("%s.tls: cert_file and key_file must be set together", prefix))
	}
	if l.TLS.CAFile != "" && l.TLS.CertFile == "" {
		errs = append(errs, fmt.Errorf("%s.tls.ca_file: needs cert_file and key_file", prefix))
	}
	return errors.Join(errs...)
}

// LeafRemote is the hub an edge's server connects to as a leaf node.
type LeafRemote struct {
	URLs            []*url.URL
	CredentialsFile string
	TLS             *tls.Config
	// Deny are subjects the leaf connection neither exports nor imports (Config.LeafDeny).
	Deny []string
}

// PluginUser is an out-of-process plugin's NATS identity.
type PluginUser struct {
	// Name is the plugin's name: its user name and the source token it may publish under.
	Name string `koanf:"name"`
	// PasswordFile holds the plugin's password; secrets are never written in khook.yaml.
	PasswordFile string `koanf:"password_file"`
}

// StartEmbedded starts a NATS server with JetStream and waits until it accepts connections.
// It returns the options khook's own in-process connection needs (a generated internal
// user, when plugin users make the server require one). The caller owns the server and must
// call Shutdown and WaitForShutdown.
func StartEmbedded(ctx context.Context, cfg EmbeddedConfig, subjects subject.Builder) (*server.Server, []nats.Option, error) {
	opts := &server.Options{
		ServerName:      "khook-embedded",
		JetStream:       true,
		JetStreamDomain: cfg.Domain,
		StoreDir:        cfg.StoreDir,
		NoSigs:          true,
		NoLog:           true,
	}
	if cfg.Leafnodes.Listen != "" {
		if err := hubLeafnodes(opts, cfg); err != nil {
			return nil, nil, err
		}
	}
	if r := cfg.Remote; r != nil {
		opts.ServerName = "khook-edge-" + cfg.Domain
		opts.LeafNode.ReconnectInterval = time.Second
		opts.LeafNode.Remotes = []*server.RemoteLeafOpts{{
			URLs: r.URLs, Credentials: r.CredentialsFile, TLS: r.TLS != nil, TLSConfig: r.TLS,
			DenyExports: r.Deny, DenyImports: r.Deny,
		}}
	}
	var connect []nats.Option
	if len(cfg.PluginUsers) > 0 {
		internal := make([]byte, 24)
		if _, err := rand.Read(internal); err != nil {
			return nil, nil, err
		}
		password := hex.EncodeToString(internal)
		opts.Users = []*server.User{{Username: "khook", Password: password}}
		for i, pu := range cfg.PluginUsers {
			if err := subject.CheckToken(fmt.Sprintf("nats.embedded.plugin_users[%d].name", i), pu.Name); err != nil {
				return nil, nil, err
			}
			pw, err := os.ReadFile(pu.PasswordFile)
			if err != nil {
				return nil, nil, fmt.Errorf("nats.embedded.plugin_users[%d].password_file: %w", i, err)
			}
			raw, _ := subjects.Raw(pu.Name, "x")
			opts.Users = append(opts.Users, &server.User{
				Username: pu.Name,
				Password: strings.TrimSpace(string(pw)),
				Permissions: &server.Permissions{
					Publish:   &server.SubjectPermission{Allow: []string{strings.TrimSuffix(raw, ".x") + ".>"}},
					Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
				},
			})
		}
		connect = append(connect, nats.UserInfo("khook", password))
	}
	if cfg.Listen == "" {
		opts.DontListen = true
	} else {
		host, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, nil, fmt.Errorf("nats.embedded.listen %q: %w", cfg.Listen, err)
		}
		opts.Host = host
		if opts.Port, err = strconv.Atoi(port); err != nil {
			return nil, nil, fmt.Errorf("nats.embedded.listen %q: bad port: %w", cfg.Listen, err)
		}
		if opts.Port == 0 {
			opts.Port = server.RANDOM_PORT
		} else {
			// The server reports a busy address only in its log and then never becomes
			// ready: the address is tried first, so that the error says so at once.
			ln, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return nil, nil, fmt.Errorf("%w; set nats.embedded.listen or KHOOK_NATS_EMBEDDED_LISTEN", err)
			}
			_ = ln.Close()
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, nil, fmt.Errorf("embedded nats: %w", err)
	}
	ns.Start()
	// Ready within 30 s, or stopped at once by ctx (Ctrl-C during start-up).
	for deadline := time.Now().Add(30 * time.Second); !ns.ReadyForConnections(100 * time.Millisecond); {
		if ctx.Err() != nil || time.Now().After(deadline) {
			ns.Shutdown()
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			return nil, nil, errors.New("embedded nats: not ready for connections after 30s")
		}
	}
	return ns, connect, nil
}

// hubLeafnodes opens the leaf node port of a hub, with its password and TLS, and gives the
// hub a JetStream domain of its own when it has none.
func hubLeafnodes(opts *server.Options, cfg EmbeddedConfig) error {
	l := cfg.Leafnodes
	const key = "nats.embedded.leafnodes"
	if err := l.Validate(key); err != nil {
		return err
	}
	host, port, _ := net.SplitHostPort(l.Listen)
	p, err := strconv.Atoi(port)
	if err != nil {
		return fmt.Errorf("%s.listen %q: bad port: %w", key, l.Listen, err)
	}
	pw, err := os.ReadFile(l.PasswordFile)
	if err != nil {
		return fmt.Errorf("%s.password_file: %w", key, err)
	}
	password := strings.TrimSpace(string(pw))
	if password == "" {
		// Fail closed: an empty secret would let anyone on the network in as an edge.
		return fmt.Errorf("%s.password_file: %s is empty", key, l.PasswordFile)
	}
	opts.LeafNode.Host, opts.LeafNode.Port = host, p
	if p == 0 {
		opts.LeafNode.Port = server.RANDOM_PORT
	}
	opts.LeafNode.Username, opts.LeafNode.Password = l.Username, password
	// Edges reach the hub by the URL they are given (a load balancer, an ingress, a
	// tunnel); the hub's own listen address, which it would otherwise advertise to them
	// for reconnects, is rarely reachable from another cluster, and would bypass whatever
	// stands between them.
	opts.LeafNode.NoAdvertise = true
	if l.TLS.CertFile != "" {
		tc, err := serverTLS(l.TLS)
		if err != nil {
			return fmt.Errorf("%s.tls: %w", key, err)
		}
		opts.LeafNode.TLSConfig = tc
		opts.LeafNode.TLSTimeout = 5
	}
	if opts.JetStreamDomain == "" {
		opts.JetStreamDomain = "hub"
	}
	return nil
}

func serverTLS(t ServerTLS) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file: no certificates in %s", t.CAFile)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return tc, nil
}
