package mailbox

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/sotto-im/sotto/protocol"
	"github.com/sotto-im/sotto/store"
)

func TestRequest2RoundTrip(t *testing.T) {
	ps := newPairSession()
	regs := []Registration{ps.reg(20419), {Kind: store.RegIntro, Tag: randTag(), Epoch: 20420}}
	r, err := parseRequest2(appendRegisterRequest(nil, regs))
	if err != nil || r.op != opRegister || len(r.regs) != 2 || r.regs[0] != regs[0] || r.regs[1] != regs[1] {
		t.Fatalf("REGISTER: %+v, %v", r, err)
	}
	dep, _, _ := ps.deposit(t, time.Now(), 100)
	if r, err := parseRequest2(appendPushRequest(nil, dep)); err != nil || !bytes.Equal(r.deposit, dep) {
		t.Fatalf("PUSH: %v", err)
	}
	tags := [][32]byte{randTag(), randTag()}
	if r, err := parseRequest2(appendQuery(nil, opQuery2, tags, store.MailboxCursor(7), 50)); err != nil || r.limit != 50 || len(r.tags) != 2 {
		t.Fatalf("QUERY: %+v, %v", r, err)
	}
	if r, err := parseRequest2(appendDelete(nil, opDelete2, tags[0], tags)); err != nil || r.tag != tags[0] || len(r.tokens) != 2 {
		t.Fatalf("DELETE: %+v, %v", r, err)
	}
	if r, err := parseRequest2(appendFilterRequest(nil, tags)); err != nil || len(r.tags) != 2 {
		t.Fatalf("FILTER: %+v, %v", r, err)
	}
}

// The SPEC's rejection rules 1–3 and the framing of a deposit: each is a
// BadRequest, after which the mailbox closes the stream.
func TestRequest2Rejects(t *testing.T) {
	ps := newPairSession()
	dep, _, _ := ps.deposit(t, time.Now(), 100)
	reg := appendRegisterRequest(nil, []Registration{ps.reg(20419)})
	count := func(op byte, n int) []byte { return binary.BigEndian.AppendUint16([]byte{op}, uint16(n)) }
	badCursor := appendQuery(nil, opQuery2, [][32]byte{randTag()}, []byte{9, 0, 0, 0, 0, 0, 0, 0, 1}, 10)
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"unknown operation", []byte{0x17}},
		{"version 1 deposit", append([]byte{0x01}, dep...)},
		{"register of 0", count(opRegister, 0)},
		{"register of 257", append(count(opRegister, 257), make([]byte, 257*regEntrySize)...)},
		{"register cut short", reg[:len(reg)-1]},
		{"register with a trailing byte", append(bytes.Clone(reg), 0)},
		{"register of kind 3", func() []byte { b := bytes.Clone(reg); b[3] = 3; return b }()},
		{"empty push", []byte{opPush}},
		{"push of kind 3", append([]byte{opPush, 3}, dep[1:]...)},
		{"push with a cut credential", appendPushRequest(nil, dep[:1+protocol.WriteKeySize+10])},
		{"push without an envelope", appendPushRequest(nil, dep[:1+protocol.WriteKeySize+protocol.DepositSignatureSize])},
		{"query with a bad cursor", badCursor},
		{"filter of 0 tags", count(opFilter, 0)},
		{"filter cut short", append(count(opFilter, 2), make([]byte, 33)...)},
	} {
		if _, err := parseRequest2(tc.b); !errors.Is(err, ErrBadMessage) {
			t.Errorf("%s: %v, want ErrBadMessage", tc.name, err)
		}
	}
}
