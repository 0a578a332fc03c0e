package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"nvi/api"
)

// Agent is what the plugin asks of nvid: the local API's calls it uses.
type Agent interface {
	Status(ctx context.Context) (api.Status, error)
	CreateEndpoint(ctx context.Context, req api.CreateEndpointRequest) (api.Endpoint, error)
	AttachEndpoint(ctx context.Context, req api.AttachRequest) (api.Endpoint, error)
	DeleteEndpoint(ctx context.Context, tenant, name string) error
	ServerEndpoints(ctx context.Context) ([]api.Endpoint, error)
	Close()
}

// Veth describes the pair ADD makes: one end in the container, renamed to
// CNI_IFNAME and configured, the other in the bridge's namespace.
type Veth struct {
	ContainerNetns string // CNI_NETNS
	IfName         string // CNI_IFNAME
	MAC            string // the endpoint's
	Addr           netip.Prefix
	Gateway        netip.Addr
	BridgeNetns    string // name, path, or "" for the plugin's own
	Host           string // name of the bridge-side end
}

// LinkState is what CHECK sees of an interface.
type LinkState struct {
	Exists          bool
	MAC             string
	Up              bool
	Addrs           []netip.Prefix
	DefaultGateways []netip.Addr
	TxChecksum      bool
}

// Links is the kernel side of the plugin; an interface so that the
// operations are tested without root.
type Links interface {
	// CheckNetns fails with errNetnsGone if ref is not a network namespace
	// and, with notOurs, with errOwnNetns if it is the plugin's own.
	CheckNetns(ref string, notOurs bool) error
	// AddVeth makes and configures the pair, all or nothing, and returns
	// the bridge-side end's MAC. An interface of the container's name
	// already there gives errIfaceExists.
	AddVeth(v Veth) (hostMAC string, err error)
	// DelHost deletes a bridge-side end (and so its pair); absence, even of
	// the namespace, is no error.
	DelHost(bridgeNetns, host string) (existed bool, err error)
	// Inspect reads an interface; a missing one has Exists false.
	Inspect(netns, ifname string) (LinkState, error)
}

var (
	errNetnsGone   = errors.New("no such network namespace")
	errOwnNetns    = errors.New("it is the plugin's own network namespace")
	errIfaceExists = errors.New("an interface of that name already exists")
)

// Plugin runs CNI operations against an agent.
type Plugin struct {
	Dial    func(socket string) Agent // connects to nvid's local API
	Links   Links
	Log     *slog.Logger  // warnings go to the runtime's log (stderr)
	Timeout time.Duration // for one whole operation
}

// New returns the plugin as the nvi-cni binary runs it: the agent over its
// unix socket, links through netlink, warnings to stderr.
func New(stderr io.Writer) *Plugin {
	return &Plugin{
		Dial:    func(socket string) Agent { return api.NewLocalClient(socket, 30*time.Second) },
		Links:   kernelLinks{},
		Log:     slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("plugin", "nvi-cni"),
		Timeout: time.Minute,
	}
}

// Env is a call's CNI_* parameters.
type Env struct {
	Command, ContainerID, Netns, IfName, Args, Path string
}

var containerIDRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// readEnv reads and checks the parameters the command needs.
func readEnv(getenv func(string) string) (Env, *Error) {
	e := Env{
		Command: getenv("CNI_COMMAND"), ContainerID: getenv("CNI_CONTAINERID"), Netns: getenv("CNI_NETNS"),
		IfName: getenv("CNI_IFNAME"), Args: getenv("CNI_ARGS"), Path: getenv("CNI_PATH"),
	}
	var need []string
	switch e.Command {
	case "":
		need = []string{"CNI_COMMAND"}
	case "ADD", "CHECK":
		need = []string{"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"}
	case "DEL":
		need = []string{"CNI_CONTAINERID", "CNI_IFNAME"}
	case "GC", "STATUS", "VERSION":
	default:
		return e, errorf(CodeInvalidEnvironment, "invalid CNI_COMMAND", "CNI_COMMAND %q: want ADD, DEL, CHECK, STATUS, GC or VERSION", e.Command)
	}
	var missing []string
	for _, k := range need {
		if getenv(k) == "" {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return e, errorf(CodeInvalidEnvironment, "missing environment variables", "required environment variables %s missing", strings.Join(missing, ", "))
	}
	if e.ContainerID != "" && !containerIDRe.MatchString(e.ContainerID) {
		return e, errorf(CodeInvalidEnvironment, "invalid CNI_CONTAINERID", "CNI_CONTAINERID %q: want letters and digits, then also '_', '.' or '-'", e.ContainerID)
	}
	if e.IfName != "" {
		if err := validIfName(e.IfName); err != nil {
			return e, errorf(CodeInvalidEnvironment, "invalid CNI_IFNAME", "CNI_IFNAME %q: %v", e.IfName, err)
		}
	}
	return e, nil
}

// validIfName applies Linux's rules for interface names.
func validIfName(s string) error {
	switch {
	case len(s) > 15:
		return errors.New("longer than 15 characters")
	case s == "." || s == "..":
		return errors.New("not a usable name")
	case strings.ContainsAny(s, "/: \t\n\r\v\f"):
		return errors.New("holds '/', ':' or white space")
	}
	return nil
}

// Run performs the call described by getenv and stdin, writes the result
// or the error to stdout, and returns the exit code.
func (p *Plugin) Run(getenv func(string) string, stdin io.Reader, stdout io.Writer) int {
	out, e := p.run(getenv, stdin)
	if e != nil {
		writeError(stdout, "1.1.0", e)
		return 1
	}
	if out != nil {
		if _, err := stdout.Write(append(out, '\n')); err != nil {
			p.Log.Warn("writing the result failed", "err", err)
			return 1
		}
	}
	return 0
}

func (p *Plugin) run(getenv func(string) string, stdin io.Reader) ([]byte, *Error) {
	env, e := readEnv(getenv)
	if e != nil {
		return nil, e
	}
	data, err := io.ReadAll(io.LimitReader(stdin, 1<<20))
	if err != nil {
		return nil, errorf(CodeIOFailure, "cannot read the network configuration", "reading stdin: %v", err)
	}
	if env.Command == "VERSION" {
		return versionResult(data), nil
	}
	c, e := ParseConfig(data, env.Args)
	if e != nil {
		return nil, e
	}
	withVersion := func(e *Error) *Error {
		if e != nil && e.CNIVersion == "" {
			e.CNIVersion = c.Version
		}
		return e
	}
	switch {
	case env.Command == "CHECK" && !atLeast(c.Version, "0.4.0"),
		(env.Command == "GC" || env.Command == "STATUS") && !atLeast(c.Version, "1.1.0"):
		return nil, withVersion(errorf(CodeIncompatibleVersion, "incompatible CNI version", "%s needs cniVersion 0.4.0 (CHECK) or 1.1.0 (STATUS, GC); the configuration has %s", env.Command, c.Version))
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.Timeout)
	defer cancel()
	agent := p.Dial(c.Socket)
	defer agent.Close()
	switch env.Command {
	case "ADD":
		out, err := p.Add(ctx, agent, env, c)
		return out, withVersion(err)
	case "DEL":
		return nil, withVersion(p.Del(ctx, agent, env, c))
	case "CHECK":
		return nil, withVersion(p.Check(ctx, agent, env, c))
	case "STATUS":
		return nil, withVersion(p.Status(ctx, agent, c))
	default: // GC
		return nil, withVersion(p.GC(ctx, agent, c))
	}
}

// versionResult answers VERSION, echoing the cniVersion asked about.
func versionResult(stdin []byte) []byte {
	var in struct {
		CNIVersion string `json:"cniVersion"`
	}
	_ = json.Unmarshal(stdin, &in) // VERSION works without input
	if in.CNIVersion == "" {
		in.CNIVersion = "1.1.0"
	}
	b, _ := json.Marshal(struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}{in.CNIVersion, SupportedVersions})
	return b
}

// netnsError says what is wrong with a namespace named in CNI_NETNS.
func netnsError(ref string, err error) *Error {
	switch {
	case errors.Is(err, errNetnsGone):
		return errorf(CodeUnknownContainer, "container network namespace does not exist", "CNI_NETNS %s: %v", ref, err)
	case errors.Is(err, errOwnNetns):
		return errorf(CodeInvalidEnvironment, "invalid CNI_NETNS", "CNI_NETNS %s: %v", ref, err)
	}
	return errorf(CodeInvalidEnvironment, "invalid CNI_NETNS", "CNI_NETNS %s: %v", ref, err)
}

