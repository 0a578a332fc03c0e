package agent

import (
	"errors"
	"fmt"
	"time"

	"nvi/directory"
	"nvi/engine"
)

// revocationChecker is what an Identity offers to refuse revoked peers
// (pki.Identity does): the agent hands it the directory's list.
type revocationChecker interface {
	SetRevocationCheck(f func(name string, notBefore time.Time) error)
}

// watchRevocations makes the identity refuse certificates that the
// directory says were revoked. It fails closed: until the directory's list
// is loaded, no peer is accepted.
func (a *Agent) watchRevocations(c *directory.Cache) {
	rc, ok := a.cfg.Identity.(revocationChecker)
	if !ok {
		return
	}
	rc.SetRevocationCheck(func(name string, notBefore time.Time) error {
		return revokedPeer(c, name, notBefore)
	})
}

// revokedPeer says why a peer's certificate, issued at notBefore, must be
// refused, or nil.
func revokedPeer(c *directory.Cache, name string, notBefore time.Time) error {
	if !c.RevocationsLoaded() {
		return errors.New("the directory's revocations are not loaded yet")
	}
	if at, ok := c.Revoked(name); ok && !notBefore.After(at) {
		return fmt.Errorf("revoked at %s", at.UTC().Format(time.RFC3339))
	}
	return nil
}

// onRevocation ends every session with a server the operator revoked: its
// certificate is refused from now on, and nothing it installed stays.
func (a *Agent) onRevocation(ev directory.Event) {
	if ev.Revocation == nil {
		return
	}
	name := ev.Revocation.Name
	a.mu.Lock()
	fx := a.eng.Step(time.Now(), engine.PeerGone{Name: name, Reason: "peer " + name + " revoked"})
	a.mu.Unlock()
	if len(fx) > 0 {
		a.log.Warn("server revoked: ending its sessions", "server", name)
	}
	a.carryApart("revocation teardown", fx)
}
