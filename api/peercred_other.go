//go:build !linux

package api

import (
	"errors"
	"net"
)

func peerCred(net.Conn) (PeerCred, error) {
	return PeerCred{}, errors.New("peer credentials can only be read on Linux")
}
