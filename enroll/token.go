// Package enroll is how a new server gets its identity: the operator issues a
// short-lived, single-use join token for a server name, the server presents
// it with a certificate request to the enrollment service (the only place
// besides the operator's files where the CA key lives), and gets back a
// certificate naming it. Enrolled servers renew over mutual TLS with their
// current certificate; revoked ones cannot.
package enroll

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"nvi/pki"
)

// tokenPrefix starts every join token; the digit is the format's version.
const tokenPrefix = "nvi1."

// MaxTokenTTL bounds a join token's life: it is a bearer secret.
const MaxTokenTTL = 24 * time.Hour

// Token errors. None of them consumes the token except ErrTokenExpired,
// which removes what is useless anyway.
var (
	ErrTokenUnknown = errors.New("join token unknown or already used")
	ErrTokenExpired = errors.New("join token expired")
	ErrTokenSecret  = errors.New("join token secret does not match")
)

// Token is what a joining server needs, in one string: where to enroll, the
// CA to trust (by pin, so there is no trust on first use), and the secret.
type Token struct {
	Addr   string `json:"a"` // enrollment service, host:port
	Pin    string `json:"h"` // pki.Pin of the CA certificate
	ID     string `json:"i"` // names the stored record
	Secret string `json:"s"` // only its hash is stored
	Name   string `json:"n"` // the server it enrolls; the CA's record decides, this lets the joiner check
}

