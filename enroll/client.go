package enroll

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"nvi/pki"
)

// stateFile in an identity directory says where to renew.
const stateFile = "enroll.json"

type state struct {
	Addr string `json:"addr"` // the enrollment service
}

// Join enrolls this server with token: it makes a key in identityDir, sends
// a certificate request to the token's enrollment service (trusted only if
// it presents a certificate of the CA the token pins), and installs the
// certificate it gets: key.pem, cert.pem, ca.pem and enroll.json.
func Join(ctx context.Context, token, identityDir string) error {
	tok, err := ParseToken(token)
	if err != nil {
		return err
	}
	if id, err := pki.LoadIdentity(identityDir); err == nil {
		return fmt.Errorf("%s already holds the identity of %s: use it, or remove the directory to enroll again", identityDir, id.Name())
	}
	if err := pki.GenerateKey(identityDir); err != nil {
		return err
	}
	csr, err := pki.CSRFromKey(identityDir)
	if err != nil {
		return err
	}
	var resp enrollResponse
	if err := post(ctx, pinnedTLS(tok.Pin), tok.Addr, pathEnroll, enrollRequest{Token: token, CSR: string(csr)}, &resp); err != nil {
		return fmt.Errorf("enrolling %s: %w", tok.Name, err)
	}
	b, _ := pem.Decode([]byte(resp.CA))
	if b == nil || pki.Pin(b.Bytes) != tok.Pin {
		return fmt.Errorf("enrolling %s: the service sent a CA certificate that is not the one the token pins", tok.Name)
	}
	data, _ := json.Marshal(state{Addr: tok.Addr})
	if err := pki.WriteFileAtomic(filepath.Join(identityDir, stateFile), data, 0o644); err != nil {
		return err
	}
	id, err := pki.InstallIdentity(identityDir, []byte(resp.Cert), []byte(resp.CA))
	if err != nil {
		return fmt.Errorf("enrolling %s: %w", tok.Name, err)
	}
	if id.Name() != tok.Name {
		os.Remove(filepath.Join(identityDir, pki.CertFile))
		return fmt.Errorf("enrolling: the CA issued a certificate for %q, but the token says %q: the token was altered", id.Name(), tok.Name)
	}
	return nil
}

// pinnedTLS trusts an enrollment service only if its chain holds the CA
// certificate with the given pin and its own certificate is an
// enrollment-service certificate from that CA.
func pinnedTLS(pin string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // VerifyConnection checks the pin instead of a host name
		VerifyConnection: func(cs tls.ConnectionState) error {
			var ca *x509.Certificate
			for _, c := range cs.PeerCertificates {
				if c.IsCA && pki.Pin(c.Raw) == pin {
					ca = c
				}
			}
			if ca == nil {
				return errors.New("the enrollment service does not present the CA the token pins: wrong address, or someone in between")
			}
			roots := x509.NewCertPool()
			roots.AddCert(ca)
			return pki.CheckEnrollService(cs.PeerCertificates, roots)
		},
	}
}

// Renew asks the enrollment service (from enroll.json) for a new
// certificate for the identity's key and swaps it in.
func Renew(ctx context.Context, id *pki.Identity) error {
	st, err := readState(id.Dir())
	if err != nil {
		return err
	}
	return renew(ctx, id, st.Addr)
}

func renew(ctx context.Context, id *pki.Identity, addr string) error {
	csr, err := id.CSR()
	if err != nil {
		return err
	}
	var resp renewResponse
	if err := post(ctx, id.EnrollClientTLS(), addr, pathRenew, renewRequest{CSR: string(csr)}, &resp); err != nil {
		return fmt.Errorf("renewing the certificate of %s: %w", id.Name(), err)
	}
	return id.Replace([]byte(resp.Cert))
}

func readState(dir string) (state, error) {
	var st state
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return st, fmt.Errorf("cannot renew: %w (an identity made by 'nvid --join' has it)", err)
	}
	if err := json.Unmarshal(data, &st); err != nil || st.Addr == "" {
		return st, fmt.Errorf("cannot renew: %s is damaged", filepath.Join(dir, stateFile))
	}
	return st, nil
}

