// Package packet parses, edits and builds the frames that NVI's agent handles
// in software and that its tests check: Ethernet (802.1Q tags recognised and
// skipped), ARP for IPv4 over Ethernet, IPv4 with options, TCP, UDP and ICMPv4,
// including the IPv4 header and first bytes quoted inside ICMP error messages.
//
// # Model
//
// [Parse] validates every length it relies on and records offsets in a [Frame],
// a view over the caller's bytes: nothing is copied, getters return slices or
// values read from those bytes, and setters write into them. A [Frame] is a
// plain value; Parse does not allocate, so the agent's slow path can decode a
// packet-in without garbage.
//
// Parse is strict about lengths (so that no accessor can read past the
// buffer) and lenient about values that do not affect lengths: it accepts
// wrong checksums, unknown EtherTypes (only the Ethernet header is then
// decoded) and unknown IP protocols (only the IPv4 header). [Frame.Verify],
// or [Verify] on raw bytes, is the strict check that tests want: every
// length, every checksum, well-formed options.
//
// # Checksums
//
// Every setter keeps every checksum that covers the field it writes
// consistent, using the incremental update of RFC 1624 (eqn. 3): the IPv4
// header checksum, the TCP or UDP checksum through its pseudo-header, the
// ICMP checksum over the whole message, and for ICMP errors the quoted
// header's checksum and the quoted TCP, UDP or ICMP checksum, which can only
// ever be updated incrementally since the rest of that datagram is gone.
// Incremental updates are preferred to recomputation for the same reason
// routers use them: a checksum that was wrong on arrival stays wrong, so
// corruption is still detected end to end. [Frame.FixChecksums] recomputes
// everything that can be recomputed, for frames whose checksums were never
// right (built by hand, or captured with transmit checksum offload).
//
// All functions return descriptive errors wrapping one of the sentinel
// errors below and never panic, whatever bytes they are given.
package packet
