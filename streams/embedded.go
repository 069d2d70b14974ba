package streams

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
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
		ServerName: "khook-embedded",
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true,
		NoLog:      true,
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
