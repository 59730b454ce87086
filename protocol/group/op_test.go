package group

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/sotto-im/sotto/keys"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Known answers computed outside Go: HKDF and SHA-256 with Python's hmac
// and hashlib, the Ed25519 signature and public keys with OpenSSL 3.0.
// Group secret g = 32 bytes of 42, epoch 20419; the operation is a create
// of "friends" by the account whose seed is 32 bytes of 11, group ID
// 00 01 … 1f, time 1 800 000 000, committing to g and listing one
// account of 32 bytes of aa.
func TestKnownAnswers(t *testing.T) {
	var g Secret
	for i := range g {
		g[i] = 0x42
	}
	const e = 20419
	if c := g.Commit(); hex.EncodeToString(c[:]) != "24e44eea40289b491cb532372005b782c55ab95529a62e5b39c052d5e5280031" {
		t.Errorf("SecretCommit = %x", c)
	}
	if got := g.Topic(e); got != "/sotto/group/1/def1d6163e316134017a70580774e090" {
		t.Errorf("GroupTopic = %s", got)
	}
	wk := g.WriteKey(e)
	if hex.EncodeToString(wk.Seed()) != "3df36f3aafead3ab68746d53a0dcdf6f3cec9196e2a5cb603f110a210c6da52c" ||
		hex.EncodeToString(wk[32:]) != "6e61e841c34cc7065cde0107c3be8494aafe2dcf7c713909b06131776e4ec7e1" {
		t.Errorf("GroupWriteKey = %x", wk)
	}
	if tag := g.Tag(e); hex.EncodeToString(tag[:]) != "02b14eb9ca3ed372e2ef55e91c0b49ce99f4ea58759872339424a1bff49d55ff" {
		t.Errorf("GroupTag = %x", tag)
	}
	if hk := g.HeaderKey(e); hex.EncodeToString(hk[:]) != "4bb050df3eaad6dcead89837b1831c3a01d358ccd0c22770bd41d67afbd05c07" {
		t.Errorf("GroupHeaderKey = %x", hk)
	}

	k, err := keys.NewAccountPrivate(bytes.Repeat([]byte{0x11}, 32))
	if err != nil {
		t.Fatal(err)
	}
	var id ID
	for i := range id {
		id[i] = byte(i)
	}
	member := keys.AccountPublic(bytes.Repeat([]byte{0xaa}, 32))
	o, err := NewOp(k, Op{Group: id, Type: OpCreate, Time: time.Unix(1_800_000_000, 0), Name: "friends", Commit: g.Commit(), Accounts: []keys.AccountPublic{member}})
	if err != nil {
		t.Fatal(err)
	}
	const want = "01000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" +
		"0000000000000000000000000000000000000000000000000000000000000000" + "00000000" +
		"d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737" + "000000006b49d200" + "01" +
		"07667269656e6473" + "24e44eea40289b491cb532372005b782c55ab95529a62e5b39c052d5e5280031" +
		"0001aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" +
		"b40ab85c05f56e80a1b0b14e0992d9b5626ce27e2e4c38995d7972691d37414652e328f9d7553d9009444e87f5576ecbde2ab8c8c0dd3ee3af047e568571d707"
	if got := hex.EncodeToString(o.Bytes()); got != want {
		t.Errorf("create = %s\nwant     %s", got, want)
	}
	if h := o.Hash(); hex.EncodeToString(h[:]) != "03b82be62ca87bb42ec5489b27b0e74921e0684875e28c0543777aeae58fb768" {
		t.Errorf("OpHash = %x", h)
	}
	if _, err := ParseOp(unhex(t, want)); err != nil {
		t.Errorf("ParseOp(vector): %v", err)
	}
}

func sampleOps(t *testing.T) []*Op {
	a := account(t, 1)
	base := Op{Group: ID{9}, Parent: [32]byte{8}, Seq: 3, Time: time.Unix(1_800_000_000, 0)}
	var out []*Op
	for _, o := range []Op{
		{Type: OpCreate, Name: "g", Commit: commit(1), Accounts: []keys.AccountPublic{account(t, 2).Public(), account(t, 3).Public()}},
		{Type: OpAdd, Accounts: []keys.AccountPublic{account(t, 4).Public()}},
		{Type: OpRemove, Target: account(t, 2).Public(), Commit: commit(2)},
		{Type: OpLeave},
		{Type: OpRename, Name: "ünïcode ✓"},
		{Type: OpPromote, Target: account(t, 3).Public()},
		{Type: OpRekey, Commit: commit(3)},
	} {
		o.Group, o.Parent, o.Seq, o.Time = base.Group, base.Parent, base.Seq, base.Time
		if o.Type == OpCreate {
			o.Parent, o.Seq = [32]byte{}, 0
		}
		op, err := NewOp(a, o)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, op)
	}
	return out
}

func TestOpRoundTrip(t *testing.T) {
	for _, o := range sampleOps(t) {
		got, err := ParseOp(o.Bytes())
		if err != nil {
			t.Fatalf("%s: %v", o.Type, err)
		}
		if !bytes.Equal(got.Bytes(), o.Bytes()) || got.Hash() != o.Hash() || got.Name != o.Name ||
			got.Target != o.Target || got.Commit != o.Commit || len(got.Accounts) != len(o.Accounts) ||
			got.Author != o.Author || !got.Time.Equal(o.Time) || got.Seq != o.Seq || got.Parent != o.Parent {
			t.Fatalf("%s does not round-trip: %+v vs %+v", o.Type, got, o)
		}
	}
}

