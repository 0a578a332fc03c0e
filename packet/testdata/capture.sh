#!/bin/bash
# Regenerates capture.pcap (see README) in throwaway network namespaces on
# this machine only; needs root, iproute2, ethtool, tcpdump, ping, nc, python3.
# Frame numbers, identifiers and ports change with each run: update
# capture_test.go's expectations from `tcpdump -r capture.pcap -nn -vv -e`.
set -eu
out=$(realpath "${1:-capture.pcap}")
ns="pk-h1 pk-r pk-h2"
cleanup() { for n in $ns; do ip netns del $n 2>/dev/null || true; done; }
trap cleanup EXIT
cleanup
for n in $ns; do ip netns add $n; ip -n $n link set lo up; done
ip link add pk1 netns pk-h1 type veth peer name pk1r netns pk-r
ip link add pk2 netns pk-h2 type veth peer name pk2r netns pk-r
ip -n pk-h1 addr add 192.0.2.10/24 dev pk1
ip -n pk-r addr add 192.0.2.1/24 dev pk1r
ip -n pk-r addr add 198.51.100.1/24 dev pk2r
ip -n pk-h2 addr add 198.51.100.20/24 dev pk2
ip -n pk-r link set pk2r mtu 1400
ip -n pk-h2 link set pk2 mtu 1400
for p in "pk-h1 pk1" "pk-r pk1r" "pk-r pk2r" "pk-h2 pk2"; do
	set -- $p
	ip -n $1 link set $2 up
	ip netns exec $1 ethtool -K $2 tx off rx off >/dev/null # Linux's own checksums on the wire
done
ip -n pk-h1 route add default via 192.0.2.1
ip -n pk-h2 route add default via 198.51.100.1
ip netns exec pk-r sysctl -qw net.ipv4.ip_forward=1

X1="ip netns exec pk-h1" X2="ip netns exec pk-h2"
sendttl() { # proto dst port ttl payload
	$X1 python3 - "$@" <<'PY'
import socket, sys
proto, dst, port, ttl, data = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5].encode()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
s.settimeout(0.5)
try:
    s.sendto(data, (dst, port)) if proto == "udp" else s.connect((dst, port))
except OSError:
    pass
PY
}
$X1 timeout 30 tcpdump -i pk1 -s 0 -U -w "$out" not ip6 2>/dev/null &
td=$!
sleep 1
$X1 ping -c1 -W1 198.51.100.20 >/dev/null
$X1 ping -c1 -W1 -t1 198.51.100.20 >/dev/null || true
$X1 ping -c1 -W1 -R 198.51.100.20 >/dev/null
$X1 ping -c1 -W1 -M do -s 1450 198.51.100.20 >/dev/null || true
$X1 ping -c1 -W1 -M dont -s 2000 192.0.2.1 >/dev/null
sendttl udp 198.51.100.20 33434 1 hello-ttl
sendttl udp 198.51.100.20 9 64 closed-port
$X2 timeout 5 nc -l -p 8080 >/dev/null &
nc=$!
sleep 0.5
echo "hello over tcp" | $X1 timeout 3 nc -q1 198.51.100.20 8080
wait $nc || true
$X1 timeout 2 nc -z 198.51.100.20 8081 || true
sendttl tcp 198.51.100.20 8082 1 ""
sleep 1
kill $td
wait $td || true
