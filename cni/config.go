package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// SupportedVersions are the specification versions nvi-cni speaks. CHECK
// needs 0.4.0 or later, STATUS and GC 1.1.0.
var SupportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// DefaultSocket is where nvid serves its local API unless told otherwise.
const DefaultSocket = "/run/nvi/nvid.sock"

// netConf is the network configuration as it arrives on stdin: the
// specification's fields plus NVI's.
type netConf struct {
	CNIVersion  string `json:"cniVersion"`
	Name        string `json:"name"`
	Type        string `json:"type"`
	Tenant      string `json:"tenant"`
	Network     string `json:"network"`
	Socket      string `json:"socket"`
	BridgeNetns string `json:"bridgeNetns"`
	IP          string `json:"ip"`

	RuntimeConfig struct {
		IPs []string `json:"ips"`
	} `json:"runtimeConfig"`
	Args struct {
		CNI struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args"`
	PrevResult       json.RawMessage      `json:"prevResult"`
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments"`
}

// Config is a checked network configuration for one call.
type Config struct {
	Version     string // the cniVersion the runtime chose
	Name        string // the CNI network's name
	Tenant      string
	Network     string
	Socket      string     // the agent's local API
	BridgeNetns string     // the namespace of the bridge: a name, a path, or "" for our own
	IP          netip.Addr // the address asked for; zero lets the agent assign one

	PrevResult       *types100.Result // CHECK's (or a chained ADD's) previous result
	ValidAttachments []types.GCAttachment
}

var (
	nviNameRe   = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)
	cniNameRe   = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)
	nsNameRe    = regexp.MustCompile(`^[a-zA-Z0-9_.-]+$`)
	cniArgKeyRe = regexp.MustCompile(`^[a-zA-Z0-9_]+$`)
)

// ParseConfig checks a network configuration and the call's CNI_ARGS. The
// address asked for comes from, first to last: runtimeConfig.ips (the "ips"
// capability), args.cni.ips, CNI_ARGS IP=, the configuration's "ip".
func ParseConfig(data []byte, cniArgs string) (Config, *Error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return Config{}, &Error{Code: CodeDecodingFailure, Msg: "no network configuration", Details: "stdin is empty: the network configuration is expected there as JSON"}
	}
	var nc netConf
	if err := json.Unmarshal(data, &nc); err != nil {
		return Config{}, errorf(CodeDecodingFailure, "malformed network configuration", "decoding the JSON on stdin: %v", err)
	}
	if !slices.Contains(SupportedVersions, nc.CNIVersion) {
		return Config{}, errorf(CodeIncompatibleVersion, "incompatible CNI version",
			"the configuration's cniVersion is %q; nvi-cni supports %s", nc.CNIVersion, strings.Join(SupportedVersions, ", "))
	}
	c := Config{Version: nc.CNIVersion, Name: nc.Name, Tenant: nc.Tenant, Network: nc.Network,
		Socket: nc.Socket, BridgeNetns: nc.BridgeNetns, ValidAttachments: nc.ValidAttachments}
	invalid := func(format string, args ...any) (Config, *Error) {
		e := errorf(CodeInvalidConfig, "invalid network configuration", format, args...)
		e.CNIVersion = c.Version
		return Config{}, e
	}
	if !cniNameRe.MatchString(c.Name) {
		return invalid("name %q: want letters, digits, '_', '.' or '-', starting with a letter or digit", c.Name)
	}
	for _, f := range []struct{ key, val string }{{"tenant", c.Tenant}, {"network", c.Network}} {
		if f.val == "" {
			return invalid("%q is missing: it names the NVI %s to attach to", f.key, f.key)
		}
		if !nviNameRe.MatchString(f.val) {
			return invalid("%s %q: want 1-63 lower-case letters, digits, '-', '_' or '.', starting with a letter or digit", f.key, f.val)
		}
	}
	if c.Socket == "" {
		c.Socket = DefaultSocket
	}
	if !filepath.IsAbs(c.Socket) {
		return invalid("socket %q: want the absolute path of nvid's unix socket", c.Socket)
	}
	if c.BridgeNetns != "" && !filepath.IsAbs(c.BridgeNetns) && !nsNameRe.MatchString(c.BridgeNetns) {
		return invalid("bridgeNetns %q: want a network namespace name (as in ip netns) or an absolute path", c.BridgeNetns)
	}
	ipArg, e := cniArgIP(cniArgs)
	if e != nil {
		return Config{}, e
	}
	for _, src := range []struct {
		field string
		vals  []string
	}{
		{"runtimeConfig.ips", nc.RuntimeConfig.IPs},
		{"args.cni.ips", nc.Args.CNI.IPs},
		{"CNI_ARGS IP", nonEmpty(ipArg)},
		{"ip", nonEmpty(nc.IP)},
	} {
		if len(src.vals) == 0 {
			continue
		}
		if len(src.vals) > 1 {
			e := errorf(CodeUnsupportedField, "unsupported field", "%s = %q: an NVI attachment has exactly one IPv4 address", src.field, src.vals)
			e.CNIVersion = c.Version
			return Config{}, e
		}
		ip, err := parseAddr(src.vals[0])
		if err != nil {
			return invalid("%s = %q: %v", src.field, src.vals[0], err)
		}
		c.IP = ip
		break
	}
	if len(nc.PrevResult) > 0 && string(nc.PrevResult) != "null" {
		res, err := version.NewResult(c.Version, nc.PrevResult)
		if err == nil {
			c.PrevResult, err = types100.GetResult(res)
		}
		if err != nil {
			e := errorf(CodeDecodingFailure, "malformed prevResult", "decoding prevResult: %v", err)
			e.CNIVersion = c.Version
			return Config{}, e
		}
	}
	return c, nil
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

// parseAddr reads "10.1.0.5" or "10.1.0.5/24" (the prefix length is the
// network's anyway).
func parseAddr(s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		p, perr := netip.ParsePrefix(s)
		if perr != nil {
			return netip.Addr{}, errors.New("not an IPv4 address")
		}
		ip = p.Addr()
	}
	if !ip.Is4() {
		return netip.Addr{}, errors.New("not an IPv4 address (NVI networks are IPv4)")
	}
	return ip, nil
}

// cniArgIP reads IP= from CNI_ARGS ("K=V;K2=V2"); other keys are ignored.
func cniArgIP(s string) (string, *Error) {
	ip := ""
	for _, kv := range strings.Split(s, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !cniArgKeyRe.MatchString(k) {
			return "", errorf(CodeInvalidEnvironment, "invalid CNI_ARGS", "CNI_ARGS %q: %q is not KEY=VALUE", s, kv)
		}
		if k == "IP" {
			ip = v
		}
	}
	return ip, nil
}

// atLeast says whether specification version v is min or later (both from
// SupportedVersions, or parsable).
func atLeast(v, min string) bool {
	ok, err := version.GreaterThanOrEqualTo(v, min)
	return err == nil && ok
}
