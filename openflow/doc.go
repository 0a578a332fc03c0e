// Package openflow is NVI's OpenFlow 1.3 wire codec and the controller side
// of one switch connection.
//
// The codec covers every OpenFlow 1.3 message, OXM matches (OpenFlow basic
// plus the Nicira NXM fields OVS uses: registers, conntrack state, zone,
// mark), all standard actions and instructions, and the Open vSwitch
// (Nicira) actions NVI needs: move (NXAST_REG_MOVE), resubmit, ct, nat,
// dec_ttl and conjunction. Anything it does not model — unknown OXM
// fields, unknown experimenter actions, instructions and message bodies —
// is kept as raw bytes so that decode→encode is byte-exact, which the tests
// check against the Ryu vectors and against ovs-ofctl.
//
// Unmarshal returns pointers (*FlowMod, *PacketIn, *ErrorMsg, ...); Marshal
// takes pointers or values. Actions, instructions, match fields and
// multipart bodies are plain values. OVS itself encodes some fields with
// their older Nicira (NXM) code points, e.g. in moves; FieldID.Canonical
// maps those to the OXM IDs that the constructors use.
//
// Decoding never panics: every length is checked against its container
// (see reader), so a hostile switch can cost at most one 64 KiB message
// and a bounded amount of memory for it.
//
// Conn is one controller-to-switch connection (hello, features, echo,
// request/reply matching by xid, barrier-ordered error collection), and
// Link keeps a Conn alive across switch restarts.
package openflow
