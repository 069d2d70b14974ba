// Package kubetest runs a real etcd and kube-apiserver on loopback for integration tests,
// from the binaries test/kube/build-assets.sh builds (KUBE_TEST_ASSETS names their
// directory; `make test` sets it). It is not a fake: the API server validates, stores and
// watches exactly as in a cluster, minus the controllers.
package kubetest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// AssetsEnv names the directory holding kube-apiserver and etcd.
const AssetsEnv = "KUBE_TEST_ASSETS"

// adminToken is the static bearer token of the test cluster's admin (system:masters).
const adminToken = "khook-test-admin-token"

// Cluster is a running etcd and kube-apiserver.
type Cluster struct {
	t         testing.TB
	dir       string
	assets    string
	apiPort   int
	etcd      *exec.Cmd
	apiserver *exec.Cmd
	apiArgs   []string
	// Kubeconfig is a kubeconfig file for the admin; Config is the same as a rest.Config.
	Kubeconfig string
	Config     *rest.Config
}

// Options tune the API server.
type Options struct {
	// CompactionInterval, when set, compacts etcd that often, so that a watch resumed after
	// a disconnection finds its resource version gone (410 Gone) and the client must relist:
	// the watch-expiry case. (client-go sets its own watch timeouts, so the server's
	// --min-request-timeout cannot shorten an informer's watches.)
	CompactionInterval time.Duration
}

// Start runs etcd and kube-apiserver and waits until the API server is ready. It fails the
// test, rather than skipping it, when the binaries are missing.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	assets := os.Getenv(AssetsEnv)
	if assets == "" {
		t.Fatalf("%s is not set: run `make test`, or `export %s=$(test/kube/build-assets.sh)`", AssetsEnv, AssetsEnv)
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(assets, b)); err != nil {
			t.Fatalf("%s: %v (build it with test/kube/build-assets.sh)", b, err)
		}
	}
	c := &Cluster{t: t, dir: t.TempDir(), assets: assets}
	etcdPort, peerPort := freePort(t), freePort(t)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPort)
	c.etcd = c.spawn("etcd", filepath.Join(assets, "etcd"),
		"--data-dir", filepath.Join(c.dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-cluster", fmt.Sprintf("default=http://127.0.0.1:%d", peerPort),
		"--log-level", "error")

	saKey := filepath.Join(c.dir, "sa.key")
	writeRSAKey(t, saKey)
	tokens := filepath.Join(c.dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(adminToken+",admin,admin,system:masters\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.apiPort = freePort(t)
	c.apiArgs = []string{
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(c.apiPort),
		"--cert-dir", filepath.Join(c.dir, "certs"),
		"--token-auth-file", tokens,
		"--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", saKey, "--service-account-signing-key-file", saKey,
		"--service-cluster-ip-range", "10.0.0.0/24",
		"--endpoint-reconciler-type", "none",
		// No controller manager runs, so nothing would create service accounts for pods.
		"--disable-admission-plugins", "ServiceAccount",
		"--v", "0",
	}
	if opts.CompactionInterval > 0 {
		c.apiArgs = append(c.apiArgs, "--etcd-compaction-interval", opts.CompactionInterval.String())
	}
	c.startAPIServer()
	t.Cleanup(c.stop)

	c.Config = &rest.Config{
		Host:            fmt.Sprintf("https://127.0.0.1:%d", c.apiPort),
		BearerToken:     adminToken,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		// Tests create objects in bursts; client-go's default of 5 requests/s would make the
		// client, not the server, the thing under test.
		QPS:   1000,
		Burst: 2000,
	}
	c.Kubeconfig = filepath.Join(c.dir, "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: c.Config.Host, InsecureSkipTLSVerify: true}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: adminToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin"}
	kc.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*kc, c.Kubeconfig); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *Cluster) spawn(name, bin string, args ...string) *exec.Cmd {
	log, err := os.Create(filepath.Join(c.dir, name+".log"))
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("starting %s: %v", name, err)
	}
	return cmd
}

func (c *Cluster) startAPIServer() {
	c.apiserver = c.spawn("kube-apiserver", filepath.Join(c.assets, "kube-apiserver"), c.apiArgs...)
	c.waitReady()
}

// waitReady polls /readyz until the API server answers 200.
func (c *Cluster) waitReady() {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // test server
	url := fmt.Sprintf("https://127.0.0.1:%d/readyz", c.apiPort)
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(c.dir, "kube-apiserver.log"))
	c.t.Fatalf("kube-apiserver not ready after 90s:\n%s", tail(log, 4000))
}

// RestartAPIServer kills the API server and starts it again on the same port and etcd, as a
// crashed control plane would. (A graceful stop waits up to a minute for open watches.)
func (c *Cluster) RestartAPIServer() {
	c.t.Helper()
	_ = c.apiserver.Process.Kill()
	_ = c.apiserver.Wait()
	c.startAPIServer()
}

func (c *Cluster) stop() {
	for _, cmd := range []*exec.Cmd{c.apiserver, c.etcd} {
		if cmd != nil && cmd.Process != nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		}
	}
}

func writeRSAKey(t testing.TB, path string) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(path, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// ControlledBy is the ownerReferences of an object whose controller is kind/name, as a
// ReplicaSet's Pods carry it. The API server without controllers does not check the owner
// exists, so tests build ownership chains without running the controllers.
func ControlledBy(kind, name string) []metav1.OwnerReference {
	controller := true
	return []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: name, UID: types.UID(name + "-uid"), Controller: &controller}}
}
