package directory

import (
	"context"
	"errors"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Who may write what (see the package documentation, "Credentials"): etcd's
// own users and roles, with the user name taken from the client
// certificate's CN. RootUser is the operator (nvictl, orchestrators'
// plugins acting for the cloud); ServerUser(name) is the agent of one
// server.
const (
	RootUser = "root"
	// SharedServerRole holds what every server may do: read the whole
	// prefix.
	SharedServerRole = "nvi-server"
)

// ServerUser is the etcd user (and certificate CN) of server name's agent;
// its own role has the same name.
func ServerUser(name string) string { return "server:" + name }

// Revocation records that a server's credential was withdrawn: certificates
// with its name issued up to At are no longer to be trusted, by etcd (whose
// user for it is gone) nor by peer agents ([Cache.Revoked]).
type Revocation struct {
	Name string    `json:"-"` // from the key
	At   time.Time `json:"at"`
}

// claimSpaces are the keys servers share and write only through a
// [Claimer] that checks who the claim is for (the registrar): endpoints and
// their address and iface indexes, and address blocks. Servers' roles may
// read them, never write them.
func (k keys) claimSpaces() []string {
	return []string{k.allEndpoints(), k.prefix + "addrs/", k.prefix + "ifaces/", k.prefix + "blocks/"}
}

// EnableAuth turns on etcd's authentication with NVI's roles. It is
// idempotent: it creates user root (role root, no password: it logs in by
// its certificate) and the role every server shares (read the whole prefix,
// write the shared claim spaces) when they are missing, re-grants the
// shared role's permissions, and enables auth if it is off. Once auth is on
// only root may call it again. Call it with a store whose certificate has
// CN root, on an etcd served with [ServeTLS]: NVI's users have no
// passwords, so a client certificate is the only way in.
func (s *Store) EnableAuth(ctx context.Context) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	op := "enabling directory authentication"
	if err := s.ensureUser(ctx, op, RootUser, "root"); err != nil {
		return err
	}
	if err := s.ensureSharedRole(ctx, op); err != nil {
		return err
	}
	st, err := s.cli.AuthStatus(ctx)
	if err != nil {
		return authError(op, err)
	}
	if st.Enabled {
		return nil
	}
	if _, err := s.cli.AuthEnable(ctx); err != nil {
		return authError(op, err)
	}
	s.log.Info("directory: authentication enabled", "prefix", s.k.prefix)
	return nil
}

// ensureSharedRole creates SharedServerRole if missing and grants it its
// permission (granting again is a no-op in etcd). Earlier versions granted
// it write access to the claim spaces: that is revoked.
func (s *Store) ensureSharedRole(ctx context.Context, op string) error {
	if err := s.ensureRole(ctx, op, SharedServerRole); err != nil {
		return err
	}
	grant := func(key string, perm clientv3.PermissionType) error {
		if _, err := s.cli.RoleGrantPermission(ctx, SharedServerRole, key, clientv3.GetPrefixRangeEnd(key), perm); err != nil {
			return authError(op, err)
		}
		return nil
	}
	if err := grant(s.k.prefix, clientv3.PermissionType(clientv3.PermRead)); err != nil {
		return err
	}
	for _, p := range s.k.claimSpaces() {
		_, err := s.cli.RoleRevokePermission(ctx, SharedServerRole, p, clientv3.GetPrefixRangeEnd(p))
		if err != nil && !errors.Is(err, rpctypes.ErrPermissionNotGranted) {
			return authError(op, err)
		}
	}
	return nil
}

// PluginUser is the etcd user (and certificate CN) of orchestrator plugin
// name; its role has the same name.
func PluginUser(name string) string { return "plugin:" + name }

