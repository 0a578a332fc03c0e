package engine

import (
	"net/netip"
	"time"

	"nvi/pipeline"
	"nvi/session"
)

// An Event is something that happened, fed to [Engine.Step]: a packet a
// workload sent, the answer of a step the agent carried out, a peer's
// request, a tick, a change in the directory.
type Event interface{ event() }

// An Effect is something the agent must carry out for the engine: look a
// destination up, ask the peer, install or remove flows, release packets.
// Effects of one Step are carried out in order; the outcome of those that
// take time (Resolve, Accept, Install, Remove, Verify, Reopen) comes back as
// an event naming the same session ID.
type Effect interface{ effect() }

// ID names one session in the engine, for the events that answer its
// effects. A new session for the same tuple gets a new ID, so an answer
// that comes late never touches its successor.
type ID uint64

// Workload is a workload bound on this server, as a session needs it.
type Workload struct {
	Port     uint32 // its OpenFlow port
	Endpoint session.Endpoint
	Zone     uint16 // its tenant's conntrack zone
	Name     string // its endpoint name, for logs and views
}

// Counts are a session's packet counters on this bridge by direction: Out
// what its session_out flow sent, In what its session_in flow took.
type Counts struct{ In, Out uint64 }

// --- Events of the client's end ---

// Packet: a local workload sent a packet no flow matched, the first of a
// session (or one more while it is being set up). Frame is kept only while
// it is held.
type Packet struct {
	From  Workload
	Tuple session.Tuple
	Frame []byte
}

// Resolved answers [Resolve]: where the server workload lives, and that
// policy allows the session. Exactly one of Peer (another server) and
// Here (a workload on this server) is set.
type Resolved struct {
	ID         ID
	RemoteName string     // the server workload's endpoint name
	RemoteIP   netip.Addr // its address (the tuple's server address)
	Peer       *session.Peer
	Here       *Workload
}

// Accepted answers [Accept]: the peer installed its half (Err nil) or did
// not. Refused means the peer refused outright and changed nothing.
type Accepted struct {
	ID      ID
	Err     error
	Refused bool
	// Delivered is how many of the Accept's frames the peer took on.
	Delivered int
}

// Failed answers a Resolve (or a Reopen's look-ups) that could not be
// carried out. Refused failures (policy, a missing or malformed record)
// get a drop flow for a while instead of being asked about again.
type Failed struct {
	ID      ID
	Err     error
	Refused bool
}

// --- Events of the server's end ---

// AcceptRequest: the peer Caller asks this server to install the server
// half of Session (already checked by the agent: the caller's record, the
// client endpoint living on it, the server workload bound here, policy).
type AcceptRequest struct {
	Caller     string
	Session    session.Session
	RemoteName string
	// Frames are the session's first packets, for this end to deliver
	// with its half ([Install]'s Inject).
	Frames [][]byte
	// Received is when the request came in: the agent's checks before
	// this event count as the server end's resolve time.
	Received time.Time
}

// ReplyWithoutSession: a local server workload answered, in a connection
// conntrack knows, a client whose session has gone at this end (it idled
// out). The client's agent is asked to set the session up again.
type ReplyWithoutSession struct {
	From      Workload
	Tuple     session.Tuple // the session's tuple (client → server)
	ReplyPort uint16        // the client port the answer went to
	Frame     []byte
}

// KeyReply: a TCP or UDP packet came over the underlay from a peer's key
// (its source port) and no session flow took it: the switch punted it.
type KeyReply struct {
	Peer  netip.Addr
	Proto session.Proto
	Key   uint16
	Frame []byte
}

// Reopened answers [Reopen]: the client's agent has set the session up (it
// called Accept here first) or not.
type Reopened struct {
	ID      ID
	Err     error
	Refused bool
}

// ReopenRequest: the peer Caller, which holds the server workload, asks
// this server (the client's) to set the session up again.
type ReopenRequest struct {
	Caller string
	From   Workload // the client workload here
	Tuple  session.Tuple
}

// --- Events of both ends ---

// Installed answers [Install]: this end's half is in place and the barrier
// came back (Err nil), or installing failed.
type Installed struct {
	ID  ID
	Err error
}

