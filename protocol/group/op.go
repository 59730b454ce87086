package group

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/sotto-im/sotto/keys"
)

// OpType names a membership operation.
type OpType byte

// Operation types (SPEC.md, "Operations").
const (
	OpCreate  OpType = 0x01
	OpAdd     OpType = 0x02
	OpRemove  OpType = 0x03
	OpLeave   OpType = 0x04
	OpRename  OpType = 0x05
	OpPromote OpType = 0x06
	OpRekey   OpType = 0x07
)

func (t OpType) String() string {
	switch t {
	case OpCreate:
		return "create"
	case OpAdd:
		return "add"
	case OpRemove:
		return "remove"
	case OpLeave:
		return "leave"
	case OpRename:
		return "rename"
	case OpPromote:
		return "promote"
	case OpRekey:
		return "rekey"
	}
	return fmt.Sprintf("op-type-%#x", byte(t))
}

// Limits.
const (
	MaxGroupMembers = 256
	MaxNameSize     = 128
	// MaxOpSize bounds an encoded operation: a create naming 255
	// accounts is about 8.4 KiB.
	MaxOpSize = 16 << 10

	opVersion    = 0x01
	opHeaderSize = 1 + IDSize + 32 + 4 + keys.AccountSize + 8 + 1
	maxTime      = 253402300799
)

// Operation errors.
var (
	ErrMalformedOp = errors.New("group: malformed operation")
	ErrOpSignature = errors.New("group: operation signature does not verify")
	ErrNotAllowed  = errors.New("group: the author may not make this operation")
	ErrInvalidOp   = errors.New("group: operation breaks the group's rules")
)

// Op is one signed membership operation. Fields not used by its Type are
// zero.
type Op struct {
	Group    ID
	Parent   [32]byte // OpHash of the operation this one follows; zero for create
	Seq      uint32
	Author   keys.AccountPublic
	Time     time.Time // the author's clock, in seconds
	Type     OpType
	Name     string               // create, rename
	Commit   [32]byte             // create, remove, rekey: the new secret's commitment
	Accounts []keys.AccountPublic // create, add
	Target   keys.AccountPublic   // remove, promote

	sig  [ed25519.SignatureSize]byte
	raw  []byte
	hash [32]byte
}

// Bytes is the operation's encoding, signature included.
func (o *Op) Bytes() []byte { return o.raw }

// Hash is OpHash: SHA-256("sotto/v2/group/op-hash" || encoding).
func (o *Op) Hash() [32]byte { return o.hash }

// NewOp signs o with the author's account key and returns it encoded.
// Author is set from the key; the body must be well formed for its type.
func NewOp(author *keys.AccountPrivate, o Op) (*Op, error) {
	o.Author = author.Public()
	o.Time = time.Unix(o.Time.Unix(), 0)
	body, err := o.appendUnsigned(nil)
	if err != nil {
		return nil, err
	}
	copy(o.sig[:], author.Sign(append([]byte(labelOp), body...)))
	o.raw = append(body, o.sig[:]...)
	o.hash = opHash(o.raw)
	return &o, nil
}

func opHash(raw []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(labelOpHash))
	h.Write(raw)
	return [32]byte(h.Sum(nil))
}

func (o *Op) appendUnsigned(b []byte) ([]byte, error) {
	if t := o.Time.Unix(); t < 0 || t > maxTime {
		return nil, fmt.Errorf("%w: time out of range", ErrMalformedOp)
	}
	b = append(b, opVersion)
	b = append(b, o.Group[:]...)
	b = append(b, o.Parent[:]...)
	b = binary.BigEndian.AppendUint32(b, o.Seq)
	b = append(b, o.Author[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(o.Time.Unix()))
	b = append(b, byte(o.Type))
	appendName := func() error {
		if len(o.Name) == 0 || len(o.Name) > MaxNameSize || !utf8.ValidString(o.Name) {
			return fmt.Errorf("%w: a name is 1 to %d bytes of UTF-8", ErrMalformedOp, MaxNameSize)
		}
		b = append(b, byte(len(o.Name)))
		b = append(b, o.Name...)
		return nil
	}
	appendAccounts := func(min int) error {
		if len(o.Accounts) < min || len(o.Accounts) > MaxGroupMembers-1 {
			return fmt.Errorf("%w: %d accounts (%d to %d)", ErrMalformedOp, len(o.Accounts), min, MaxGroupMembers-1)
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(o.Accounts)))
		for _, a := range o.Accounts {
			b = append(b, a[:]...)
		}
		return nil
	}
	var err error
	switch o.Type {
	case OpCreate:
		if err = appendName(); err == nil {
			b = append(b, o.Commit[:]...)
			err = appendAccounts(0)
		}
	case OpAdd:
		err = appendAccounts(1)
	case OpRemove:
		b = append(b, o.Target[:]...)
		b = append(b, o.Commit[:]...)
	case OpLeave:
	case OpRename:
		err = appendName()
	case OpPromote:
		b = append(b, o.Target[:]...)
	case OpRekey:
		b = append(b, o.Commit[:]...)
	default:
		err = fmt.Errorf("%w: unknown type %#x", ErrMalformedOp, byte(o.Type))
	}
	if err != nil {
		return nil, err
	}
	if len(b)+ed25519.SignatureSize > MaxOpSize {
		return nil, fmt.Errorf("%w: over %d bytes", ErrMalformedOp, MaxOpSize)
	}
	return b, nil
}

