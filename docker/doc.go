// Package docker is NVI's Docker plugin: a libnetwork remote network driver
// and IPAM driver in one process (plugin protocol v1: JSON over HTTP on a
// unix socket in /run/docker/plugins, the plugin named after the socket
// file). It gives a Docker container an NVI endpoint on the server's bridge,
// with an address from that server's blocks, through the local nvid.
//
// # Using it
//
//	docker network create -d nvi --ipam-driver nvi \
//	    -o nvi.network=acme/web --ipam-opt nvi.network=acme/web web
//	docker run --network web IMAGE
//
// Docker hands driver options (-o) only to the network driver and IPAM
// options (--ipam-opt) only to the IPAM driver, so both name the NVI
// network; CreateNetwork checks that they agree (the pool Docker got from
// the IPAM driver is that network's CIDR, in NVI's address space).
//
// # How Docker's objects map to NVI's
//
//   - A Docker network is an NVI network (tenant/name) on this server. The
//     IPAM pool is the network's CIDR; its pool ID is "tenant/name", so
//     every IPAM call says which network it is about without any state.
//     The gateway Docker asks for is the network's gateway, and releasing it
//     is a no-op. The network driver keeps one record per Docker network ID
//     (tenant, network) in the directory, under [DefaultStatePrefix].
//   - An address Docker asks for (RequestAddress) is an NVI endpoint. The
//     IPAM driver declares RequiresMACAddress, so Docker chooses the
//     container's MAC first and passes it along; the endpoint is created
//     through the agent (which picks the address from its server's blocks,
//     or honours --ip) as tenant/docker-<the MAC's 12 hex digits>, with
//     that MAC. ReleaseAddress finds it by address in the tenant and deletes
//     it, port and all. The endpoint therefore lives exactly as long as
//     Docker holds the address.
//   - A Docker endpoint (CreateEndpoint) arrives with that address and MAC,
//     so the driver finds the NVI endpoint by name (from the MAC) and checks
//     its address, then keeps a record of Docker endpoint ID → (network,
//     tenant, NVI endpoint name) in the directory.
//   - Join makes a veth pair: "nvc" + the first 12 hex digits of the
//     endpoint ID in the plugin's own namespace, for Docker to move into the
//     container and rename eth<N>; "nvh" + the same digits in the bridge's
//     namespace (--bridge-netns), which the agent adds to the bridge as the
//     endpoint's port. Leave deletes the pair (the agent unbinds the port;
//     DeleteEndpoint at ReleaseAddress removes what is left of it).
//
// Everything the driver knows survives a restart: records are in the
// directory, the rest is derived from the IDs. On start, reservations
// (docker-* endpoints of this server) that no Docker endpoint record names
// are deleted: they are addresses whose container never came, left by a
// crash between RequestAddress and CreateEndpoint.
//
// # Errors
//
// A request that cannot be decoded gets HTTP 400, an unknown method 404,
// both with {"Err": "..."}; a request that is understood but refused gets
// HTTP 200 with {"Err": "..."}, which Docker shows to the user. (Docker's
// remote IPAM client reads the message from "Error", not "Err", so IPAM
// refusals carry both.) Every failing step undoes the steps before it, so
// no veth, port or endpoint is left half made; what Docker rolls back
// after a refusal (DeleteEndpoint, ReleaseAddress) removes the rest.
package docker
