package docker

import "strings"

// The wire types of libnetwork's remote driver and remote IPAM protocols,
// field names as Docker spells them.

// Option keys Docker uses.
const (
	// genericOptions holds the -o options of "docker network create".
	genericOptions = "com.docker.network.generic"
	// requestAddressType says what an address request is for; gatewayType
	// is its value for the network's gateway.
	requestAddressType = "RequestAddressType"
	gatewayType        = "com.docker.network.gateway"
	// macOption carries the endpoint's MAC to RequestAddress (because the
	// IPAM driver declares RequiresMACAddress).
	macOption = "com.docker.network.endpoint.macaddress"
)

// NetworkOption is the option (-o and --ipam-opt) that names the NVI
// network, "tenant/network".
const NetworkOption = "nvi.network"

// Address spaces the IPAM driver declares.
const (
	LocalAddressSpace  = "nvi"
	GlobalAddressSpace = "nvi-global"
)

// errResponse is a refusal. The network driver protocol reads "Err";
// libnetwork's remote IPAM client reads "Error", so IPAM refusals carry the
// message under both keys.
type errResponse struct {
	Err   string `json:"Err"`
	Error string `json:"Error,omitempty"`
}

func refusal(method, msg string) errResponse {
	r := errResponse{Err: msg}
	if strings.HasPrefix(method, "IpamDriver.") {
		r.Error = msg
	}
	return r
}

type activateResponse struct {
	Implements []string `json:"Implements"`
}

type capabilitiesResponse struct {
	Scope             string `json:"Scope"`
	ConnectivityScope string `json:"ConnectivityScope"`
}

type ipamData struct {
	AddressSpace string            `json:"AddressSpace"`
	Pool         string            `json:"Pool"`
	Gateway      string            `json:"Gateway"`
	AuxAddresses map[string]string `json:"AuxAddresses"`
}

type createNetworkRequest struct {
	NetworkID string         `json:"NetworkID"`
	Options   map[string]any `json:"Options"`
	IPv4Data  []ipamData     `json:"IPv4Data"`
	IPv6Data  []ipamData     `json:"IPv6Data"`
}

type networkRequest struct {
	NetworkID string `json:"NetworkID"`
}

type endpointInterface struct {
	Address     string `json:"Address,omitempty"`
	AddressIPv6 string `json:"AddressIPv6,omitempty"`
	MacAddress  string `json:"MacAddress,omitempty"`
}

type createEndpointRequest struct {
	NetworkID  string             `json:"NetworkID"`
	EndpointID string             `json:"EndpointID"`
	Interface  *endpointInterface `json:"Interface"`
	Options    map[string]any     `json:"Options"`
}

type createEndpointResponse struct {
	Interface *endpointInterface `json:"Interface,omitempty"`
}

type endpointRequest struct {
	NetworkID  string `json:"NetworkID"`
	EndpointID string `json:"EndpointID"`
}

type operInfoResponse struct {
	Value map[string]string `json:"Value"`
}

type joinRequest struct {
	NetworkID  string         `json:"NetworkID"`
	EndpointID string         `json:"EndpointID"`
	SandboxKey string         `json:"SandboxKey"`
	Options    map[string]any `json:"Options"`
}

type interfaceName struct {
	SrcName   string `json:"SrcName"`
	DstPrefix string `json:"DstPrefix"`
}

type staticRoute struct {
	Destination string `json:"Destination"`
	RouteType   int    `json:"RouteType"`
	NextHop     string `json:"NextHop,omitempty"`
}

type joinResponse struct {
	InterfaceName interfaceName `json:"InterfaceName"`
	Gateway       string        `json:"Gateway,omitempty"`
	StaticRoutes  []staticRoute `json:"StaticRoutes,omitempty"`
}

type ipamCapabilitiesResponse struct {
	RequiresMACAddress    bool `json:"RequiresMACAddress"`
	RequiresRequestReplay bool `json:"RequiresRequestReplay"`
}

type addressSpacesResponse struct {
	LocalDefaultAddressSpace  string `json:"LocalDefaultAddressSpace"`
	GlobalDefaultAddressSpace string `json:"GlobalDefaultAddressSpace"`
}

type requestPoolRequest struct {
	AddressSpace string            `json:"AddressSpace"`
	Pool         string            `json:"Pool"`
	SubPool      string            `json:"SubPool"`
	Options      map[string]string `json:"Options"`
	V6           bool              `json:"V6"`
}

type requestPoolResponse struct {
	PoolID string            `json:"PoolID"`
	Pool   string            `json:"Pool"`
	Data   map[string]string `json:"Data"`
}

type poolRequest struct {
	PoolID string `json:"PoolID"`
}

type requestAddressRequest struct {
	PoolID  string            `json:"PoolID"`
	Address string            `json:"Address"`
	Options map[string]string `json:"Options"`
}

type requestAddressResponse struct {
	Address string            `json:"Address"`
	Data    map[string]string `json:"Data,omitempty"`
}

type releaseAddressRequest struct {
	PoolID  string `json:"PoolID"`
	Address string `json:"Address"`
}

// discoverRequest is DiscoverNew and DiscoverDelete, for both drivers.
type discoverRequest struct {
	DiscoveryType int `json:"DiscoveryType"`
	DiscoveryData any `json:"DiscoveryData"`
}

type empty struct{}