// resign re-signs raw bytes (without signature) with a, so that a test of
// a structural rule is not a signature failure in disguise.
func resign(a *keys.AccountPrivate, unsigned []byte) []byte {
	return append(unsigned, a.Sign(append([]byte(labelOp), unsigned...))...)
}

func TestParseOpRejects(t *testing.T) {
	a := account(t, 1)
	ops := sampleOps(t)
	create, rename := ops[0], ops[4]
	strip := func(o *Op) []byte { return append([]byte(nil), o.Bytes()[:len(o.Bytes())-64]...) }
	nameAt := opHeaderSize // the name's length byte in a create or rename
	cases := map[string][]byte{
		"empty":            nil,
		"truncated header": create.Bytes()[:opHeaderSize],
		"version 2":        func() []byte { b := strip(create); b[0] = 2; return resign(a, b) }(),
		"unknown type":     func() []byte { b := strip(create); b[opHeaderSize-1] = 0x08; return resign(a, b) }(),
		"time past 9999": func() []byte {
			b := strip(create)
			binary.BigEndian.PutUint64(b[opHeaderSize-9:], 253402300800)
			return resign(a, b)
		}(),
		"empty name": func() []byte {
			b := strip(rename)[:nameAt]
			return resign(a, append(b, 0))
		}(),
		"name of 129 bytes": func() []byte {
			b := strip(rename)[:nameAt]
			return resign(a, append(append(b, 129), bytes.Repeat([]byte("x"), 129)...))
		}(),
		"name not UTF-8": func() []byte {
			b := strip(rename)[:nameAt]
			return resign(a, append(b, 2, 0xff, 0xfe))
		}(),
		"name cut short": func() []byte {
			b := strip(rename)[:nameAt]
			return resign(a, append(b, 5, 'a'))
		}(),
		"add of no account": func() []byte {
			b := strip(ops[1])[:opHeaderSize]
			return resign(a, append(b, 0, 0))
		}(),
		"add of 256 accounts": func() []byte {
			b := strip(ops[1])[:opHeaderSize]
			b = binary.BigEndian.AppendUint16(b, 256)
			return resign(a, append(b, bytes.Repeat([]byte{7}, 256*32)...))
		}(),
		"count beyond the bytes": func() []byte {
			b := strip(ops[1])[:opHeaderSize]
			return resign(a, append(binary.BigEndian.AppendUint16(b, 3), bytes.Repeat([]byte{7}, 64)...))
		}(),
		"trailing byte": resign(a, append(strip(ops[3]), 0)),
		"remove cut short": func() []byte {
			b := strip(ops[2])
			return resign(a, b[:len(b)-1])
		}(),
		"oversize": make([]byte, MaxOpSize+1),
	}
	for name, b := range cases {
		if _, err := ParseOp(b); !errors.Is(err, ErrMalformedOp) {
			t.Errorf("%s: %v, want ErrMalformedOp", name, err)
		}
	}
}

// Any flipped bit, and another author's key in place of the signer's, is
// refused: by the signature, or by a structural rule when the bit lands
// on a length or type.
func TestOpForgeries(t *testing.T) {
	for _, o := range sampleOps(t) {
		raw := o.Bytes()
		for i := range len(raw) * 8 {
			b := bytes.Clone(raw)
			b[i/8] ^= 1 << (i % 8)
			if _, err := ParseOp(b); err == nil {
				t.Fatalf("%s with bit %d flipped was accepted", o.Type, i)
			} else if !errors.Is(err, ErrOpSignature) && !errors.Is(err, ErrMalformedOp) {
				t.Fatalf("%s with bit %d flipped: %v", o.Type, i, err)
			}
		}
		b := bytes.Clone(raw)
		other := account(t, 7).Public()
		copy(b[1+IDSize+32+4:], other[:])
		if _, err := ParseOp(b); !errors.Is(err, ErrOpSignature) {
			t.Fatalf("%s claimed by another author: %v", o.Type, err)
		}
	}
}

func FuzzParseOp(f *testing.F) {
	for _, o := range sampleOps(&testing.T{}) {
		f.Add(o.Bytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := ParseOp(b)
		if err != nil {
			return
		}
		if !bytes.Equal(o.Bytes(), b) {
			t.Fatal("an accepted operation is not its own encoding")
		}
	})
}

// A group's tags, topics and header keys differ from day to day and after
// a rekey: nothing in them links one to the next.
func TestGroupDerivationsUnlinked(t *testing.T) {
	var g1, g2 Secret
	g1[0], g2[0] = 1, 2
	seen := map[string]bool{}
	for _, g := range []Secret{g1, g2} {
		for e := uint64(20000); e < 20003; e++ {
			tag, hk := g.Tag(e), g.HeaderKey(e)
			for _, v := range []string{string(tag[:]), g.Topic(e), string(hk[:])} {
				if seen[v] {
					t.Fatalf("a derivation repeats across epochs or secrets")
				}
				seen[v] = true
			}
		}
	}
}