// String encodes the token as "nvi1." and base64url of its JSON.
func (t Token) String() string {
	b, _ := json.Marshal(t)
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// ParseToken decodes and checks a token string.
func ParseToken(s string) (Token, error) {
	var t Token
	body, ok := strings.CutPrefix(strings.TrimSpace(s), tokenPrefix)
	if !ok {
		return t, fmt.Errorf("not an NVI join token (want %s...): get one with 'nvictl server token NAME'", tokenPrefix)
	}
	raw, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil {
		return t, fmt.Errorf("join token damaged (copy it whole): %w", err)
	}
	if err := json.Unmarshal(raw, &t); err != nil {
		return t, fmt.Errorf("join token damaged (copy it whole): %w", err)
	}
	return t, t.check()
}

func (t Token) check() error {
	if _, _, err := net.SplitHostPort(t.Addr); err != nil {
		return fmt.Errorf("join token: enrollment address %q: %w", t.Addr, err)
	}
	if !validPin(t.Pin) {
		return fmt.Errorf("join token: CA pin %q is not sha256:<64 hex digits>", t.Pin)
	}
	if !validID(t.ID) {
		return fmt.Errorf("join token: id %q is not 16 hex digits", t.ID)
	}
	if s, err := base64.RawURLEncoding.DecodeString(t.Secret); err != nil || len(s) != 32 {
		return errors.New("join token: the secret is not 32 bytes of base64url")
	}
	if err := pki.ValidName(t.Name); err != nil {
		return fmt.Errorf("join token: %w", err)
	}
	return nil
}

func validPin(p string) bool {
	h, ok := strings.CutPrefix(p, "sha256:")
	if !ok || len(h) != 64 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil && strings.ToLower(h) == h
}

// validID also keeps ids safe as file names.
func validID(id string) bool {
	if len(id) != 16 {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// record is a stored token: tokens/<id>.json in the CA directory.
type record struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Hash    string    `json:"sha256"` // hex SHA-256 of the secret
	Expires time.Time `json:"expires"`
}

func hashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// checkRecord decides whether secret, at now, redeems rec.
func checkRecord(rec record, secret string, now time.Time) error {
	if !now.Before(rec.Expires) {
		return fmt.Errorf("%w at %s: issue a new one with 'nvictl server token %s'", ErrTokenExpired, rec.Expires.Format(time.RFC3339), rec.Name)
	}
	if subtle.ConstantTimeCompare([]byte(hashSecret(secret)), []byte(rec.Hash)) != 1 {
		return ErrTokenSecret
	}
	return nil
}

// IssueToken stores a new join token for server name, valid for ttl, and
// returns it. addr is where the enrollment service ('nvictl ca serve')
// listens, as the joining server will dial it.
func IssueToken(caDir, name, addr string, ttl time.Duration) (string, error) {
	return issueToken(caDir, name, addr, ttl, time.Now())
}

func issueToken(caDir, name, addr string, ttl time.Duration, now time.Time) (string, error) {
	if err := pki.ValidName(name); err != nil {
		return "", err
	}
	if ttl <= 0 || ttl > MaxTokenTTL {
		return "", fmt.Errorf("token lifetime %v: want more than 0 and at most %v", ttl, MaxTokenTTL)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", fmt.Errorf("enrollment address %q: want HOST:PORT of 'nvictl ca serve' (%v)", addr, err)
	}
	ca, err := pki.LoadCA(caDir)
	if err != nil {
		return "", err
	}
	st := store{dir: caDir}
	st.sweep(now)
	t := Token{Addr: addr, Pin: ca.Pin(), ID: hex.EncodeToString(random(8)), Secret: base64.RawURLEncoding.EncodeToString(random(32)), Name: name}
	rec := record{ID: t.ID, Name: name, Hash: hashSecret(t.Secret), Expires: now.Add(ttl).UTC()}
	if err := st.put(rec, true); err != nil {
		return "", err
	}
	return t.String(), nil
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // crypto/rand.Read does not fail on Linux
	return b
}

// store is the CA directory's token and revocation files. Changes happen
// under an exclusive flock on <ca-dir>/.lock, so the service and the CLI
// (separate processes) never interleave: a token is consumed exactly once.
type store struct {
	dir string
	mu  sync.Mutex // flock is per open file; this orders goroutines too
}

func (s *store) lock() (func(), error) {
	s.mu.Lock()
	f, err := os.OpenFile(filepath.Join(s.dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("locking the CA directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		s.mu.Unlock()
		return nil, fmt.Errorf("locking the CA directory: %w", err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
		s.mu.Unlock()
	}, nil
}

func (s *store) tokenDir() string { return filepath.Join(s.dir, "tokens") }

func (s *store) put(rec record, exclusive bool) error {
	if err := os.MkdirAll(s.tokenDir(), 0o700); err != nil {
		return fmt.Errorf("storing the token: %w", err)
	}
	data, _ := json.Marshal(rec)
	path := filepath.Join(s.tokenDir(), rec.ID+".json")
	if !exclusive {
		return pki.WriteFileAtomic(path, data, 0o600)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("storing the token: %w", err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("storing the token: %w", err)
	}
	return nil
}

func (s *store) read(id string) (record, error) {
	var rec record
	data, err := os.ReadFile(filepath.Join(s.tokenDir(), id+".json"))
	if errors.Is(err, fs.ErrNotExist) {
		return rec, ErrTokenUnknown
	}
	if err != nil {
		return rec, fmt.Errorf("reading the token: %w", err)
	}
	if err := json.Unmarshal(data, &rec); err != nil || rec.ID != id {
		return rec, fmt.Errorf("token record %s is damaged: issue a new token", id)
	}
	return rec, nil
}

// consume redeems token id with secret: it returns the record and removes
// it, atomically. A wrong secret leaves it; an expired one is removed.
func (s *store) consume(id, secret string, now time.Time) (record, error) {
	if !validID(id) {
		return record{}, ErrTokenUnknown
	}
	unlock, err := s.lock()
	if err != nil {
		return record{}, err
	}
	defer unlock()
	rec, err := s.read(id)
	if err != nil {
		return rec, err
	}
	path := filepath.Join(s.tokenDir(), id+".json")
	if err := checkRecord(rec, secret, now); err != nil {
		if errors.Is(err, ErrTokenExpired) {
			os.Remove(path)
		}
		return rec, err
	}
	if err := os.Remove(path); err != nil {
		return rec, fmt.Errorf("consuming the token: %w", err)
	}
	return rec, nil
}

// restore puts back a consumed token whose enrollment failed on our side.
func (s *store) restore(rec record) error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return s.put(rec, true)
}

// sweep removes expired tokens (best effort) and, if name is given, every
// token for name.
func (s *store) sweepLocked(now time.Time, name string) {
	ents, err := os.ReadDir(s.tokenDir())
	if err != nil {
		return
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !validID(id) {
			continue
		}
		rec, err := s.read(id)
		if err == nil && (!now.Before(rec.Expires) || rec.Name == name) {
			os.Remove(filepath.Join(s.tokenDir(), e.Name()))
		}
	}
}

func (s *store) sweep(now time.Time) {
	if unlock, err := s.lock(); err == nil {
		s.sweepLocked(now, "")
		unlock()
	}
}

// Revocations: revoked.json in the CA directory, server name to the time it
// was revoked. Certificates of that name that started at or before that
// time are refused; one issued later (a new enrollment) is not.
const revokedFile = "revoked.json"

// LoadRevocations reads the CA directory's revocation list.
func LoadRevocations(caDir string) (map[string]time.Time, error) {
	data, err := os.ReadFile(filepath.Join(caDir, revokedFile))
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]time.Time{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the revocation list: %w", err)
	}
	m := map[string]time.Time{}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("the revocation list %s is damaged: %w", filepath.Join(caDir, revokedFile), err)
	}
	return m, nil
}

// CheckRevoked refuses a certificate of name that started at notBefore if
// the list revokes it.
func CheckRevoked(list map[string]time.Time, name string, notBefore time.Time) error {
	at, ok := list[name]
	if ok && !notBefore.After(at) {
		return fmt.Errorf("server %s was revoked at %s: enroll it again with a new token", name, at.Format(time.RFC3339))
	}
	return nil
}

// revoke records name as revoked at now (to the second, as certificate
// times are) and removes its unused tokens.
func (s *store) revoke(name string, now time.Time) (time.Time, error) {
	if err := pki.ValidName(name); err != nil {
		return time.Time{}, err
	}
	unlock, err := s.lock()
	if err != nil {
		return time.Time{}, err
	}
	defer unlock()
	list, err := LoadRevocations(s.dir)
	if err != nil {
		return time.Time{}, err
	}
	at := now.UTC().Truncate(time.Second)
	list[name] = at
	data, _ := json.MarshalIndent(list, "", "  ")
	if err := pki.WriteFileAtomic(filepath.Join(s.dir, revokedFile), data, 0o600); err != nil {
		return time.Time{}, err
	}
	s.sweepLocked(now, name)
	return at, nil
}
