//go:build !linux

package agent

import "errors"

func ifaceDriver(string) (string, error) {
	return "", errors.New("interface drivers can only be read on Linux")
}
