package group

import (
	"bytes"
	"errors"
	"testing"

	"github.com/sotto-im/sotto/protocol"
)

// A receiver written to bytes and read back opens what it had not opened
// (skipped iterations included) and refuses what it had: a restart
// neither loses a member's late message nor lets a replay through.
func TestReceiverKeyRoundTrip(t *testing.T) {
	f := newFixture(t, 2)
	var envs []*protocol.Envelope
	for i := range 6 {
		envs = append(envs, f.seal(t, 0, string(rune('a'+i))))
	}
	r := f.recv[1]
	for _, i := range []int{1, 3} {
		if _, err := r.Open(f.g, f.epoch, envs[i]); err != nil {
			t.Fatal(err)
		}
	}
	id := f.send[0].ID
	b, ok := r.MarshalKey(id)
	if !ok {
		t.Fatal("the receiver does not hold the sender's key")
	}
	r2 := NewReceiver(f.id)
	if err := r2.LoadKey(b); err != nil {
		t.Fatal(err)
	}
	if b2, _ := r2.MarshalKey(id); !bytes.Equal(b, b2) {
		t.Fatal("a loaded key encodes differently")
	}
	if owner, ok := r2.KeyOwner(id); !ok || owner != f.members[0].Public() {
		t.Fatal("the loaded key lost its owner")
	}
	for _, i := range []int{1, 3} {
		if _, err := r2.Open(f.g, f.epoch, envs[i]); !errors.Is(err, ErrGroupReplay) {
			t.Fatalf("iteration %d again after the reload: %v, want ErrGroupReplay", i, err)
		}
	}
	for _, i := range []int{0, 2, 5, 4} {
		m, err := r2.Open(f.g, f.epoch, envs[i])
		if err != nil || string(m.Body) != string(rune('a'+i)) {
			t.Fatalf("iteration %d after the reload: %v", i, err)
		}
	}
}

// A sender key read back seals on from where it was, and what it seals
// opens at a receiver that read its predecessor's messages.
func TestSenderKeyRoundTrip(t *testing.T) {
	f := newFixture(t, 2)
	if _, err := f.recv[1].Open(f.g, f.epoch, f.seal(t, 0, "before")); err != nil {
		t.Fatal(err)
	}
	b, err := f.send[0].MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	k, err := UnmarshalSenderKey(b)
	if err != nil {
		t.Fatal(err)
	}
	if k.ID != f.send[0].ID || k.Iteration != 1 || k.Chain != f.send[0].Chain || !k.Signing.Equal(f.send[0].Signing) ||
		k.Created.UnixMilli() != f.send[0].Created.UnixMilli() {
		t.Fatal("the sender key changed in the round trip")
	}
	f.send[0] = k
	m, err := f.recv[1].Open(f.g, f.epoch, f.seal(t, 0, "after"))
	if err != nil || string(m.Body) != "after" {
		t.Fatalf("a message of the reloaded key: %v", err)
	}
}

// Damaged state is refused with ErrBadState, never a panic: every
// truncation, a wrong version, and a skipped iteration past the chain.
func TestStoredKeyStateRejects(t *testing.T) {
	f := newFixture(t, 2)
	f.seal(t, 0, "x")
	f.seal(t, 0, "y")
	if _, err := f.recv[1].Open(f.g, f.epoch, f.seal(t, 0, "z")); err != nil {
		t.Fatal(err)
	}
	mk, _ := f.recv[1].MarshalKey(f.send[0].ID)
	sk, err := f.send[0].MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	for n := range len(mk) {
		if err := NewReceiver(f.id).LoadKey(mk[:n]); !errors.Is(err, ErrBadState) {
			t.Fatalf("member key cut to %d bytes: %v", n, err)
		}
	}
	for n := range len(sk) {
		if _, err := UnmarshalSenderKey(sk[:n]); !errors.Is(err, ErrBadState) {
			t.Fatalf("sender key cut to %d bytes: %v", n, err)
		}
	}
	bad := bytes.Clone(mk)
	bad[0] = 9
	if err := NewReceiver(f.id).LoadKey(bad); !errors.Is(err, ErrBadState) {
		t.Fatalf("another version: %v", err)
	}
	// The first skipped iteration (0) moved to the base (3) or beyond.
	bad = bytes.Clone(mk)
	at := memberKeyFixed + KeyIDSize
	bad[at+3] = 3
	if err := NewReceiver(f.id).LoadKey(bad); !errors.Is(err, ErrBadState) {
		t.Fatalf("a skipped iteration at the chain's base: %v", err)
	}
	// A key ID held by another member is refused.
	r := NewReceiver(f.id)
	if err := r.LoadKey(mk); err != nil {
		t.Fatal(err)
	}
	other := bytes.Clone(mk)
	other[1+KeyIDSize] ^= 1 // the owner
	if err := r.LoadKey(other); !errors.Is(err, ErrGroupMismatch) {
		t.Fatalf("the key ID under another owner: %v", err)
	}
}

func FuzzLoadKey(f *testing.F) {
	fx := newFixture(f, 2)
	if _, err := fx.recv[1].Open(fx.g, fx.epoch, fx.seal(f, 0, "x")); err != nil {
		f.Fatal(err)
	}
	mk, _ := fx.recv[1].MarshalKey(fx.send[0].ID)
	f.Add(mk)
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReceiver(fx.id)
		if r.LoadKey(b) == nil {
			if b2, _ := r.MarshalKey([KeyIDSize]byte(b[1:])); !bytes.Equal(b, b2) {
				t.Fatal("accepted state encodes differently")
			}
		}
	})
}
