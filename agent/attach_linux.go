package agent

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// ifaceDriver is the kernel driver of interface name (ethtool -i).
func ifaceDriver(name string) (string, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	info, err := unix.IoctlGetEthtoolDrvinfo(fd, name)
	if err != nil {
		return "", fmt.Errorf("ethtool: %w", err)
	}
	return unix.ByteSliceToString(info.Driver[:]), nil
}
