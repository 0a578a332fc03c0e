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
//     memory, kept current by a watch, with short negative caching. With the
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
// # Errors
//
// Every error wraps one of [ErrNotFound], [ErrExists], [ErrInvalid],
// [ErrConflict] or [ErrUnavailable] (and the underlying cause, if any), and
// reads as a sentence: "address 10.1.0.5 is already used by acme/db".
package directory