// GrantPlugin creates (or completes) the etcd user of an orchestrator
// plugin that keeps records of its own under statePrefix (outside NVI's
// prefix, e.g. the Docker driver's "/nvi/docker/v1/"): it may read NVI's
// records and read and write its own prefix, nothing else. Idempotent; it
// needs root.
func (s *Store) GrantPlugin(ctx context.Context, name, statePrefix string) error {
	if err := ValidateName("plugin", name); err != nil {
		return err
	}
	if !strings.HasPrefix(statePrefix, "/") || !strings.HasSuffix(statePrefix, "/") || strings.HasPrefix(statePrefix, s.k.prefix) || strings.HasPrefix(s.k.prefix, statePrefix) {
		return errorf(ErrInvalid, "plugin state prefix %q: want a /path/ of its own, apart from the directory's %s", statePrefix, s.k.prefix)
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	op := "granting plugin " + name + " its directory credential"
	user := PluginUser(name)
	if err := s.ensureRole(ctx, op, user); err != nil {
		return err
	}
	for _, p := range []struct {
		key  string
		perm clientv3.PermissionType
	}{
		{s.k.prefix, clientv3.PermissionType(clientv3.PermRead)},
		{statePrefix, clientv3.PermissionType(clientv3.PermReadWrite)},
	} {
		if _, err := s.cli.RoleGrantPermission(ctx, user, p.key, clientv3.GetPrefixRangeEnd(p.key), p.perm); err != nil {
			return authError(op, err)
		}
	}
	if err := s.ensureUser(ctx, op, user, user); err != nil {
		return err
	}
	s.log.Info("directory: plugin granted", "plugin", name, "user", user, "state", statePrefix)
	return nil
}

// GrantServer creates (or completes) the etcd user of server name, CN
// "server:<name>", with the shared server role and its own role: write its
// record servers/<name> and its port maps portmaps/<name>/. Idempotent; it
// needs root. A name revoked earlier keeps its revocation record, so peers
// keep refusing its certificates issued before the revocation time.
func (s *Store) GrantServer(ctx context.Context, name string) error {
	if err := ValidateName("server", name); err != nil {
		return err
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	op := "granting server " + name + " its directory credential"
	user := ServerUser(name)
	if err := s.ensureSharedRole(ctx, op); err != nil {
		return err
	}
	if err := s.ensureRole(ctx, op, user); err != nil {
		return err
	}
	for _, p := range []struct{ key, end string }{
		{s.k.server(name), ""},
		{s.k.portMaps(name), clientv3.GetPrefixRangeEnd(s.k.portMaps(name))},
	} {
		if _, err := s.cli.RoleGrantPermission(ctx, user, p.key, p.end, clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
			return authError(op, err)
		}
	}
	if err := s.ensureUser(ctx, op, user, SharedServerRole, user); err != nil {
		return err
	}
	s.log.Info("directory: server granted", "server", name, "user", user)
	return nil
}

// RevokeServer withdraws server name's credential: its etcd user and role
// are deleted (etcd refuses its certificate from the next request on), the
// revocation is recorded at revoked/<name> for peer agents, and its server
// record is deleted, with the lease it lived under (taking the server's
// address blocks with it). It needs root. Revoking a name again moves the
// revocation time to the new at.
//
// etcd knows a client only by its certificate's CN: if the name is granted
// again, every certificate with that CN the CA ever signed gets in again.
// Put the old certificate on the CA's revocation list ([ServeTLS] CRLFile)
// before granting a revoked name again.
func (s *Store) RevokeServer(ctx context.Context, name string, at time.Time) error {
	if err := ValidateName("server", name); err != nil {
		return err
	}
	if at.IsZero() {
		return errorf(ErrInvalid, "revoking server %s: no revocation time given", name)
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	op := "revoking server " + name
	user := ServerUser(name)
	if _, err := s.cli.UserDelete(ctx, user); err != nil && !errors.Is(err, rpctypes.ErrUserNotFound) {
		return authError(op, err)
	}
	if _, err := s.cli.RoleDelete(ctx, user); err != nil && !errors.Is(err, rpctypes.ErrRoleNotFound) {
		return authError(op, err)
	}
	key := s.k.server(name)
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(key),
		clientv3.OpPut(s.k.revokedServer(name), mustJSON(Revocation{At: at.UTC()})),
		clientv3.OpDelete(key),
	).Commit()
	if err != nil {
		return unavailable(op, err)
	}
	if kv := kvs(resp, 0); len(kv) > 0 && kv[0].Lease != 0 {
		if _, err := s.cli.Revoke(ctx, clientv3.LeaseID(kv[0].Lease)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return unavailable(op+": revoking its lease (its address blocks expire with it anyway)", err)
		}
	}
	s.log.Warn("directory: server revoked", "server", name, "at", at)
	return nil
}

// Revoked reports whether server name's credential was revoked, and when.
func (s *Store) Revoked(ctx context.Context, name string) (at time.Time, ok bool, err error) {
	if err := ValidateName("server", name); err != nil {
		return time.Time{}, false, err
	}
	r, found, err := getJSON[Revocation](ctx, s, "reading the revocation of server "+name, s.k.revokedServer(name))
	if err != nil || !found {
		return time.Time{}, false, err
	}
	return r.val.At, true, nil
}

// revocations lists every revocation, and the revision read at.
func (s *Store) revocations(ctx context.Context) (map[string]time.Time, int64, error) {
	all, rev, err := listJSON[Revocation](ctx, s, "listing revoked servers", s.k.revoked())
	if err != nil {
		return nil, 0, err
	}
	out := make(map[string]time.Time, len(all))
	for _, r := range all {
		out[r.Name] = r.At
	}
	return out, rev, nil
}

// ensureUser creates a password-less user (it authenticates by certificate)
// if missing, and grants it roles.
func (s *Store) ensureUser(ctx context.Context, op, user string, roles ...string) error {
	_, err := s.cli.UserAddWithOptions(ctx, user, "", &clientv3.UserAddOptions{NoPassword: true})
	if err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return authError(op, err)
	}
	for _, r := range roles {
		if _, err := s.cli.UserGrantRole(ctx, user, r); err != nil {
			return authError(op, err)
		}
	}
	return nil
}

// ensureRole creates a role if missing.
func (s *Store) ensureRole(ctx context.Context, op, role string) error {
	if _, err := s.cli.RoleAdd(ctx, role); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return authError(op, err)
	}
	return nil
}

// authError tells a refusal (the caller is not root) from an outage.
func authError(op string, err error) error {
	if isPermissionDenied(err) {
		return errorf(ErrDenied, "directory: %s: %w (only the root credential, CN %s, may manage users and roles)", op, err, RootUser)
	}
	return unavailable(op, err)
}

// isPermissionDenied reports an etcd refusal on authorization grounds.
func isPermissionDenied(err error) bool {
	return errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrUserEmpty) ||
		errors.Is(err, rpctypes.ErrUserNotFound) || errors.Is(err, rpctypes.ErrAuthNotEnabled) ||
		errors.Is(err, rpctypes.ErrInvalidAuthMgmt)
}
