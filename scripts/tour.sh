#!/usr/bin/env bash
# The NVI tour, on a lab cloud of three servers on this machine. Run it with
# scripts/tour (which installs and builds first) or, after `make build`,
# directly. Every command it runs is printed, so you can repeat them.
set -euo pipefail
cd "$(dirname "$0")/.."
nvictl=./bin/nvictl
export NVI_LAB=nvi
pcap=$(mktemp /tmp/nvi-tour-XXXX.pcap)
capture=""

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }
orch=$(mktemp -d /tmp/nvi-tour-orch-XXXX)
podman="podman --root $orch/root --runroot $orch/runroot --tmpdir $orch/tmp --storage-driver vfs --network-config-dir $orch/net.d"
export CONTAINERS_CONF=$orch/containers.conf
cleanup() {
	[ -n "$capture" ] && kill "$capture" 2>/dev/null || true
	docker rm -f tour-docker >/dev/null 2>&1 || true
	docker network rm tour-web >/dev/null 2>&1 || true
	docker rmi -f nvi-busybox:tour >/dev/null 2>&1 || true
	[ -n "${dockerplugin:-}" ] && kill "$dockerplugin" 2>/dev/null || true
	$podman rm --all --force --time 0 >/dev/null 2>&1 || true
	$podman rmi --all --force >/dev/null 2>&1 || true
	$nvictl lab down >/dev/null 2>&1 || true
	rm -rf "$pcap" "$orch"
}
trap cleanup EXIT

$nvictl lab down >/dev/null 2>&1 || true # a previous tour's leftovers

bold "A cloud of three servers: each a network namespace with its own ovsdb-server,"
echo "   ovs-vswitchd (userspace datapath) and nvid. The lab makes its own CA; each server enrolls"
echo "   with a single-use token and gets a certificate that names it; etcd (mutual TLS, roles)"
echo "   listens on a management network that no workload can reach"
run $nvictl lab up --servers 3 --idle-timeout 15s
run $nvictl servers

bold "One tenant, two networks, five workloads on three servers"
run $nvictl net create acme/web --cidr 10.1.0.0/24
run $nvictl net create acme/db --cidr 10.2.0.0/24
run $nvictl lab workload add web1 --server s1 --net acme/web --ip 10.1.0.11
run $nvictl lab workload add web2 --server s2 --net acme/web --ip 10.1.0.12
run $nvictl lab workload add web3 --server s3 --net acme/web --ip 10.1.0.13
run $nvictl lab workload add web4 --server s1 --net acme/web --ip 10.1.0.14
run $nvictl lab workload add db1 --server s2 --net acme/db
run $nvictl endpoint list

bold "Record everything the underlay carries"
ip netns exec nvi-underlay tcpdump -i any -y LINUX_SLL -nn -U -s 96 -w "$pcap" 2>/dev/null &
capture=$!
sleep 1

bold "UDP: the very first datagram to a server never contacted arrives"
ip netns exec web3 nc -u -l -W 1 5000 >/tmp/nvi-tour-udp &
sleep 0.5
run sh -c "echo 'hello over UDP' | ip netns exec web1 nc -u -w 1 10.1.0.13 5000"
sleep 0.5
echo "web3 received: $(cat /tmp/nvi-tour-udp)"; rm -f /tmp/nvi-tour-udp

bold "ICMP across servers, and a 1500-byte packet with don't-fragment set"
run ip netns exec web1 ping -c 3 -i 0.2 10.1.0.12
run ip netns exec web2 ping -c 2 -i 0.2 -M do -s 1472 10.1.0.13

bold "TCP across servers: 20 connections from web1 to web2:8080"
ip netns exec web2 nc -lk 8080 >/dev/null &
server=$!
sleep 0.5
for i in $(seq 1 20); do echo "request $i" | ip netns exec web1 nc -N -w 2 10.1.0.12 8080; done
kill $server 2>/dev/null || true
echo "20 connections done"

bold "Same server: web1 and web4 on s1 (only MACs are rewritten)"
run ip netns exec web4 ping -c 2 -i 0.2 10.1.0.11

bold "Different networks are isolated: web1 cannot reach db1"
db1=$($nvictl endpoint list --net acme/db -o json | sed -n 's/.*"ip": "\(.*\)".*/\1/p' | head -1)
if ip netns exec web1 ping -c 2 -W 1 "$db1" >/dev/null; then echo "UNEXPECTED: web1 reached db1"; else echo "web1 -> db1 ($db1): no answer, as policy says"; fi

bold "Policy: allow web to reach db with ICMP only, and see it apply at once"
run $nvictl rule add acme --allow --from net:web --to net:db --port icmp
run ip netns exec web1 ping -c 2 -i 0.2 "$db1"
run $nvictl policy show acme

bold "Outside: egress with the server's address, and a port exposed on a server"
run ip netns exec web1 ping -c 2 -i 0.2 203.0.113.2
ip netns exec web2 sh -c 'echo "hello from web2" | nc -l 80' >/dev/null &
sleep 0.3
run $nvictl expose acme/web2 --port tcp/8080:80
run sh -c "ip netns exec nvi-internet nc -w 2 198.18.0.2 8080 </dev/null"