// Add attaches the container: endpoint, veth pair, port. Whatever fails
// midway, what this call made is removed again; what it did not make (an
// endpoint of an earlier ADD) is left alone.
func (p *Plugin) Add(ctx context.Context, agent Agent, env Env, c Config) (out []byte, cerr *Error) {
	name := EndpointName(env.ContainerID, env.IfName)
	host := HostVeth(name)
	if err := p.Links.CheckNetns(env.Netns, true); err != nil {
		return nil, netnsError(env.Netns, err)
	}
	if c.BridgeNetns != "" {
		if err := p.Links.CheckNetns(c.BridgeNetns, false); err != nil {
			return nil, errorf(CodeInvalidConfig, "invalid network configuration", "bridgeNetns %s: %v", c.BridgeNetns, err)
		}
	}
	if st, err := p.Links.Inspect(env.Netns, env.IfName); err != nil {
		return nil, errorf(CodeInterface, "cannot inspect the container's interfaces", "%v", err)
	} else if st.Exists {
		return nil, errorf(CodeExists, "attachment already exists", "the container already has an interface %s (a second ADD needs a DEL first)", env.IfName)
	}
	ep, err := agent.CreateEndpoint(ctx, api.CreateEndpointRequest{
		Tenant: c.Tenant, Network: c.Network, Name: name, IP: c.IP, IfaceID: IfaceID(c.Name, c.Tenant, name),
	})
	if err != nil {
		if api.CodeOf(err) == api.CodeUnavailable {
			// The call may have timed out after the agent made it.
			p.undo(agent, c, name, host)
		}
		return nil, createError(c, name, err)
	}
	defer func() {
		if cerr != nil {
			p.undo(agent, c, name, host)
		}
	}()
	hostMAC, err := p.Links.AddVeth(Veth{
		ContainerNetns: env.Netns, IfName: env.IfName, MAC: ep.MAC,
		Addr: netip.PrefixFrom(ep.IP, ep.PrefixLen), Gateway: ep.Gateway,
		BridgeNetns: c.BridgeNetns, Host: host,
	})
	if errors.Is(err, errIfaceExists) {
		return nil, errorf(CodeExists, "attachment already exists", "the container already has an interface %s", env.IfName)
	}
	if err != nil {
		return nil, errorf(CodeInterface, "cannot make the container's interface", "%v", err)
	}
	if _, err := agent.AttachEndpoint(ctx, api.AttachRequest{Tenant: c.Tenant, Name: name, Interface: host}); err != nil {
		return nil, agentError("attaching "+host+" as endpoint "+c.Tenant+"/"+name, err)
	}
	res, err := BuildResult(c, ep, host, hostMAC, env.IfName, env.Netns)
	if err != nil {
		return nil, errorf(CodeIncompatibleVersion, "cannot express the result", "%v", err)
	}
	return res, nil
}

// undo removes what a failed ADD made, with a context of its own: the
// operation's may be what ran out.
func (p *Plugin) undo(agent Agent, c Config, name, host string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := agent.DeleteEndpoint(ctx, c.Tenant, name); err != nil && api.CodeOf(err) != api.CodeNotFound {
		p.Log.Warn("rolling back: cannot delete the endpoint", "endpoint", c.Tenant+"/"+name, "err", err)
	}
	if _, err := p.Links.DelHost(c.BridgeNetns, host); err != nil {
		p.Log.Warn("rolling back: cannot delete the veth", "veth", host, "err", err)
	}
}

// createError explains why the agent would not create the endpoint.
func createError(c Config, name string, err error) *Error {
	what := fmt.Sprintf("creating endpoint %s/%s in network %s", c.Tenant, name, c.Network)
	switch api.CodeOf(err) {
	case api.CodeNotFound:
		return errorf(CodeUnknownNetwork, "unknown tenant or network", "%s: %v", what, err)
	case api.CodeConflict:
		return errorf(CodeAddressTaken, "address taken", "%s: %v", what, err)
	case api.CodeExists:
		return errorf(CodeExists, "attachment already exists", "%s: %v (a second ADD for this container and interface needs a DEL first)", what, err)
	}
	return agentError(what, err)
}

// Del detaches the container: endpoint (with its port, flows and sessions)
// and veth pair. Whatever is already gone is fine, including the container's
// namespace; only an agent that cannot be asked makes it fail, so that the
// runtime tries again.
func (p *Plugin) Del(ctx context.Context, agent Agent, env Env, c Config) *Error {
	name := EndpointName(env.ContainerID, env.IfName)
	var errs []*Error
	if err := agent.DeleteEndpoint(ctx, c.Tenant, name); err != nil && api.CodeOf(err) != api.CodeNotFound {
		errs = append(errs, agentError("deleting endpoint "+c.Tenant+"/"+name, err))
	}
	if _, err := p.Links.DelHost(c.BridgeNetns, HostVeth(name)); err != nil {
		errs = append(errs, errorf(CodeInterface, "cannot delete the veth", "%v", err))
	}
	return joinErrors(errs)
}

