package openflow

import (
	"fmt"
	"net"
)

// Port config bits (ofp_port_config).
const (
	PortConfigDown       uint32 = 1 << 0
	PortConfigNoRecv     uint32 = 1 << 2
	PortConfigNoFwd      uint32 = 1 << 5
	PortConfigNoPacketIn uint32 = 1 << 6
)

// Port state bits (ofp_port_state).
const (
	PortStateLinkDown uint32 = 1 << 0
	PortStateBlocked  uint32 = 1 << 1
	PortStateLive     uint32 = 1 << 2
)

// Port-status reasons (ofp_port_reason).
const (
	PortReasonAdd    uint8 = 0
	PortReasonDelete uint8 = 1
	PortReasonModify uint8 = 2
)

// portLen is sizeof(struct ofp_port).
const portLen = 64

// Port describes a switch port (ofp_port).
type Port struct {
	PortNo                            uint32
	HWAddr                            net.HardwareAddr
	Name                              string
	Config, State                     uint32
	Curr, Advertised, Supported, Peer uint32
	CurrSpeed, MaxSpeed               uint32
}

func appendHW(b []byte, a net.HardwareAddr) ([]byte, error) {
	if a != nil && len(a) != 6 {
		return b, fmt.Errorf("%w: hardware address %v is not 6 bytes", ErrInvalid, a)
	}
	var v [6]byte
	copy(v[:], a)
	return append(b, v[:]...), nil
}

func (p Port) appendTo(b []byte) ([]byte, error) {
	b = pad(put32(b, p.PortNo), 4)
	b, err := appendHW(b, p.HWAddr)
	if err != nil {
		return b, err
	}
	b = pad(b, 2)
	if b, err = putFixedString(b, p.Name, 16, "port name"); err != nil {
		return b, err
	}
	for _, v := range [...]uint32{p.Config, p.State, p.Curr, p.Advertised, p.Supported, p.Peer, p.CurrSpeed, p.MaxSpeed} {
		b = put32(b, v)
	}
	return b, nil
}

func readPort(r *reader) Port {
	p := Port{PortNo: r.u32()}
	r.skip(4)
	p.HWAddr = net.HardwareAddr(r.copyBytes(6))
	r.skip(2)
	p.Name = fixedString(r.take(16))
	p.Config, p.State = r.u32(), r.u32()
	p.Curr, p.Advertised, p.Supported, p.Peer = r.u32(), r.u32(), r.u32(), r.u32()
	p.CurrSpeed, p.MaxSpeed = r.u32(), r.u32()
	return p
}

func (p Port) String() string {
	return fmt.Sprintf("%s(%s): addr:%s config=%#x state=%#x speed=%d/%d kbps", PortString(p.PortNo), p.Name, p.HWAddr, p.Config, p.State, p.CurrSpeed, p.MaxSpeed)
}

// PortStatus reports a port added, removed or changed.
type PortStatus struct {
	Reason uint8
	Port   Port
}

func (PortStatus) Type() MsgType { return TypePortStatus }
func (m PortStatus) appendBody(b []byte) ([]byte, error) {
	return m.Port.appendTo(pad(put8(b, m.Reason), 7))
}
func (m PortStatus) String() string {
	reasons := []string{"ADD", "DELETE", "MODIFY"}
	reason := fmt.Sprint(m.Reason)
	if int(m.Reason) < len(reasons) {
		reason = reasons[m.Reason]
	}
	return fmt.Sprintf("PORT_STATUS %s %s", reason, m.Port)
}

// PortMod changes a port's configuration bits selected by Mask.
type PortMod struct {
	PortNo    uint32
	HWAddr    net.HardwareAddr
	Config    uint32
	Mask      uint32
	Advertise uint32
}

func (PortMod) Type() MsgType { return TypePortMod }
func (m PortMod) appendBody(b []byte) ([]byte, error) {
	b = pad(put32(b, m.PortNo), 4)
	b, err := appendHW(b, m.HWAddr)
	if err != nil {
		return b, err
	}
	b = pad(b, 2)
	return pad(put32(put32(put32(b, m.Config), m.Mask), m.Advertise), 4), nil
}
func (m PortMod) String() string {
	return fmt.Sprintf("PORT_MOD port=%s addr=%s config=%#x mask=%#x advertise=%#x", PortString(m.PortNo), m.HWAddr, m.Config, m.Mask, m.Advertise)
}

func init() {
	register(TypePortStatus, func(r *reader) (Message, error) {
		m := PortStatus{Reason: r.u8()}
		r.skip(7)
		m.Port = readPort(r)
		return m, r.err
	})
	register(TypePortMod, func(r *reader) (Message, error) {
		m := PortMod{PortNo: r.u32()}
		r.skip(4)
		m.HWAddr = net.HardwareAddr(r.copyBytes(6))
		r.skip(2)
		m.Config, m.Mask, m.Advertise = r.u32(), r.u32(), r.u32()
		r.skip(4)
		return m, r.err
	})
}
