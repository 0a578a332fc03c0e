package openflow

import (
	"fmt"
	"strings"
)

// Instruction types (ofp_instruction_type).
const (
	InstGotoTable     uint16 = 1
	InstWriteMetadata uint16 = 2
	InstWriteActions  uint16 = 3
	InstApplyActions  uint16 = 4
	InstClearActions  uint16 = 5
	InstMeter         uint16 = 6
	InstExperimenter  uint16 = 0xffff
)

// Instruction is one flow instruction (ofp_instruction).
type Instruction interface {
	InstructionType() uint16
	String() string
	appendBody(b []byte) ([]byte, error)
}

// InstructionGotoTable continues processing in a later table.
type InstructionGotoTable struct{ TableID uint8 }

func (InstructionGotoTable) InstructionType() uint16 { return InstGotoTable }
func (i InstructionGotoTable) appendBody(b []byte) ([]byte, error) {
	return pad(put8(b, i.TableID), 3), nil
}
func (i InstructionGotoTable) String() string { return fmt.Sprintf("goto_table:%d", i.TableID) }

// InstructionWriteMetadata writes the metadata bits set in Mask.
type InstructionWriteMetadata struct{ Metadata, Mask uint64 }

func (InstructionWriteMetadata) InstructionType() uint16 { return InstWriteMetadata }
func (i InstructionWriteMetadata) appendBody(b []byte) ([]byte, error) {
	return put64(put64(pad(b, 4), i.Metadata), i.Mask), nil
}
func (i InstructionWriteMetadata) String() string {
	if i.Mask == ^uint64(0) {
		return fmt.Sprintf("write_metadata:%#x", i.Metadata)
	}
	return fmt.Sprintf("write_metadata:%#x/%#x", i.Metadata, i.Mask)
}

// InstructionWriteActions merges actions into the action set.
type InstructionWriteActions struct{ Actions []Action }

func (InstructionWriteActions) InstructionType() uint16 { return InstWriteActions }
func (i InstructionWriteActions) appendBody(b []byte) ([]byte, error) {
	return appendActions(pad(b, 4), i.Actions)
}
func (i InstructionWriteActions) String() string {
	return "write_actions(" + ActionsString(i.Actions) + ")"
}

// InstructionApplyActions applies actions immediately.
type InstructionApplyActions struct{ Actions []Action }

func (InstructionApplyActions) InstructionType() uint16 { return InstApplyActions }
func (i InstructionApplyActions) appendBody(b []byte) ([]byte, error) {
	return appendActions(pad(b, 4), i.Actions)
}

// String prints the actions bare, as ovs-ofctl does for apply-actions.
func (i InstructionApplyActions) String() string { return ActionsString(i.Actions) }

// InstructionClearActions clears the action set.
type InstructionClearActions struct{}

func (InstructionClearActions) InstructionType() uint16             { return InstClearActions }
func (InstructionClearActions) appendBody(b []byte) ([]byte, error) { return pad(b, 4), nil }
func (InstructionClearActions) String() string                      { return "clear_actions" }

// InstructionMeter sends the packet through a meter.
type InstructionMeter struct{ MeterID uint32 }

func (InstructionMeter) InstructionType() uint16 { return InstMeter }
func (i InstructionMeter) appendBody(b []byte) ([]byte, error) {
	return put32(b, i.MeterID), nil
}
func (i InstructionMeter) String() string { return fmt.Sprintf("meter:%d", i.MeterID) }

// InstructionExperimenter is an experimenter instruction kept raw; Data
// follows the experimenter ID and must keep the length a multiple of 8.
type InstructionExperimenter struct {
	Experimenter uint32
	Data         []byte
}

func (InstructionExperimenter) InstructionType() uint16 { return InstExperimenter }
func (i InstructionExperimenter) appendBody(b []byte) ([]byte, error) {
	return append(put32(b, i.Experimenter), i.Data...), nil
}
func (i InstructionExperimenter) String() string {
	return fmt.Sprintf("experimenter(%#x,0x%x)", i.Experimenter, i.Data)
}

// appendInstructions encodes instructions, each with its header.
func appendInstructions(b []byte, insts []Instruction) ([]byte, error) {
	return appendTLVs(b, "instruction", insts, Instruction.InstructionType, Instruction.appendBody)
}

// readInstructions decodes instructions until data is used up.
func readInstructions(ctx string, data []byte) ([]Instruction, error) {
	return readTLVs(ctx, "instruction", data, decodeInstruction)
}

func decodeInstruction(ctx string, typ uint16, body []byte) (Instruction, error) {
	ictx := fmt.Sprintf("%s: instruction type %d", ctx, typ)
	r := newReader(ictx, body)
	var in Instruction
	switch typ {
	case InstGotoTable:
		in = InstructionGotoTable{TableID: r.u8()}
		r.skip(3)
	case InstWriteMetadata:
		r.skip(4)
		in = InstructionWriteMetadata{Metadata: r.u64(), Mask: r.u64()}
	case InstWriteActions, InstApplyActions:
		r.skip(4)
		acts, err := readActions(ictx, r.take(r.remaining()))
		if err != nil {
			return nil, err
		}
		if typ == InstWriteActions {
			in = InstructionWriteActions{Actions: acts}
		} else {
			in = InstructionApplyActions{Actions: acts}
		}
	case InstClearActions:
		r.skip(4)
		in = InstructionClearActions{}
	case InstMeter:
		in = InstructionMeter{MeterID: r.u32()}
	case InstExperimenter:
		in = InstructionExperimenter{Experimenter: r.u32(), Data: r.rest()}
	default:
		return nil, fmt.Errorf("%w: %s", ErrUnsupported, ictx)
	}
	if err := r.done(); err != nil {
		return nil, err
	}
	return in, nil
}

// InstructionsString prints instructions as ovs-ofctl prints a flow's
// actions: apply-actions bare, the others by name; none prints "drop".
func InstructionsString(insts []Instruction) string {
	if len(insts) == 0 {
		return "drop"
	}
	s := make([]string, 0, len(insts))
	for _, in := range insts {
		if a, ok := in.(InstructionApplyActions); ok && len(a.Actions) == 0 {
			continue
		}
		s = append(s, in.String())
	}
	if len(s) == 0 {
		return "drop"
	}
	return strings.Join(s, ",")
}