// Check confirms that the attachment is as ADD left it: the endpoint bound
// to its port, the container's interface with the endpoint's MAC, address
// and default route, transmit checksum offload off.
func (p *Plugin) Check(ctx context.Context, agent Agent, env Env, c Config) *Error {
	name := EndpointName(env.ContainerID, env.IfName)
	host := HostVeth(name)
	failed := func(format string, args ...any) *Error {
		return errorf(CodeCheckFailed, "attachment is not as expected", format, args...)
	}
	if err := p.Links.CheckNetns(env.Netns, true); err != nil {
		return failed("CNI_NETNS %s: %v", env.Netns, err)
	}
	eps, err := agent.ServerEndpoints(ctx)
	if err != nil {
		return agentError("listing this server's endpoints", err)
	}
	var ep *api.Endpoint
	for i := range eps {
		if eps[i].Tenant == c.Tenant && eps[i].Name == name {
			ep = &eps[i]
		}
	}
	switch {
	case ep == nil:
		return failed("endpoint %s/%s does not exist on this server", c.Tenant, name)
	case !ep.Bound:
		return failed("endpoint %s/%s is not bound to a port of the bridge", c.Tenant, name)
	case ep.Interface != host:
		return failed("endpoint %s/%s is bound to %s, not %s", c.Tenant, name, ep.Interface, host)
	case ep.Network != c.Network:
		return failed("endpoint %s/%s is in network %s, not %s", c.Tenant, name, ep.Network, c.Network)
	}
	if c.PrevResult != nil {
		want := netip.PrefixFrom(ep.IP, ep.PrefixLen).String()
		found := false
		for _, ip := range c.PrevResult.IPs {
			found = found || ip.Address.String() == want
		}
		if !found {
			return failed("prevResult does not list the endpoint's address %s", want)
		}
	}
	st, err := p.Links.Inspect(env.Netns, env.IfName)
	if err != nil {
		return failed("%v", err)
	}
	addr := netip.PrefixFrom(ep.IP, ep.PrefixLen)
	has := func(list []netip.Prefix, x netip.Prefix) bool {
		for _, y := range list {
			if y == x {
				return true
			}
		}
		return false
	}
	hasGW := false
	for _, g := range st.DefaultGateways {
		hasGW = hasGW || g == ep.Gateway
	}
	switch {
	case !st.Exists:
		return failed("the container has no interface %s", env.IfName)
	case !strings.EqualFold(st.MAC, ep.MAC):
		return failed("%s has MAC %s, the endpoint %s", env.IfName, st.MAC, ep.MAC)
	case !st.Up:
		return failed("%s is down", env.IfName)
	case !has(st.Addrs, addr):
		return failed("%s lacks the address %s (has %v)", env.IfName, addr, st.Addrs)
	case !hasGW:
		return failed("%s has no default route via %s", env.IfName, ep.Gateway)
	case st.TxChecksum:
		return failed("%s has transmit checksum offload on: frames through the bridge would carry bad checksums", env.IfName)
	}
	return nil
}

// Status reports whether the agent can serve ADD.
func (p *Plugin) Status(ctx context.Context, agent Agent, c Config) *Error {
	st, err := agent.Status(ctx)
	if err != nil {
		return errorf(CodeNotAvailable, "plugin not available", "the NVI agent at %s does not answer: %v", c.Socket, err)
	}
	if !st.Ready {
		return errorf(CodeNotAvailable, "plugin not available", "the NVI agent of server %s is not ready (switch %s, directory %s)", st.Server, st.Switch, st.Directory)
	}
	return nil
}

// GC deletes this CNI network's endpoints on this server (and their veths)
// whose attachments the runtime no longer lists. It carries on past errors
// and reports them all.
func (p *Plugin) GC(ctx context.Context, agent Agent, c Config) *Error {
	valid := map[string]bool{}
	for _, a := range c.ValidAttachments {
		valid[EndpointName(a.ContainerID, a.IfName)] = true
	}
	eps, err := agent.ServerEndpoints(ctx)
	if err != nil {
		return agentError("listing this server's endpoints", err)
	}
	prefix := ifaceIDPrefix(c.Name)
	var errs []*Error
	for _, ep := range eps {
		if ep.Tenant != c.Tenant || !strings.HasPrefix(ep.Name, EndpointPrefix) || !strings.HasPrefix(ep.IfaceID, prefix) || valid[ep.Name] {
			continue
		}
		if err := agent.DeleteEndpoint(ctx, ep.Tenant, ep.Name); err != nil && api.CodeOf(err) != api.CodeNotFound {
			errs = append(errs, agentError("deleting stale endpoint "+ep.Tenant+"/"+ep.Name, err))
			continue
		}
		if _, err := p.Links.DelHost(c.BridgeNetns, HostVeth(ep.Name)); err != nil {
			errs = append(errs, errorf(CodeInterface, "cannot delete a stale veth", "%v", err))
		}
	}
	return joinErrors(errs)
}

// joinErrors reports several errors as one, with the first one's code.
func joinErrors(errs []*Error) *Error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	parts := make([]string, len(errs))
	for i, e := range errs {
		parts[i] = e.Error()
	}
	return &Error{Code: errs[0].Code, Msg: errs[0].Msg, Details: strings.Join(parts, "; ")}
}