// renewAt is when a certificate valid from notBefore to notAfter should be
// renewed: at two thirds of its life, counted from when it was issued (the
// CA backdates notBefore by pki.Skew).
func renewAt(notBefore, notAfter time.Time) time.Time {
	issued := notBefore.Add(pki.Skew)
	if !issued.Before(notAfter) {
		issued = notBefore
	}
	return issued.Add(notAfter.Sub(issued) * 2 / 3)
}

// backoff is the wait before retry number n (from 0) of a failed renewal.
func backoff(n int) time.Duration {
	const base, limit = time.Second, 5 * time.Minute
	d := base
	for i := 0; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// KeepRenewed renews id's certificate at two thirds of its life, retrying
// with backoff when that fails, until ctx ends. It returns at once if the
// identity has no enrollment service to renew with.
func KeepRenewed(ctx context.Context, id *pki.Identity, log *slog.Logger) error {
	st, err := readState(id.Dir())
	if err != nil {
		return err
	}
	return keepRenewed(ctx, id, log, st.Addr, time.Now)
}

func keepRenewed(ctx context.Context, id *pki.Identity, log *slog.Logger, addr string, now func() time.Time) error {
	var failures int
	for {
		leaf := id.Leaf()
		wait := renewAt(leaf.NotBefore, leaf.NotAfter).Sub(now())
		if failures > 0 {
			wait = backoff(failures - 1)
		}
		if wait < 0 {
			wait = 0
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := renew(rctx, id, addr)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failures++
			if now().After(id.NotAfter()) {
				log.Error("certificate expired and cannot be renewed: enroll this server again with a new token",
					"err", err, "expired", id.NotAfter(), "identity_dir", id.Dir())
			} else {
				log.Warn("certificate renewal failed; retrying", "err", err, "retry_in", backoff(failures-1), "expires", id.NotAfter())
			}
			continue
		}
		failures = 0
		log.Info("certificate renewed", "server", id.Name(), "expires", id.NotAfter())
	}
}

// Provision makes the identity of server name in identityDir directly from
// the CA, with no join token, and records enrollAddr for renewals: for a lab
// or tests, where one machine holds the CA and every server's directory.
func Provision(ca *pki.CA, name, identityDir, enrollAddr string, ttl time.Duration) error {
	if _, _, err := net.SplitHostPort(enrollAddr); err != nil {
		return fmt.Errorf("enrollment address %q: want HOST:PORT (%v)", enrollAddr, err)
	}
	if err := ca.IssueServer(identityDir, name, ttl); err != nil {
		return err
	}
	data, _ := json.Marshal(state{Addr: enrollAddr})
	return pki.WriteFileAtomic(filepath.Join(identityDir, stateFile), data, 0o644)
}

// post sends a JSON request to the service and decodes the answer.
func post(ctx context.Context, tc *tls.Config, addr, path string, in, out any) error {
	body, _ := json.Marshal(in)
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: false, TLSHandshakeTimeout: 10 * time.Second}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := cl.Do(req)
	if err != nil {
		return fmt.Errorf("enrollment service %s: %w", addr, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("enrollment service %s: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorResponse
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return &RefusedError{Status: resp.StatusCode, Msg: e.Error}
		}
		return &RefusedError{Status: resp.StatusCode, Msg: resp.Status}
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("enrollment service %s: bad answer: %w", addr, err)
	}
	return nil
}

// RefusedError is the enrollment service's refusal.
type RefusedError struct {
	Status int
	Msg    string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("enrollment service refused (%d): %s", e.Status, e.Msg)
}

// ServiceAddr is the address of the enrollment service an identity made by
// Join or Provision renews at (the registrar answers there too).
func ServiceAddr(identityDir string) (string, error) {
	st, err := readState(identityDir)
	if err != nil {
		return "", err
	}
	return st.Addr, nil
}