// ParseOp decodes an operation and verifies its signature by its author.
// Whether the author may make it is the Tree's question.
func ParseOp(b []byte) (*Op, error) {
	if len(b) > MaxOpSize {
		return nil, fmt.Errorf("%w: over %d bytes", ErrMalformedOp, MaxOpSize)
	}
	if len(b) < opHeaderSize+ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: truncated", ErrMalformedOp)
	}
	if b[0] != opVersion {
		return nil, fmt.Errorf("%w: version %#x", ErrMalformedOp, b[0])
	}
	var o Op
	r := b[1:]
	take := func(n int) []byte {
		if len(r) < n {
			r = nil
			return nil
		}
		v := r[:n]
		r = r[n:]
		return v
	}
	copy(o.Group[:], take(IDSize))
	copy(o.Parent[:], take(32))
	o.Seq = binary.BigEndian.Uint32(take(4))
	copy(o.Author[:], take(keys.AccountSize))
	t := binary.BigEndian.Uint64(take(8))
	if t > maxTime {
		return nil, fmt.Errorf("%w: time out of range", ErrMalformedOp)
	}
	o.Time = time.Unix(int64(t), 0)
	o.Type = OpType(take(1)[0])
	body := r[:len(r)-ed25519.SignatureSize]
	copy(o.sig[:], r[len(r)-ed25519.SignatureSize:])
	r = body
	short := false
	name := func() {
		n := take(1)
		if n == nil || n[0] == 0 {
			short = true
			return
		}
		v := take(int(n[0]))
		if v == nil {
			short = true
			return
		}
		o.Name = string(v)
	}
	accounts := func() {
		n := take(2)
		if n == nil {
			short = true
			return
		}
		count := int(binary.BigEndian.Uint16(n))
		for range count {
			v := take(keys.AccountSize)
			if v == nil {
				short = true
				return
			}
			o.Accounts = append(o.Accounts, keys.AccountPublic(v))
		}
	}
	fixed := func(dst []byte) {
		if v := take(len(dst)); v == nil {
			short = true
		} else {
			copy(dst, v)
		}
	}
	switch o.Type {
	case OpCreate:
		name()
		fixed(o.Commit[:])
		accounts()
	case OpAdd:
		accounts()
	case OpRemove:
		fixed(o.Target[:])
		fixed(o.Commit[:])
	case OpLeave:
	case OpRename:
		name()
	case OpPromote:
		fixed(o.Target[:])
	case OpRekey:
		fixed(o.Commit[:])
	default:
		return nil, fmt.Errorf("%w: unknown type %#x", ErrMalformedOp, byte(o.Type))
	}
	if short {
		return nil, fmt.Errorf("%w: %s body truncated", ErrMalformedOp, o.Type)
	}
	if len(r) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the %s body", ErrMalformedOp, len(r), o.Type)
	}
	// Re-encoding applies the rules on names and counts, and gives the
	// canonical bytes the signature must cover.
	unsigned, err := o.appendUnsigned(nil)
	if err != nil {
		return nil, err
	}
	if len(unsigned)+ed25519.SignatureSize != len(b) {
		return nil, fmt.Errorf("%w: not the canonical encoding", ErrMalformedOp)
	}
	if !o.Author.Verify(append([]byte(labelOp), unsigned...), o.sig[:]) {
		return nil, ErrOpSignature
	}
	o.raw = append([]byte(nil), b...)
	o.hash = opHash(o.raw)
	return &o, nil
}
