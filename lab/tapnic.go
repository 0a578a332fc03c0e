package lab

import (
	"fmt"
	"net"
	"os/exec"
	"syscall"
	"unsafe"
)

// A lab VM is what QEMU and libvirt make of a guest, minus the guest's
// kernel: a tap device on the server's bridge, plugged and labelled the way
// libvirt plugs one, and a process that owns the tap's file descriptor and
// moves frames between it and the guest's NIC — here a veth whose other end
// is in the VM's network namespace, so ordinary tools run "in the guest".

// RunTapNIC opens the tap named tap (creating it in this process's network
// namespace, as QEMU does with its tap backend) and relays frames between
// it and the interface veth until killed.
func RunTapNIC(tap, veth string) error {
	fd, err := syscall.Open("/dev/net/tun", syscall.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open /dev/net/tun: %w", err)
	}
	var ifr [40]byte // struct ifreq: name[16], flags short, padding
	copy(ifr[:15], tap)
	*(*uint16)(unsafe.Pointer(&ifr[16])) = syscall.IFF_TAP | syscall.IFF_NO_PI
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TUNSETIFF, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		return fmt.Errorf("TUNSETIFF %s: %w", tap, e)
	}
	if out, err := exec.Command("ip", "link", "set", tap, "up").CombinedOutput(); err != nil {
		return fmt.Errorf("ip link set %s up: %v: %s", tap, err, out)
	}
	ifi, err := net.InterfaceByName(veth)
	if err != nil {
		return err
	}
	const ethPAll = 0x0003
	htons := func(v uint16) uint16 { return v<<8 | v>>8 }
	ps, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, int(htons(ethPAll)))
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	if err := syscall.Bind(ps, &syscall.SockaddrLinklayer{Protocol: htons(ethPAll), Ifindex: ifi.Index}); err != nil {
		return fmt.Errorf("bind to %s: %w", veth, err)
	}
	fmt.Println("ready")
	errc := make(chan error, 2)
	go func() { // bridge -> guest
		buf := make([]byte, 65536)
		for {
			n, err := syscall.Read(fd, buf)
			if err != nil {
				errc <- err
				return
			}
			if err := syscall.Sendto(ps, buf[:n], 0, &syscall.SockaddrLinklayer{Ifindex: ifi.Index}); err != nil {
				errc <- err
				return
			}
		}
	}()
	go func() { // guest -> bridge
		buf := make([]byte, 65536)
		for {
			n, from, err := syscall.Recvfrom(ps, buf, 0)
			if err != nil {
				errc <- err
				return
			}
			if ll, ok := from.(*syscall.SockaddrLinklayer); ok && ll.Pkttype == syscall.PACKET_OUTGOING {
				continue // our own writes toward the guest
			}
			if _, err := syscall.Write(fd, buf[:n]); err != nil {
				errc <- err
				return
			}
		}
	}()
	return <-errc
}
