package openflow

import (
	"fmt"
	"strings"
)

// Meter-mod commands (ofp_meter_mod_command).
const (
	MeterAdd    uint16 = 0
	MeterModify uint16 = 1
	MeterDelete uint16 = 2
)

// Meter flags (ofp_meter_flags).
const (
	MeterFlagKbps  uint16 = 1 << 0
	MeterFlagPktps uint16 = 1 << 1
	MeterFlagBurst uint16 = 1 << 2
	MeterFlagStats uint16 = 1 << 3
)

// Meter band types (ofp_meter_band_type).
const (
	MeterBandTypeDrop         uint16 = 1
	MeterBandTypeDSCPRemark   uint16 = 2
	MeterBandTypeExperimenter uint16 = 0xffff
)

// MeterBand is one band of a meter.
type MeterBand interface {
	BandType() uint16
	String() string
	appendBody(b []byte) ([]byte, error) // after type and len
}

// MeterBandDrop drops packets above Rate (kb/s or packets/s per the
// meter's flags).
type MeterBandDrop struct{ Rate, BurstSize uint32 }

func (MeterBandDrop) BandType() uint16 { return MeterBandTypeDrop }
func (m MeterBandDrop) appendBody(b []byte) ([]byte, error) {
	return pad(put32(put32(b, m.Rate), m.BurstSize), 4), nil
}
func (m MeterBandDrop) String() string {
	return fmt.Sprintf("type=drop rate=%d burst_size=%d", m.Rate, m.BurstSize)
}

// MeterBandDSCPRemark raises the drop precedence above Rate.
type MeterBandDSCPRemark struct {
	Rate, BurstSize uint32
	PrecLevel       uint8
}

func (MeterBandDSCPRemark) BandType() uint16 { return MeterBandTypeDSCPRemark }
func (m MeterBandDSCPRemark) appendBody(b []byte) ([]byte, error) {
	return pad(put8(put32(put32(b, m.Rate), m.BurstSize), m.PrecLevel), 3), nil
}
func (m MeterBandDSCPRemark) String() string {
	return fmt.Sprintf("type=dscp_remark rate=%d burst_size=%d prec_level=%d", m.Rate, m.BurstSize, m.PrecLevel)
}

// MeterBandExperimenter is an experimenter band; Data follows the
// experimenter ID.
type MeterBandExperimenter struct {
	Rate, BurstSize uint32
	Experimenter    uint32
	Data            []byte
}

func (MeterBandExperimenter) BandType() uint16 { return MeterBandTypeExperimenter }
func (m MeterBandExperimenter) appendBody(b []byte) ([]byte, error) {
	return append(put32(put32(put32(b, m.Rate), m.BurstSize), m.Experimenter), m.Data...), nil
}
func (m MeterBandExperimenter) String() string {
	return fmt.Sprintf("type=experimenter rate=%d burst_size=%d experimenter=%#x", m.Rate, m.BurstSize, m.Experimenter)
}

func appendBands(b []byte, bands []MeterBand) ([]byte, error) {
	for i, band := range bands {
		if band == nil {
			return b, fmt.Errorf("%w: meter band %d is nil", ErrInvalid, i)
		}
		start := len(b)
		b = put16(put16(b, band.BandType()), 0)
		var err error
		if b, err = band.appendBody(b); err != nil {
			return b, err
		}
		if err := patch16(b, start+2, len(b)-start); err != nil {
			return b, fmt.Errorf("meter band %d: %w", i, err)
		}
	}
	return b, nil
}

func readBands(ctx string, data []byte) ([]MeterBand, error) {
	r := newReader(ctx, data)
	var bands []MeterBand
	for r.remaining() > 0 {
		typ, n := r.u16(), int(r.u16())
		if r.err != nil {
			return nil, r.err
		}
		if n < 16 {
			return nil, fmt.Errorf("%w: %s: meter band length %d shorter than 16", ErrMalformed, ctx, n)
		}
		br := newReader(ctx+": meter band", r.take(n-4))
		if r.err != nil {
			return nil, fmt.Errorf("%w: %s: meter band length %d exceeds its container", ErrMalformed, ctx, n)
		}
		rate, burst := br.u32(), br.u32()
		var band MeterBand
		switch typ {
		case MeterBandTypeDrop:
			br.skip(4)
			band = MeterBandDrop{Rate: rate, BurstSize: burst}
		case MeterBandTypeDSCPRemark:
			band = MeterBandDSCPRemark{Rate: rate, BurstSize: burst, PrecLevel: br.u8()}
			br.skip(3)
		case MeterBandTypeExperimenter:
			band = MeterBandExperimenter{Rate: rate, BurstSize: burst, Experimenter: br.u32(), Data: br.rest()}
		default:
			return nil, fmt.Errorf("%w: %s: meter band type %d", ErrUnsupported, ctx, typ)
		}
		if err := br.done(); err != nil {
			return nil, err
		}
		bands = append(bands, band)
	}
	return bands, nil
}

func bandsString(bands []MeterBand) string {
	s := make([]string, len(bands))
	for i, b := range bands {
		s[i] = b.String()
	}
	return strings.Join(s, " ")
}

func meterFlagsString(f uint16) string {
	var s []string
	for _, x := range []struct {
		bit  uint16
		name string
	}{{MeterFlagKbps, "kbps"}, {MeterFlagPktps, "pktps"}, {MeterFlagBurst, "burst"}, {MeterFlagStats, "stats"}} {
		if f&x.bit != 0 {
			s = append(s, x.name)
		}
	}
	return strings.Join(s, " ")
}

// MeterMod adds, modifies or deletes a meter.
type MeterMod struct {
	Command uint16
	Flags   uint16
	MeterID uint32
	Bands   []MeterBand
}

func (MeterMod) Type() MsgType { return TypeMeterMod }
func (m MeterMod) appendBody(b []byte) ([]byte, error) {
	return appendBands(put32(put16(put16(b, m.Command), m.Flags), m.MeterID), m.Bands)
}
func (m MeterMod) String() string {
	cmds := []string{"ADD", "MOD", "DEL"}
	cmd := fmt.Sprint(m.Command)
	if int(m.Command) < len(cmds) {
		cmd = cmds[m.Command]
	}
	return fmt.Sprintf("METER_MOD %s meter=%d %s bands=%s", cmd, m.MeterID, meterFlagsString(m.Flags), bandsString(m.Bands))
}

func init() {
	register(TypeMeterMod, func(r *reader) (Message, error) {
		m := MeterMod{Command: r.u16(), Flags: r.u16(), MeterID: r.u32()}
		if r.err != nil {
			return nil, r.err
		}
		var err error
		m.Bands, err = readBands("meter_mod", r.take(r.remaining()))
		return m, err
	})
}
