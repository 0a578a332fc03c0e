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
//	blocks/<t>/<n>/<cidr>    the holding server's name (plain text), under that
//	                         server's lease: a per-server address block
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
//     servers/<name> and its own port maps portmaps/<name>/; and writes the
//     shared claim spaces endpoints/, addrs/, ifaces/ and blocks/, which
//     agents need today to create, bind and delete their workloads'
//     endpoints and to claim address blocks. Nothing else: not tenants,
//     zones, networks, groups, pairs, rules, another server's record or
//     port maps, nor revoked/. (So a tenant stored before conntrack zones
//     existed gets its zone only when root reads it.)
//
// The shared claim spaces are writable by EVERY server: a compromised
// server can create, rebind or delete any tenant's endpoints (and so place
// a workload of its own in any tenant as far as peers can tell), and take
// or drop any network's address blocks. Closing that needs those claims
// made by a trusted party (the cloud's control plane) instead of by the
// agents; until then, a server's credential is as strong as its weakest
// host. [Store.RevokeServer] withdraws one: etcd refuses it from the next
// request on, its record goes, and revoked/<name> tells peer agents
// ([Cache.Revoked]) to stop trusting its certificates.
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
