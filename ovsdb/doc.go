// Package ovsdb is NVI's client for the Open vSwitch database (RFC 7047,
// JSON-RPC over a unix or tcp socket) and the few Open_vSwitch-schema
// operations nvid needs to manage its bridge.
//
// The package has two layers:
//
//   - A protocol core: Dial/NewClient, Client.ListDBs, GetSchema, Transact
//     with typed Operations (Insert, Select, Update, MutateOp, Delete, Wait,
//     Comment), Monitor with ordered update delivery, Echo, and generic Call.
//     OVSDB values are plain Go values (string, int64, float64, bool) plus
//     UUID, NamedUUID, Set and Map; Row accessors hide the wire shortcuts
//     (a set of one element sent as a bare atom, an empty optional value
//     sent as an empty set).
//   - vswitch operations on the Open_vSwitch database: Init, EnsureBridge,
//     DeleteBridge, Bridge, AddPort, DeletePort, Interface, Interfaces,
//     WaitOFPort and MonitorInterfaces. Each is safe to repeat, and their
//     errors name the object ("ovsdb: add port veth3 to br-nvi: ...").
//
// Why our own client: nvid must stay a small, dependency-free binary, and it
// needs only this narrow slice of OVSDB. The design follows ovs-vsctl's
// transactions (rows linked by uuid-name in one atomic transact, the server
// garbage-collecting unreferenced Port/Interface/Controller rows) while
// using "wait" operations instead of ovs-vsctl's in-memory replica to detect
// concurrent changes.
//
// A Client never reconnects. When the connection fails every outstanding
// call returns an error wrapping ErrDisconnected, monitors stop, and Done is
// closed; the owner dials again and restarts its monitors. Locks (lock,
// steal, unlock) and the monitor_cond extensions are not wrapped; Call can
// reach them.
package ovsdb
