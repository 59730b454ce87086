package group

import (
	"bytes"
	"encoding/hex"
	"errors"
	"slices"
	"testing"

	"github.com/sotto-im/sotto/keys"
)

// The pairwise bodies decode to what was encoded, and every damage is
// refused with an error, never a panic.
func TestPairwiseContent(t *testing.T) {
	alice, bob, carol := account(t, 1), account(t, 2), account(t, 3)
	create, tr := newGroup(t, alice, "g", bob)
	var g1 Secret
	g1[0] = 1
	addC := after(t, create, alice, Op{Type: OpAdd, Accounts: []keys.AccountPublic{carol.Public()}})
	add(t, tr, addC)

	m := OpMessage{Op: create, Secret: g1, HasSecret: true}
	got, err := ParseOpMessage(m.Marshal())
	if err != nil || got.Op.Hash() != create.Hash() || !got.HasSecret || got.Secret != g1 {
		t.Fatalf("op with secret: %v", err)
	}
	if got, err := ParseOpMessage(OpMessage{Op: addC}.Marshal()); err != nil || got.HasSecret || got.Op.Hash() != addC.Hash() {
		t.Fatalf("op without secret: %v", err)
	}
	var other Secret
	other[0] = 2
	for name, b := range map[string][]byte{
		"a secret the create does not commit to": OpMessage{Op: create, Secret: other, HasSecret: true}.Marshal(),
		"a secret with an add":                   OpMessage{Op: addC, Secret: g1, HasSecret: true}.Marshal(),
		"trailing bytes":                         append(OpMessage{Op: addC}.Marshal(), 0),
	} {
		if _, err := ParseOpMessage(b); !errors.Is(err, ErrMalformedContent) {
			t.Errorf("%s: %v, want ErrMalformedContent", name, err)
		}
	}
	full := m.Marshal()
	for n := range len(full) {
		if n == len(full)-SecretSize {
			continue // the operation without its secret
		}
		if _, err := ParseOpMessage(full[:n]); err == nil {
			t.Fatalf("op message cut to %d bytes accepted", n)
		}
	}

	w := Welcome{Group: tr.Group(), Secret: g1, Ops: tr.Canonical()}
	b := w.Marshal()
	gw, err := ParseWelcome(b)
	if err != nil || gw.Group != w.Group || gw.Secret != g1 || len(gw.Ops) != 2 || gw.Ops[1].Hash() != addC.Hash() {
		t.Fatalf("welcome: %v", err)
	}
	for n := range len(b) {
		if _, err := ParseWelcome(b[:n]); err == nil {
			t.Fatalf("welcome cut to %d bytes accepted", n)
		}
	}
	// Member cards are skipped; bytes after them are refused.
	withCard := append(bytes.Clone(b[:len(b)-2]), 0, 1, 0, 3, 'a', 'b', 'c')
	if _, err := ParseWelcome(withCard); err != nil {
		t.Fatalf("a welcome with a member card: %v", err)
	}
	if _, err := ParseWelcome(append(withCard, 0)); !errors.Is(err, ErrMalformedContent) {
		t.Fatalf("trailing bytes after the cards: %v", err)
	}
	// An operation of another group inside a welcome.
	_, tr2 := newGroup(t, alice, "h", bob, carol)
	mixed := Welcome{Group: tr.Group(), Secret: g1, Ops: []*Op{create, tr2.Canonical()[0]}}
	if _, err := ParseWelcome(mixed.Marshal()); !errors.Is(err, ErrMalformedContent) {
		t.Fatalf("another group's operation: %v", err)
	}
	if _, err := ParseWelcome(Welcome{Group: tr.Group(), Secret: g1}.Marshal()); !errors.Is(err, ErrMalformedContent) {
		t.Fatalf("a welcome with no operation: %v", err)
	}
}

// A known answer for the welcome's layout (SPEC.md, "Group content on a
// pairwise session"): its fixed fields and framing around a create.
func TestWelcomeKnownAnswer(t *testing.T) {
	alice, bob := account(t, 1), account(t, 2)
	create, _ := newGroup(t, alice, "g", bob)
	var g1 Secret
	g1[0] = 1
	b := Welcome{Group: create.Group, Secret: g1, Ops: []*Op{create}}.Marshal()
	op := create.Bytes()
	want := "01" + hex.EncodeToString(create.Group[:]) + hex.EncodeToString(g1[:]) + "0001" +
		hex.EncodeToString([]byte{byte(len(op) >> 8), byte(len(op))}) + hex.EncodeToString(op) + "0000"
	if hex.EncodeToString(b) != want {
		t.Fatalf("welcome\n got %x\nwant %s", b, want)
	}
}

func FuzzParseWelcome(f *testing.F) {
	alice, bob := account(f, 1), account(f, 2)
	create, _ := newGroup(f, alice, "g", bob)
	f.Add(Welcome{Group: create.Group, Ops: []*Op{create}}.Marshal())
	f.Add(OpMessage{Op: create}.Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseWelcome(b)
		ParseOpMessage(b)
	})
}

// TestPairReceiptsKnownAnswer pins the pairwise group receipts body of
// SPEC.md ("Group content on a pairwise session"): G || the message IDs.
func TestPairReceiptsKnownAnswer(t *testing.T) {
	var r PairReceipts
	for i := range r.Group {
		r.Group[i] = byte(i)
	}
	r.IDs = [][16]byte{{0xaa, 15: 0x01}, {0xbb, 15: 0x02}}
	const want = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" +
		"aa000000000000000000000000000001" + "bb000000000000000000000000000002"
	if got := hex.EncodeToString(r.Marshal()); got != want {
		t.Fatalf("receipts\n got %s\nwant %s", got, want)
	}
	back, err := ParsePairReceipts(r.Marshal())
	if err != nil || back.Group != r.Group || !slices.Equal(back.IDs, r.IDs) {
		t.Fatalf("parsed back as %+v, %v", back, err)
	}
}

// TestParsePairReceiptsRejects: a body that is not a group ID and 1 to
// MaxPairReceipts whole message IDs is malformed.
func TestParsePairReceiptsRejects(t *testing.T) {
	for name, n := range map[string]int{
		"empty":           0,
		"group only":      32,
		"a partial ID":    32 + 15,
		"an ID and a bit": 32 + 16 + 1,
		"too many IDs":    32 + 16*(MaxPairReceipts+1),
	} {
		if _, err := ParsePairReceipts(make([]byte, n)); !errors.Is(err, ErrMalformedContent) {
			t.Errorf("%s (%d bytes): %v, want ErrMalformedContent", name, n, err)
		}
	}
	if _, err := ParsePairReceipts(make([]byte, 32+16*MaxPairReceipts)); err != nil {
		t.Errorf("%d IDs: %v", MaxPairReceipts, err)
	}
}

func FuzzParsePairReceipts(f *testing.F) {
	f.Add(PairReceipts{IDs: [][16]byte{{1}}}.Marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParsePairReceipts(b)
		if err == nil && !bytes.Equal(r.Marshal(), b) {
			t.Fatalf("%x parses as %+v, which encodes as %x", b, r, r.Marshal())
		}
	})
}
