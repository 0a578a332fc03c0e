package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Kernel links: veth pairs across two network namespaces, through netlink
// handles opened in each (no thread of ours changes namespace, except for
// the instant it takes to open the socket for the ethtool ioctl).

// netnsDir is where `ip netns` keeps named namespaces.
const netnsDir = "/run/netns"

// kernelLinks implements Links with netlink.
type kernelLinks struct{}

// openNetns opens a network namespace by path, by `ip netns` name, or ours
// for "". A path that is not (or no longer) a network namespace gives
// errNetnsGone.
func openNetns(ref string) (netns.NsHandle, error) {
	if ref == "" {
		h, err := netns.Get()
		if err != nil {
			return netns.None(), fmt.Errorf("opening our own network namespace: %w", err)
		}
		return h, nil
	}
	path := ref
	if !filepath.IsAbs(path) {
		path = filepath.Join(netnsDir, ref)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return netns.None(), fmt.Errorf("%s: %w", path, errNetnsGone)
		}
		return netns.None(), fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		unix.Close(fd)
		return netns.None(), fmt.Errorf("statfs %s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		unix.Close(fd)
		return netns.None(), fmt.Errorf("%s is not a network namespace (any more): %w", path, errNetnsGone)
	}
	return netns.NsHandle(fd), nil
}

func (kernelLinks) CheckNetns(ref string, notOurs bool) error {
	h, err := openNetns(ref)
	if err != nil {
		return err
	}
	defer h.Close()
	if notOurs {
		own, err := netns.Get()
		if err != nil {
			return fmt.Errorf("opening our own network namespace: %w", err)
		}
		defer own.Close()
		if h.Equal(own) {
			return errOwnNetns
		}
	}
	return nil
}

// handleIn opens a netlink handle in the namespace ref.
func handleIn(ref string) (*netlink.Handle, netns.NsHandle, error) {
	ns, err := openNetns(ref)
	if err != nil {
		return nil, ns, err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, netns.None(), fmt.Errorf("netlink in %s: %w", describeNetns(ref), err)
	}
	return h, ns, nil
}

func describeNetns(ref string) string {
	if ref == "" {
		return "the plugin's network namespace"
	}
	return "network namespace " + ref
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

func (kernelLinks) AddVeth(v Veth) (hostMAC string, err error) {
	ch, cns, err := handleIn(v.ContainerNetns)
	if err != nil {
		return "", err
	}
	defer cns.Close()
	defer ch.Close()
	bh, bns, err := handleIn(v.BridgeNetns)
	if err != nil {
		return "", err
	}
	defer bns.Close()
	defer bh.Close()

	if _, err := ch.LinkByName(v.IfName); err == nil {
		return "", fmt.Errorf("%s: %w", v.IfName, errIfaceExists)
	}
	mac, err := net.ParseMAC(v.MAC)
	if err != nil {
		return "", fmt.Errorf("endpoint MAC %q: %w", v.MAC, err)
	}
	la := netlink.NewLinkAttrs()
	la.Name, la.HardwareAddr = v.IfName, mac
	veth := &netlink.Veth{LinkAttrs: la, PeerName: v.Host, PeerNamespace: netlink.NsFd(int(bns))}
	if err := ch.LinkAdd(veth); err != nil {
		return "", fmt.Errorf("creating veth %s (in the container) / %s (in %s): %w", v.IfName, v.Host, describeNetns(v.BridgeNetns), err)
	}
	defer func() {
		if err != nil { // the pair goes with either end
			if derr := ch.LinkDel(veth); derr != nil && !isNotFound(derr) {
				err = errors.Join(err, fmt.Errorf("removing the half-made veth %s: %w", v.IfName, derr))
			}
		}
	}()
	c, err := ch.LinkByName(v.IfName)
	if err != nil {
		return "", fmt.Errorf("finding %s in the container: %w", v.IfName, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: v.Addr.Addr().AsSlice(), Mask: net.CIDRMask(v.Addr.Bits(), 32)}}
	if err := ch.AddrAdd(c, addr); err != nil {
		return "", fmt.Errorf("adding %s to %s: %w", v.Addr, v.IfName, err)
	}
	if err := ch.LinkSetUp(c); err != nil {
		return "", fmt.Errorf("setting %s up: %w", v.IfName, err)
	}
	if err := ch.RouteAdd(&netlink.Route{LinkIndex: c.Attrs().Index, Gw: v.Gateway.AsSlice()}); err != nil {
		return "", fmt.Errorf("adding the default route via %s: %w", v.Gateway, err)
	}
	if err := setTxChecksum(cns, v.IfName, false); err != nil {
		return "", err
	}
	h, err := bh.LinkByName(v.Host)
	if err != nil {
		return "", fmt.Errorf("finding %s in %s: %w", v.Host, describeNetns(v.BridgeNetns), err)
	}
	if err := setTxChecksum(bns, v.Host, false); err != nil {
		return "", err
	}
	if err := bh.LinkSetUp(h); err != nil {
		return "", fmt.Errorf("setting %s up: %w", v.Host, err)
	}
	return h.Attrs().HardwareAddr.String(), nil
}

func (kernelLinks) DelHost(bridgeNetns, host string) (bool, error) {
	bh, bns, err := handleIn(bridgeNetns)
	if errors.Is(err, errNetnsGone) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer bns.Close()
	defer bh.Close()
	l, err := bh.LinkByName(host)
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("finding %s in %s: %w", host, describeNetns(bridgeNetns), err)
	}
	if err := bh.LinkDel(l); err != nil && !isNotFound(err) {
		return false, fmt.Errorf("deleting %s in %s: %w", host, describeNetns(bridgeNetns), err)
	}
	return true, nil
}