// Removed answers [Remove]: this end's half is gone (or removing failed,
// which is logged: the flows' idle timeouts are the backstop).
type Removed struct {
	ID  ID
	Err error
}

// Teardown asks to end a session here, and first at the peer's when
// Notify is set.
type Teardown struct {
	ID     ID
	Reason string
	Notify bool
}

// ReleaseRequest: the peer Caller asks this server to remove its half.
// CallerIP is the caller's data address from the directory, needed only
// for an adopted session whose peer's name is not known ([Engine.Unnamed]).
type ReleaseRequest struct {
	Caller   string
	CallerIP netip.Addr
	Tuple    session.Tuple
	Key      uint16
	Role     session.Role // the caller's role
	Reason   string
}

// Tick drives time: idle sessions expire, client halves that hear nothing
// back are checked with their peer, resting keys come back. Counts are the
// session flows' counters by cookie; Fresh is false when they could not be
// read (a slow switch), and then sessions expire on the activity last seen
// (audit M6).
type Tick struct {
	Counts map[pipeline.Cookie]Counts
	Fresh  bool
}

// Verified answers [Verify]. Gone means the peer no longer takes the
// session (it refused, or has another for the tuple).
type Verified struct {
	ID   ID
	Err  error
	Gone bool
}

// PeerGone: a server's record left the directory and stayed away (or came
// back at another data address, NewIP). Its sessions end here; Reachable
// says whether it may still be told.
type PeerGone struct {
	Name      string
	NewIP     netip.Addr
	Reachable bool
	Reason    string // default: it left the directory
}

// EndpointChanged: a remote endpoint of a session was deleted, moved to
// another server or given another address.
type EndpointChanged struct {
	Tenant, Name string
	Deleted      bool
	Server       string
	IP           netip.Addr
}

// Unbound: a local workload's port left the bridge; its sessions end.
type Unbound struct {
	Port   uint32
	Reason string
}

// Abort gives up a session whatever it waits for (its setup goroutine
// panicked): what its setup may have installed is taken down.
type Abort struct {
	ID  ID
	Err error
}

// Touched: a packet of the session went through the agent's slow path
// (ICMP), which flow counters do not see.
type Touched struct{ ID ID }

// Adopt takes over a session found on the bridge, left by a previous agent
// (invariant 5). The answer is an [Adoption] effect.
type Adopt struct {
	Session    session.Session
	RemoteName string
}

func (Packet) event()              {}
func (Resolved) event()            {}
func (Accepted) event()            {}
func (Failed) event()              {}
func (AcceptRequest) event()       {}
func (ReplyWithoutSession) event() {}
func (Reopened) event()            {}
func (ReopenRequest) event()       {}
func (Installed) event()           {}
func (Removed) event()             {}
func (Teardown) event()            {}
func (ReleaseRequest) event()      {}
func (Tick) event()                {}
func (Verified) event()            {}
func (PeerGone) event()            {}
func (EndpointChanged) event()     {}
func (Unbound) event()             {}
func (Touched) event()             {}
func (Abort) event()               {}
func (KeyReply) event()            {}
func (Adopt) event()               {}

// --- Effects ---

// Resolve: look the server workload up in the client's tenant, find its
// server and ask policy; answer with [Resolved] or [Failed]. For a reopen
// (Reopen set) it is the client that is looked up, on the server's end.
type Resolve struct {
	ID     ID
	Tuple  session.Tuple
	From   Workload
	Reopen bool
	// Wait: a peer's request waits for this setup's end (ReopenRequest);
	// the setup runs in the caller's goroutine, and its last effect is the
	// Reply.
	Wait bool
}

// Accept: ask the peer to install the server half of Session (its Tuple,
// Key and Peer); answer with [Accepted]. Frames are the first packets,
// for the peer to deliver: the way back is in place already.
type Accept struct {
	ID      ID
	Session session.Session
	Frames  [][]byte
}

