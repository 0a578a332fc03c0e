package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
)

// EndpointPrefix starts the name of every endpoint nvi-cni makes.
const EndpointPrefix = "cni-"

var (
	hexIDRe      = regexp.MustCompile(`^[0-9a-f]{24,}$`)
	plainIfaceRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,14}$`)
)

func hash(s string, n int) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:n]
}

// EndpointName names the NVI endpoint of an attachment (CNI_CONTAINERID,
// CNI_IFNAME), the same on every call so that DEL, CHECK and GC find what ADD
// made: "cni-" + the first 24 hex digits of the container ID (its SHA-256
// when the ID is not hex, like cnitool's) + "-" + the interface name (hashed
// when it holds characters NVI names do not allow). It is at most 44
// characters long and a valid NVI name.
func EndpointName(containerID, ifname string) string {
	id := strings.ToLower(containerID)
	if hexIDRe.MatchString(id) {
		id = id[:24]
	} else {
		id = hash(containerID, 24)
	}
	ifp := ifname
	if !plainIfaceRe.MatchString(ifp) {
		ifp = "if" + hash(ifname, 8)
	}
	return EndpointPrefix + id + "-" + ifp
}

// HostVeth names the bridge-side end of an endpoint's veth pair: "nvc" and 12
// hex digits of the endpoint name's hash, 15 characters, Linux's limit. GC
// finds it from the endpoint name alone.
func HostVeth(endpoint string) string {
	return "nvc" + hash(endpoint, 12)
}

// IfaceID is the iface-id label of an endpoint's port. It names the CNI
// network too, so that GC for one network configuration never touches the
// attachments of another that maps to the same tenant.
func IfaceID(cniNetwork, tenant, endpoint string) string {
	return ifaceIDPrefix(cniNetwork) + tenant + "/" + endpoint
}

// ifaceIDPrefix starts the iface-ids of one CNI network's endpoints; a long
// network name is hashed to keep iface-ids within the directory's limit.
func ifaceIDPrefix(cniNetwork string) string {
	if len(cniNetwork) > 128 {
		cniNetwork = "h" + hash(cniNetwork, 32)
	}
	return "cni:" + cniNetwork + ":"
}
