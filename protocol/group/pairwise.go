package group

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Pairwise content types added by groups (SPEC.md, "Group content on a
// pairwise session").
const (
	ContentOp           = 0x04
	ContentSenderKey    = 0x05
	ContentWelcome      = 0x06
	ContentPairReceipts = 0x07

	// MaxPairReceipts bounds the message IDs of one pairwise group
	// receipts message.
	MaxPairReceipts = 256

	// MaxPendingSenderKeys bounds the sender keys a node holds for groups
	// whose welcome has not come yet.
	MaxPendingSenderKeys = 64

	welcomeVersion = 0x01
)

// ErrMalformedContent reports group content of a pairwise message that
// does not decode.
var ErrMalformedContent = errors.New("group: malformed group content")

// IsContent reports whether t is a pairwise content type that groups add.
func IsContent(t uint8) bool { return t >= ContentOp && t <= ContentPairReceipts }

// PairReceipts is the body of a pairwise group receipts message: the
// group, and the IDs of the receiver's messages in it that the sender
// acknowledges.
type PairReceipts struct {
	Group ID
	IDs   [][16]byte
}

// Marshal encodes r: G || n × message ID.
func (r PairReceipts) Marshal() []byte {
	b := make([]byte, 0, len(r.Group)+16*len(r.IDs))
	b = append(b, r.Group[:]...)
	for _, id := range r.IDs {
		b = append(b, id[:]...)
	}
	return b
}

// ParsePairReceipts decodes the body of a pairwise group receipts
// message: a group ID and 1 to MaxPairReceipts message IDs.
func ParsePairReceipts(b []byte) (PairReceipts, error) {
	var r PairReceipts
	if len(b) < len(r.Group)+16 || (len(b)-len(r.Group))%16 != 0 || (len(b)-len(r.Group))/16 > MaxPairReceipts {
		return PairReceipts{}, fmt.Errorf("%w: receipts of %d bytes (a group ID, then 1 to %d message IDs of 16 bytes)", ErrMalformedContent, len(b), MaxPairReceipts)
	}
	r.Group = ID(b[:len(r.Group)])
	for rest := b[len(r.Group):]; len(rest) > 0; rest = rest[16:] {
		r.IDs = append(r.IDs, [16]byte(rest[:16]))
	}
	return r, nil
}

// OpMessage is the body of a pairwise group operation: the operation, and
// the new group secret when the receiver is to know it.
type OpMessage struct {
	Op        *Op
	Secret    Secret
	HasSecret bool
}

// Marshal encodes m: uint16be(len(op)) || op || secret (or none).
func (m OpMessage) Marshal() []byte {
	op := m.Op.Bytes()
	b := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(op)+SecretSize), uint16(len(op)))
	b = append(b, op...)
	if m.HasSecret {
		b = append(b, m.Secret[:]...)
	}
	return b
}

// ParseOpMessage decodes the body of a pairwise group operation and
// checks the operation's signature, and that a secret matches the
// operation's commitment.
func ParseOpMessage(b []byte) (OpMessage, error) {
	op, rest, err := takeOp(b)
	if err != nil {
		return OpMessage{}, err
	}
	m := OpMessage{Op: op}
	switch len(rest) {
	case 0:
	case SecretSize:
		m.Secret, m.HasSecret = Secret(rest), true
		if !carriesSecret(op.Type) || m.Secret.Commit() != op.Commit {
			return OpMessage{}, fmt.Errorf("%w: a secret the operation does not commit to", ErrMalformedContent)
		}
	default:
		return OpMessage{}, fmt.Errorf("%w: %d bytes after the operation", ErrMalformedContent, len(rest))
	}
	return m, nil
}

func carriesSecret(t OpType) bool { return t == OpCreate || t == OpRemove || t == OpRekey }

// takeOp decodes uint16be(len) || op from the front of b.
func takeOp(b []byte) (*Op, []byte, error) {
	if len(b) < 2 {
		return nil, nil, fmt.Errorf("%w: no operation length", ErrMalformedContent)
	}
	n := int(binary.BigEndian.Uint16(b))
	if n > MaxOpSize || len(b) < 2+n {
		return nil, nil, fmt.Errorf("%w: operation of %d bytes in %d", ErrMalformedContent, n, len(b)-2)
	}
	op, err := ParseOp(b[2 : 2+n])
	if err != nil {
		return nil, nil, err
	}
	return op, b[2+n:], nil
}

// Welcome is what the admin who adds an account sends it: the group, its
// current secret and the operations the admin holds, parents first.
// Member cards are reserved (SPEC.md): none are sent, and those received
// are skipped.
type Welcome struct {
	Group  ID
	Secret Secret
	Ops    []*Op
}

// Marshal encodes w.
func (w Welcome) Marshal() []byte {
	b := append([]byte{welcomeVersion}, w.Group[:]...)
	b = append(b, w.Secret[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(w.Ops)))
	for _, o := range w.Ops {
		b = binary.BigEndian.AppendUint16(b, uint16(len(o.Bytes())))
		b = append(b, o.Bytes()...)
	}
	return binary.BigEndian.AppendUint16(b, 0) // no member cards
}

// ParseWelcome decodes a welcome; every operation's signature is checked
// and names the welcome's group. Whether they make a group the receiver
// is in is the Tree's question.
func ParseWelcome(b []byte) (Welcome, error) {
	if len(b) < 1+IDSize+SecretSize+2 || b[0] != welcomeVersion {
		return Welcome{}, fmt.Errorf("%w: welcome of %d bytes or another version", ErrMalformedContent, len(b))
	}
	var w Welcome
	copy(w.Group[:], b[1:])
	copy(w.Secret[:], b[1+IDSize:])
	p := b[1+IDSize+SecretSize:]
	n := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	if n == 0 || n > MaxGroupOps {
		return Welcome{}, fmt.Errorf("%w: welcome with %d operations", ErrMalformedContent, n)
	}
	for range n {
		op, rest, err := takeOp(p)
		if err != nil {
			return Welcome{}, err
		}
		if op.Group != w.Group {
			return Welcome{}, fmt.Errorf("%w: an operation of another group", ErrMalformedContent)
		}
		w.Ops, p = append(w.Ops, op), rest
	}
	if len(p) < 2 {
		return Welcome{}, fmt.Errorf("%w: no member card count", ErrMalformedContent)
	}
	m := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	for range m {
		if len(p) < 2 || len(p) < 2+int(binary.BigEndian.Uint16(p)) {
			return Welcome{}, fmt.Errorf("%w: member card", ErrMalformedContent)
		}
		p = p[2+int(binary.BigEndian.Uint16(p)):]
	}
	if len(p) != 0 {
		return Welcome{}, fmt.Errorf("%w: %d bytes after the welcome", ErrMalformedContent, len(p))
	}
	return w, nil
}
