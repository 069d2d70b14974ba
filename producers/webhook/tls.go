package webhook

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// certReloader serves the certificate in certFile and keyFile, loading it again whenever
// either file changes, so a renewed certificate (cert-manager, a rotated Secret) is used by
// the next handshake without a restart.
type certReloader struct {
	certFile, keyFile string

	mu       sync.Mutex
	cert     *tls.Certificate
	certMod  time.Time
	keyMod   time.Time
	lastLoad error
}

func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile}
	if _, err := r.get(); err != nil {
		return nil, err
	}
	return r, nil
}

// get returns the current certificate, reloading it if the files changed. If a reload
// fails (a half-written file), the previous certificate keeps being served.
func (r *certReloader) get() (*tls.Certificate, error) {
	cfi, err1 := os.Stat(r.certFile)
	kfi, err2 := os.Stat(r.keyFile)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err1 == nil && err2 == nil && (r.cert == nil || !cfi.ModTime().Equal(r.certMod) || !kfi.ModTime().Equal(r.keyMod)) {
		cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
		if err == nil {
			r.cert, r.certMod, r.keyMod = &cert, cfi.ModTime(), kfi.ModTime()
		}
		r.lastLoad = err
	}
	if r.cert == nil {
		if r.lastLoad == nil {
			r.lastLoad = fmt.Errorf("certFile %s / keyFile %s: %w", r.certFile, r.keyFile, errors.Join(err1, err2))
		}
		return nil, fmt.Errorf("webhook TLS: %w", r.lastLoad)
	}
	return r.cert, nil
}

func (r *certReloader) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return r.get()
		},
	}
}