func (kernelLinks) Inspect(netnsRef, ifname string) (LinkState, error) {
	h, ns, err := handleIn(netnsRef)
	if err != nil {
		return LinkState{}, err
	}
	defer ns.Close()
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if isNotFound(err) {
		return LinkState{}, nil
	}
	if err != nil {
		return LinkState{}, fmt.Errorf("finding %s: %w", ifname, err)
	}
	st := LinkState{Exists: true, MAC: l.Attrs().HardwareAddr.String(), Up: l.Attrs().Flags&net.FlagUp != 0}
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return st, fmt.Errorf("listing the addresses of %s: %w", ifname, err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		ones, _ := a.Mask.Size()
		if ok {
			st.Addrs = append(st.Addrs, netip.PrefixFrom(ip, ones))
		}
	}
	routes, err := h.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		return st, fmt.Errorf("listing the routes of %s: %w", ifname, err)
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if gw, ok := netip.AddrFromSlice(r.Gw.To4()); ok {
			st.DefaultGateways = append(st.DefaultGateways, gw)
		}
	}
	if st.TxChecksum, err = txChecksum(ns, ifname); err != nil {
		return st, err
	}
	return st, nil
}

// The ethtool ioctls that read and set a device's transmit checksumming
// (the legacy calls that `ethtool -K DEV tx off` amounts to).
const (
	ethtoolGTXCSUM = 0x16
	ethtoolSTXCSUM = 0x17
)

type ethtoolValue struct{ cmd, data uint32 }

// ifreqData is struct ifreq with ifr_data set.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

func ethtool(ns netns.NsHandle, ifname string, v *ethtoolValue) error {
	fd, err := socketIn(ns)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	req := ifreqData{data: unsafe.Pointer(v)}
	copy(req.name[:unix.IFNAMSIZ-1], ifname)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&req))); errno != 0 {
		return os.NewSyscallError("ioctl SIOCETHTOOL", errno)
	}
	return nil
}

// setTxChecksum turns transmit checksum offload of ifname on or off. Off is
// what veths on Open vSwitch's userspace datapath need: nothing there would
// ever fill in the checksums.
func setTxChecksum(ns netns.NsHandle, ifname string, on bool) error {
	v := ethtoolValue{cmd: ethtoolSTXCSUM}
	if on {
		v.data = 1
	}
	if err := ethtool(ns, ifname, &v); err != nil {
		return fmt.Errorf("turning tx checksum offload of %s off: %w", ifname, err)
	}
	return nil
}

func txChecksum(ns netns.NsHandle, ifname string) (bool, error) {
	v := ethtoolValue{cmd: ethtoolGTXCSUM}
	if err := ethtool(ns, ifname, &v); err != nil {
		return false, fmt.Errorf("reading tx checksum offload of %s: %w", ifname, err)
	}
	return v.data != 0, nil
}

// socketIn opens a datagram socket in namespace ns: ioctls on it act on
// that namespace's devices. The switch happens on a locked thread of a
// goroutine of its own; if the thread cannot be switched back it stays
// locked, and Go ends it with the goroutine.
func socketIn(ns netns.NsHandle) (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, fmt.Errorf("opening our network namespace: %w", err)}
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, fmt.Errorf("entering a network namespace: %w", err)}
			return
		}
		fd, serr := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err := netns.Set(orig); err != nil {
			if serr == nil {
				unix.Close(fd)
			}
			ch <- result{-1, fmt.Errorf("leaving a network namespace: %w", err)}
			return // the thread stays locked and dies with this goroutine
		}
		runtime.UnlockOSThread()
		if serr != nil {
			ch <- result{-1, fmt.Errorf("socket: %w", serr)}
			return
		}
		ch <- result{fd, nil}
	}()
	r := <-ch
	return r.fd, r.err
}