// Install: put this end's half of Session on the bridge and wait for the
// barrier; answer with [Installed]. Flows are the session's flows (TCP,
// UDP); Punt, when valid, is a peer whose ICMP punt flow must be added
// first (ICMP sessions share one per peer).
//
// Packets go to the switch right after the flows, before the barrier, in
// the same batch: a switch processes one connection's messages in order,
// so they meet the flows just installed, and the first packet does not
// wait for the barrier's round trip. Inject (a server half) are the
// session's first packets as its client sent them, passed by the peer:
// they enter the pipeline as if they had come from the peer (the peer's
// way back is in place), and those that are not the session's are
// dropped. Release (a client's SendPath) are the packets the workload sent
// meanwhile, from its port Port: the peer's half is in place.
type Install struct {
	ID      ID
	Session session.Session
	Flows   bool
	Part    Part
	Punt    netip.Addr
	Inject  [][]byte
	Release [][]byte
	Port    uint32
}

// Part says which of a session's flows an Install puts in.
type Part uint8

const (
	AllFlows Part = iota
	// ReplyPath is the client's session_in flow: the way back, installed
	// before the peer is asked, so that the peer may deliver the first
	// packets itself and their answers find their way.
	ReplyPath
	// SendPath is the client's session_out flow, installed once the
	// peer's half is in place (invariant 1).
	SendPath
)

// Remove: take this end's half of Session off the bridge; answer with
// [Removed]. Punt, when valid, is a peer's punt flow no session needs any
// more.
type Remove struct {
	ID      ID
	Session session.Session
	Flows   bool
	Punt    netip.Addr
}

// ReleasePeer: ask the peer to remove its half of Session (its answer
// comes after its barrier). Carried out before the Remove that follows it,
// so both halves go together (invariant 3).
type ReleasePeer struct {
	Session  session.Session
	PeerName string
	Reason   string
}

// Deliver: the session is in place at both ends; send the packets it held
// through the pipeline again (TCP, UDP) or along the slow path (ICMP).
type Deliver struct {
	ID      ID
	Session session.Session
	Port    uint32
	Frames  [][]byte
}

// Resubmit: packets the peer sent before the session's way back was in
// place here (or before the switch's cache knew it); it is in place now,
// so run them through the pipeline again as if just come from the peer.
type Resubmit struct {
	ID      ID
	Session session.Session
	Frames  [][]byte
}

// ToHost: a packet from a peer's key that is no session's; it is host
// traffic, for the host to answer.
type ToHost struct {
	Frame []byte
}

// Retry: frames that arrived while a session was ending; they start a fresh
// session, as if just sent by the workload on Port.
type Retry struct {
	Port   uint32
	Frames [][]byte
}

// Drop: install a short-lived drop flow for Tuple from Port (invariant 4):
// the destination was refused and is not asked about again for a while.
type Drop struct {
	Port  uint32
	Tuple session.Tuple
	Err   error // why; errors.Is tells ErrTooMany and ErrNoKey apart
}

// SetupFailed: a setup failed for a reason that may pass (the peer did not
// answer, the directory is down); nothing is dropped, the next packet tries
// again. For the agent's (rate-limited) log.
type SetupFailed struct {
	Session session.Session
	Err     error
}

// Verify: ask the peer whether it still holds the server half of Session
// (by repeating its Accept); answer with [Verified].
type Verify struct {
	ID       ID
	Session  session.Session
	PeerName string
}

// Reopen: ask Peer, the server that holds the client workload, to set
// Tuple up again; answer with [Reopened].
type Reopen struct {
	ID    ID
	Tuple session.Tuple
	Peer  session.Peer
}

// Reply answers a peer's request (AcceptRequest, ReleaseRequest,
// ReopenRequest): Err nil or why not.
type Reply struct {
	Err error
	// Delivered: of an AcceptRequest's frames, how many this end took on.
	Delivered int
}

// Adoption answers [Adopt]: Err says why the session was not adopted (its
// flows are then stale and should go).
type Adoption struct {
	Err error
}

func (Resolve) effect()     {}
func (Accept) effect()      {}
func (Install) effect()     {}
func (Remove) effect()      {}
func (ReleasePeer) effect() {}
func (Deliver) effect()     {}
func (Resubmit) effect()    {}
func (ToHost) effect()      {}
func (Retry) effect()       {}
func (Drop) effect()        {}
func (SetupFailed) effect() {}
func (Verify) effect()      {}
func (Reopen) effect()      {}
func (Reply) effect()       {}
func (Adoption) effect()    {}
