// Package cni is nvi-cni, NVI's CNI plugin (specification 1.1; configurations
// of 0.3.0 to 1.0.0 are accepted too). A container runtime runs it to attach
// a container to an NVI tenant network; the plugin asks the server's nvid
// over its local API and never the directory.
//
// Network configuration (one plugin of a conflist):
//
//	{
//	  "cniVersion": "1.1.0", "name": "acme-web", "type": "nvi-cni",
//	  "tenant": "acme", "network": "web",
//	  "socket": "/run/nvi/nvid.sock",    // nvid's local API (this default if absent)
//	  "bridgeNetns": "",                 // netns of the bridge: "" the plugin's own, a name or a path
//	  "ip": "10.1.0.50",                 // optional; else nvid assigns one from this server's blocks
//	  "capabilities": {"ips": true}      // optional: take runtimeConfig.ips (podman run --ip)
//	}
//
// The address asked for comes from runtimeConfig.ips, args.cni.ips, CNI_ARGS
// IP=, then "ip", first found wins; an attachment has one IPv4 address.
//
// An attachment (CNI_CONTAINERID, CNI_IFNAME) is the NVI endpoint
// [EndpointName] ("cni-" + 24 hex digits of the container ID + "-" +
// ifname), labelled iface-id "cni:NAME:TENANT/ENDPOINT" (NAME the CNI
// network's), with a veth pair: CNI_IFNAME in the container, [HostVeth] in
// the bridge's namespace.
//
//   - ADD creates the endpoint, makes the pair (the endpoint's MAC and
//     address, a default route via the gateway, transmit checksum offload
//     off on both ends, as Open vSwitch's userspace datapath needs) and has
//     nvid attach the host end, waiting until it is bound. Anything failing
//     midway undoes what this call made. A second ADD for the same
//     attachment fails with code 102 and leaves the first one alone (the
//     specification lets runtimes rely on no second ADD; failing is the
//     safe answer).
//   - DEL deletes endpoint, port and pair; absent things are fine, a
//     vanished network namespace too. Only an agent that cannot be asked
//     fails it (code 11), so the runtime retries.
//   - CHECK requires the endpoint bound to the pair's host end and the
//     container's interface with the endpoint's MAC, address, default route
//     and checksum offload off; prevResult must list the address.
//   - STATUS asks nvid; not answering or not ready is code 50.
//   - GC deletes this CNI network's endpoints on this server (tenant,
//     iface-id prefix, "cni-" names) whose attachments are not in
//     cni.dev/valid-attachments, with their veths.
//   - VERSION lists [SupportedVersions].
//
// Errors are the specification's error object on stdout, exit status 1:
// 1 incompatible version (CHECK needs 0.4.0, STATUS and GC 1.1.0), 2 an
// unsupported field (several addresses), 3 the container's namespace does
// not exist (ADD), 4 missing or invalid CNI_* variables, 5 reading stdin,
// 6 configuration not JSON or empty, 7 invalid configuration, 11 nvid
// unreachable or busy, 50 STATUS not available, and NVI's own: 100 unknown
// tenant or network, 101 address taken, 102 attachment exists, 103 refused
// by nvid, 104 interface plumbing failed, 105 CHECK failed, 106 other nvid
// failures.
package cni