bold "Trust: a workload reaches no agent, no directory and no key; only certificates speak for servers"
if ip netns exec web1 curl -s -m 2 -o /dev/null http://198.18.0.2:7470/ ; then echo "UNEXPECTED: web1 reached s2's peer API"; else echo "web1 -> s2's peer API (198.18.0.2:7470): dropped"; fi
if ip netns exec web1 curl -s -m 2 -o /dev/null https://198.19.0.254:2379/ ; then echo "UNEXPECTED: web1 reached the directory"; else echo "web1 -> the directory (198.19.0.254:2379): unreachable"; fi
if ip netns exec nvi-internet curl -sk -m 2 -o /dev/null https://198.18.0.2:7470/ ; then echo "UNEXPECTED: the internet got an answer"; else echo "the internet -> s2's peer API without a certificate: refused by TLS"; fi
run openssl x509 -noout -subject -enddate -in /run/nvi/s1/identity/cert.pem

bold "Four orchestrators, one network: Podman on s1 (CNI), Docker on s2 (libnetwork), a VM on s3 (libvirt-style tap)"
mkdir -p "$orch/plugins" "$orch/net.d" "$orch/rootfs/bin"
ln -s "$PWD/bin/nvi-cni" "$orch/plugins/nvi-cni"
cat >"$orch/net.d/tour-web.conflist" <<JSON
{"cniVersion":"1.0.0","name":"tour-web","plugins":[{"type":"nvi-cni","tenant":"acme","network":"web",
 "socket":"/run/nvi/s1/nvid.sock","bridgeNetns":"nvi-s1"}]}
JSON
cat >"$CONTAINERS_CONF" <<CONF
[network]
network_backend = "cni"
cni_plugin_dirs = ["$orch/plugins"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$orch/events.log"
CONF
cp /bin/busybox "$orch/rootfs/bin/" && for a in sh ping sleep ip; do ln -s busybox "$orch/rootfs/bin/$a"; done
tar -C "$orch/rootfs" -cf "$orch/rootfs.tar" .
$podman import "$orch/rootfs.tar" localhost/nvi-busybox:tour >/dev/null
docker import "$orch/rootfs.tar" nvi-busybox:tour >/dev/null
run $nvictl ca issue-plugin docker-s2 --out "$orch/docker-cred"
./bin/nvi-docker --socket /run/docker/plugins/nvitour.sock --agent /run/nvi/s2/nvid.sock \
	--etcd unixs:///run/nvi/etcd.sock --etcd-identity "$orch/docker-cred" --bridge-netns nvi-s2 2>"$orch/nvi-docker.log" &
dockerplugin=$!
sleep 1
run $podman run -d --name tour-podman --network tour-web --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
	localhost/nvi-busybox:tour sleep 600
run docker network create -d nvitour --ipam-driver nvitour -o nvi.network=acme/web --ipam-opt nvi.network=acme/web tour-web
run docker run -d --name tour-docker --network tour-web nvi-busybox:tour sleep 600
run $nvictl lab vm add vm1 --server s3 --net acme/web
podip=$($podman inspect --format '{{(index .NetworkSettings.Networks "tour-web").IPAddress}}' tour-podman)
dockip=$(docker inspect --format '{{(index .NetworkSettings.Networks "tour-web").IPAddress}}' tour-docker)
vmip=$($nvictl endpoint list --tenant acme -o json | sed -n '/"name": "vm1"/,/"ip"/s/.*"ip": "\(.*\)".*/\1/p')
echo "podman container $podip on s1, docker container $dockip on s2, VM $vmip on s3, web1 10.1.0.11 on s1"
run $podman exec tour-podman ping -c 1 -W 2 "$dockip"
run docker exec tour-docker ping -c 1 -W 2 "$vmip"
run ip netns exec vm1 ping -c 1 -W 2 "$podip"
run ip netns exec web1 ping -c 1 -W 2 "$dockip"
run $nvictl endpoint list --tenant acme

bold "Live sessions: 20 TCP connections made one session; ICMP is keyed by echo id"
run $nvictl sessions --server s1
run $nvictl sessions --server s2

bold "The flows of s1's bridge, as ovs-ofctl shows them (cookie 0x3...: sessions)"
ovs-ofctl -O OpenFlow13 --names dump-flows unix:/run/nvi/s1/br-nvi.mgmt cookie=0x3000000000000000/0xf000000000000000 | sed -E 's/ *duration=[^,]*,//; s/n_bytes=[^,]*, //'

bold "What the underlay carried"
kill -INT $capture; wait $capture 2>/dev/null || true; capture=""
echo "a sample of session traffic (directory and agent API traffic left out):"
run sh -c "tcpdump -r $pcap -nn 'ip and not port 2379 and not port 7470' 2>/dev/null | head -12"
total=$(tcpdump -r "$pcap" -nn 2>/dev/null | wc -l)
workload=$(tcpdump -r "$pcap" -nn 'net 10.0.0.0/8' 2>/dev/null | wc -l)  # the internet host is not a workload
tunnels=$(tcpdump -r "$pcap" -nn 'udp port 4789 or udp port 6081 or ip proto 47 or ip proto 4' 2>/dev/null | wc -l)
full=$(tcpdump -r "$pcap" -nn -v 'ip[2:2] = 1500' 2>/dev/null | grep -c 'length 1500' || true)
echo "packets: $total; naming a workload address: $workload; VXLAN/Geneve/GRE/IP-in-IP: $tunnels; 1500-byte IP packets: $full"

bold "Idle sessions expire, at both ends together (idle timeout 15s)"
sleep 20
run $nvictl sessions --server s1
run $nvictl sessions --server s2

bold "Taking the lab down"
run $nvictl lab down
echo "Tour done."
