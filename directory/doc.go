// Package directory is NVI's only shared state: the records that agents must
// find about each other (servers, tenants, networks, endpoints, policy,
// address blocks, port maps), kept in an etcd cluster — by default a single
// member NVI embeds itself ([ServeEmbedded]), or an external cluster.
//
// # Layers
//
//   - [Store] is a thin shell over the etcd client: validation before, one or
//     a few etcd round trips, clear errors after. Every multi-key change is a
//     single etcd transaction guarded by compare-and-swap, so invariants hold
//     with any number of processes writing at once.
//   - [Cache] is what an agent consults on the packet path: lazy, served from
//     memory, kept current by a watch, with short, bounded negative caching
//     (O(1) per miss) and a cap on the etcd reads in flight. With the
//     directory down, cached look-ups keep working; only new ones fail.
//   - [Store.Watch] turns etcd's watch into typed [Event]s that survive
//     disconnects and compaction.
//   - Address arithmetic lives in the pure package nvi/ipam.
//
// # Key layout
//
// Under a prefix (default [DefaultPrefix], "/nvi/v1/"; tests use one each),
// values are JSON encodings of the model types unless said otherwise:
//
//	servers/<name>           Server; put under the agent's lease, so it vanishes
//	                         when the agent stops renewing
//	tenants/<t>              Tenant, with its conntrack zone
//	zones/<n>                the tenant's name (plain text): the zone index, so
//	                         that no two tenants share a conntrack zone
//	networks/<t>/<n>         Network
//	endpoints/<t>/<name>     Endpoint; names are unique per tenant
//	addrs/<t>/<ip>           the endpoint's name (plain text): the address index,
//	                         one address per tenant; two tenants may share one
//	ifaces/<iface-id>        "<t>/<name>" (plain text): optional index from the
//	                         hypervisor's external_ids:iface-id
//	groups/<t>/<g>           policy.Group: networks whose workloads reach each other
//	pairs/<t>/<a>/<b>        policy.Pair, a < b: one record per unordered pair
//	rules/<t>/<id>           policy.Rule; id is 8 hex digits the directory picks
//	blocks/<t>/<n>/<cidr>    the holding server's name (plain text): a
//	                         per-server address block, free again once that
//	                         server has no record
//	portmaps/<server>/<proto>/<port>
//	                         PortMap: a workload port exposed on the server
//	revoked/<server>         {"at": time}: the server's credential was revoked
//
// An endpoint, its index entries and its port maps are created and deleted
// together in one transaction; so are a tenant and its zone. Networks and
// tenants are refused deletion while they still hold endpoints or networks,
// checked inside the deleting transaction. Policy records name networks,
// groups and workloads that must exist when they are written. Afterwards, a
// deleted network leaves the groups that list it (same transaction); a
// network or group that a rule names cannot be deleted; pair rules and rules
// naming a workload outlive it (agents re-create endpoints as workloads
// restart) and apply to the next workload of that name; a deleted tenant
// takes its remaining policy records with it (same transaction).
//
// Addresses: [Store.CreateEndpoint] with no address scans the network for the
// lowest free one; agents instead claim per-server blocks
// ([Store.ClaimBlock]) and pick addresses from them locally with an
// ipam.Pool, passing the address explicitly. Either way the address index
// is the final guarantee: a taken address fails with [ErrConflict].
//
// # Credentials
//
// A directory that workloads or other hosts can reach must be served with
// [ServeTLS] (or an external etcd set up the same way): mutual TLS, client
// certificates required, and etcd's auth on ([Store.EnableAuth]). etcd then
// takes each client's user name from its certificate's CN. Who may write
// what:
//
//   - root (CN "root", the operator: nvictl, orchestrator plugins acting
//     for the cloud): everything, including users and roles.
//   - server:<name> (CN "server:<name>", one server's agent, made by
//     [Store.GrantServer]): reads the whole prefix; writes its own record
//     servers/<name> and its own port maps portmaps/<name>/. Nothing else:
//     not tenants, zones, networks, groups, pairs, rules, another server's
//     record or port maps, nor revoked/, and not the claim spaces either.
//     (So a tenant stored before conntrack zones existed gets its zone only
//     when root reads it.)
//
// The claim spaces (endpoints/, addrs/, ifaces/, blocks/) are shared by
// all servers, so no prefix of them is one server's to grant. A server's
// claims there are made for it by the registrar (package nvi/registrar),
// which holds the root credential, takes the server's name from its
// certificate, and checks every claim against that name inside the writing
// transaction ([Claimer], [Store.ClaimsFor]): a server creates endpoints on
// itself only, changes and deletes only the endpoints that live on it, and
// claims and releases only its own address blocks (and takes over only
// those of servers that are no longer registered). A compromised
// server can still create endpoints of its own in any tenant with a free
// address (placing workloads is what a server is for), but it cannot take,
// move or remove anything of another server's.
// [Store.RevokeServer] withdraws a credential: etcd refuses it from the
// next request on, its record goes, and revoked/<name> tells peer agents
// ([Cache.Revoked]) to stop trusting its certificates (the registrar
// reads the CA's own revocation list).
//
// A [Config] with TLS nil speaks plain http:// or unix:// to an etcd
// without auth: for tests and old single-host setups only.
//
// # Validation on read
//
// Every record read (look-ups, listings, the [Cache], [Store.Watch]) is
// checked as its writer should have checked it, and against its key: a
// server needs an IPv4 unicast data address, a unicast MAC and a valid
// agent address; an endpoint an IPv4 address; a record must name what its
// key names. A malformed record is logged once and ignored as if absent
// ([ErrMalformed] with [ErrNotFound]); the watch reports a malformed Put as
// a Delete. Policy is the exception: a tenant with a malformed group, pair
// or rule fails closed: [Store.Policy] and [Cache.LookupPolicy] return an
// error, so the agent refuses the tenant's new sessions until it is fixed.
//
// # Errors
//
// Every error wraps one of [ErrNotFound], [ErrExists], [ErrInvalid],
// [ErrConflict], [ErrUnavailable] or [ErrDenied] (and the underlying cause,
// if any), and reads as a sentence: "address 10.1.0.5 is already used by
// acme/db". Errors about a malformed record also wrap [ErrMalformed].
package directory
