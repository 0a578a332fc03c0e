// Package directory is NVI's only shared state: the records that agents must
// find about each other (servers, tenants, networks, endpoints), kept in an
// etcd cluster — by default a single member NVI embeds itself
// ([ServeEmbedded]), or an external cluster.
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
//	tenants/<t>              Tenant
//	networks/<t>/<n>         Network
//	endpoints/<t>/<name>     Endpoint; names are unique per tenant
//	addrs/<t>/<ip>           the endpoint's name (plain text): the address index,
//	                         one address per tenant; two tenants may share one
//	ifaces/<iface-id>        "<t>/<name>" (plain text): optional index from the
//	                         hypervisor's external_ids:iface-id
//
// An endpoint and its index entries are created and deleted together in one
// transaction. Networks and tenants are refused deletion while they still
// hold endpoints or networks, checked inside the deleting transaction.
//
// # Errors
//
// Every error wraps one of [ErrNotFound], [ErrExists], [ErrInvalid],
// [ErrConflict] or [ErrUnavailable] (and the underlying cause, if any), and
// reads as a sentence: "address 10.1.0.5 is already used by acme/db".
package directory
