package group

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"testing"
	"time"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/protocol"
)

// Known answers of KDF_CK and the body key, from Python's hmac and
// hashlib: chain key 32 bytes of 01.
func TestSenderChainKnownAnswers(t *testing.T) {
	var ck [32]byte
	for i := range ck {
		ck[i] = 1
	}
	mk, next := chainStep(ck)
	key, nonce := bodyKey(mk)
	for name, c := range map[string]struct {
		got  []byte
		want string
	}{
		"message key": {mk[:], "cc6efb872c237f565ee82df42e4cab00098b13710395e3c6d29f2907d69e4f04"},
		"next chain":  {next[:], "c31d79abaf8f2150ee1cfe3dc732eed02a56f79647909bad055a831cb762e9a2"},
		"body key":    {append(key, nonce...), "1a8f69d076e4dc57915c966ea7e164707b2bce52f99fa7a50600e2a3236cb44e99f52928f6b3fba4863fb042af3a227dc7e2ef6f9e6dd0a7"},
	} {
		if hex.EncodeToString(c.got) != c.want {
			t.Errorf("%s = %x, want %s", name, c.got, c.want)
		}
	}
}

// groupFixture is a group of members with sender keys handed out.
type groupFixture struct {
	id      ID
	g       Secret
	epoch   uint64
	expiry  time.Time
	members []*keys.AccountPrivate
	send    []*SenderKey
	recv    []*Receiver
	seq     []uint64
}

func newFixture(t testing.TB, n int) *groupFixture {
	t.Helper()
	f := &groupFixture{epoch: protocol.Epoch(time.Now()), expiry: time.Now().Add(24 * time.Hour)}
	rand.Read(f.id[:])
	rand.Read(f.g[:])
	for i := range n {
		f.members = append(f.members, account(t, 40+i))
		k, err := NewSenderKey(rand.Reader, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		f.send = append(f.send, k)
		f.recv = append(f.recv, NewReceiver(f.id))
		f.seq = append(f.seq, 0)
	}
	for i := range n {
		for j := range n {
			if i != j {
				if err := f.recv[j].AddKey(f.members[i].Public(), f.send[i].Distribution(f.id)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	return f
}

func (f *groupFixture) inner(t testing.TB, from int, text string) []byte {
	t.Helper()
	f.seq[from]++
	m := Inner{Sender: f.members[from].Public(), Group: f.id, Sent: time.UnixMilli(time.Now().UnixMilli()), Lamport: f.seq[from], Seq: f.seq[from], Type: ContentText, Body: []byte(text)}
	rand.Read(m.ID[:])
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *groupFixture) seal(t testing.TB, from int, text string) *protocol.Envelope {
	t.Helper()
	env, err := f.send[from].Seal(rand.Reader, f.g, f.epoch, f.expiry, f.inner(t, from, text))
	if err != nil {
		t.Fatal(err)
	}
	// What travels is the envelope's encoding.
	got, err := protocol.ParseEnvelope(env.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// One envelope, sealed once, opens for every other member, in any order,
// each exactly once.
func TestGroupMessageEveryMemberOnce(t *testing.T) {
	f := newFixture(t, 4)
	var envs []*protocol.Envelope
	for i := range 20 {
		env := f.seal(t, 0, fmt.Sprint("m", i))
		// What a mailbox or relay sees names neither the sender key nor
		// the group.
		if bytes.Contains(env.Marshal(), f.send[0].ID[:]) || bytes.Contains(env.Marshal(), f.id[:]) {
			t.Fatal("the envelope shows the sender key's ID or the group ID")
		}
		envs = append(envs, env)
	}
	for r := 1; r < 4; r++ {
		order := mrand.Perm(len(envs))
		if r == 1 {
			order = nil
			for i := range envs {
				order = append(order, i)
			}
		}
		for _, i := range order {
			m, err := f.recv[r].Open(f.g, f.epoch, envs[i])
			if err != nil {
				t.Fatalf("member %d, message %d: %v", r, i, err)
			}
			if string(m.Body) != fmt.Sprint("m", i) || m.Sender != f.members[0].Public() || m.Seq != uint64(i+1) {
				t.Fatalf("member %d, message %d: %q from %s seq %d", r, i, m.Body, m.Sender, m.Seq)
			}
			if _, err := f.recv[r].Open(f.g, f.epoch, envs[i]); !errors.Is(err, ErrGroupReplay) {
				t.Fatalf("replayed message: %v, want ErrGroupReplay", err)
			}
		}
	}
	// The sender does not hold its own key as a member's.
	if _, err := f.recv[0].Open(f.g, f.epoch, envs[0]); !errors.Is(err, ErrUnknownSenderKey) {
		t.Fatalf("the sender opened its own message: %v", err)
	}
}

func flip(env *protocol.Envelope, at int) *protocol.Envelope {
	c := *env
	c.Ciphertext = bytes.Clone(env.Ciphertext)
	c.Ciphertext[at] ^= 0x01
	return &c
}

// resignEnv signs a modified envelope with the real sender's key, so that
// the rule under test is not the signature.
func resignEnv(k *SenderKey, env *protocol.Envelope) *protocol.Envelope {
	c := *env
	body := bytes.Clone(env.Ciphertext[:len(env.Ciphertext)-ed25519.SignatureSize])
	c.Ciphertext = append(body, ed25519.Sign(k.Signing, signedMessage(c.Tag, c.Expiry, body))...)
	return &c
}

func TestGroupMessageRejects(t *testing.T) {
	f := newFixture(t, 3)
	sender, r := f.send[0], f.recv[1]
	good := f.seal(t, 0, "hello")
	n := len(good.Ciphertext)
	other := newFixture(t, 1)

	expect := func(name string, env *protocol.Envelope, g Secret, want error) {
		t.Helper()
		if _, err := r.Check(g, f.epoch, env); !errors.Is(err, want) && want != ErrGroupAuth && want != ErrGroupMismatch && want != ErrMalformedGroupMessage {
			t.Errorf("%s: Check = %v, want %v", name, err, want)
		}
		if _, err := r.Open(g, f.epoch, env); !errors.Is(err, want) {
			t.Errorf("%s: Open = %v, want %v", name, err, want)
		}
	}
	expect("another group's secret", good, other.g, ErrNotForGroup)
	withTag := *good
	withTag.Tag = other.g.Tag(f.epoch)
	expect("moved to another group's tag", &withTag, other.g, ErrNotForGroup)
	expect("header nonce flipped", flip(good, 3), f.g, ErrNotForGroup)
	expect("sealed header flipped", flip(good, 30), f.g, ErrNotForGroup)
	expect("body flipped", flip(good, 70), f.g, ErrGroupSignature)
	expect("signature flipped", flip(good, n-1), f.g, ErrGroupSignature)
	later := *good
	later.Expiry = good.Expiry.Add(time.Hour)
	expect("expiry changed", &later, f.g, ErrGroupSignature)
	expect("body flipped and signed again", resignEnv(sender, flip(good, 70)), f.g, ErrGroupAuth)
	short := *good
	short.Ciphertext = good.Ciphertext[:100]
	expect("cut short", &short, f.g, ErrMalformedGroupMessage)
	v2 := resignEnv(sender, flip(good, 0))
	expect("version 2", v2, f.g, ErrMalformedGroupMessage)

	// A member knows the sender's chain key, not its signing key: a
	// message it forges under the sender's key ID does not verify.
	forger := *sender
	forger.Iteration = 5
	forger.Signing = f.send[2].Signing
	forged, err := forger.Seal(rand.Reader, f.g, f.epoch, f.expiry, f.inner(t, 0, "forged"))
	if err != nil {
		t.Fatal(err)
	}
	expect("forged by a member who knows the chain", forged, f.g, ErrGroupSignature)

	// A sender whose inner message names another sender or group.
	lie := Inner{Sender: f.members[2].Public(), Group: f.id, Type: ContentText, Body: []byte("I am 2")}
	b, _ := lie.Marshal()
	env, _ := sender.Seal(rand.Reader, f.g, f.epoch, f.expiry, b)
	expect("inner sender is not the key's owner", env, f.g, ErrGroupMismatch)
	lie = Inner{Sender: f.members[0].Public(), Group: other.id, Type: ContentText, Body: []byte("elsewhere")}
	b, _ = lie.Marshal()
	env, _ = sender.Seal(rand.Reader, f.g, f.epoch, f.expiry, b)
	expect("inner group is another", env, f.g, ErrGroupMismatch)

	// Past the limit: a sender cannot seal it, a receiver refuses it.
	used := *sender
	used.Iteration = MaxSenderKeyMessages
	if _, err := used.Seal(rand.Reader, f.g, f.epoch, f.expiry, f.inner(t, 0, "x")); !errors.Is(err, ErrSenderKeyUsedUp) {
		t.Fatalf("sealing at the limit: %v", err)
	}
	env, err = used.seal(rand.Reader, f.g, f.epoch, f.expiry, f.inner(t, 0, "x"))
	if err != nil {
		t.Fatal(err)
	}
	expect("iteration 1000", env, f.g, ErrTooManyMessages)

	// None of it spent anything: the good message still opens, once.
	if _, err := r.Open(f.g, f.epoch, good); err != nil {
		t.Fatalf("the good message after the rejected ones: %v", err)
	}
}

// After a member is removed the others make new sender keys and hand
// them out to the remaining members only, under a new group secret: the
// removed member's receiver, holding every key it was ever given and the
// old secret, reads none of what follows, while the remaining members
// read all of it.
func TestRemovedMemberReadsNothingAfter(t *testing.T) {
	f := newFixture(t, 4)
	removed := 3
	before := f.seal(t, 0, "before")
	if _, err := f.recv[removed].Open(f.g, f.epoch, before); err != nil {
		t.Fatal(err)
	}
	oldG := f.g
	rand.Read(f.g[:])
	for i := range 3 {
		k, err := NewSenderKey(rand.Reader, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		f.send[i] = k
		for j := range 3 {
			if j != i {
				if err := f.recv[j].AddKey(f.members[i].Public(), k.Distribution(f.id)); err != nil {
					t.Fatal(err)
				}
			}
		}
		f.recv[i].DropOwner(f.members[removed].Public())
	}
	for i := range 3 {
		for n := range 5 {
			env := f.seal(t, i, fmt.Sprint("after ", n))
			for _, g := range []Secret{oldG, f.g} { // even if the new secret leaked
				if _, err := f.recv[removed].Open(g, f.epoch, env); err == nil {
					t.Fatalf("the removed member read a message sent after its removal")
				}
			}
			for j := range 3 {
				if j == i {
					continue
				}
				if _, err := f.recv[j].Open(f.g, f.epoch, env); err != nil {
					t.Fatalf("member %d cannot read %d's message after the removal: %v", j, i, err)
				}
			}
		}
	}
	// And its own posts are refused by everyone who remains.
	post := f.seal(t, removed, "still here")
	for j := range 3 {
		if _, err := f.recv[j].Open(f.g, f.epoch, post); !errors.Is(err, ErrUnknownSenderKey) {
			t.Fatalf("member %d took the removed member's post: %v", j, err)
		}
	}
}

// A receiver that gets a key's last iteration first still reads every
// earlier one, once.
func TestSkippedIterations(t *testing.T) {
	f := newFixture(t, 2)
	var envs []*protocol.Envelope
	for i := range MaxSenderKeyMessages {
		envs = append(envs, f.seal(t, 0, fmt.Sprint(i)))
	}
	if !f.send[0].Due(time.Now()) {
		t.Fatal("a key that sealed its last message is not due for replacement")
	}
	if _, err := f.recv[1].Open(f.g, f.epoch, envs[len(envs)-1]); err != nil {
		t.Fatal(err)
	}
	for i, env := range envs[:len(envs)-1] {
		m, err := f.recv[1].Open(f.g, f.epoch, env)
		if err != nil || string(m.Body) != fmt.Sprint(i) {
			t.Fatalf("iteration %d after the last: %v", i, err)
		}
	}
	if k := f.recv[1].keys[f.send[0].ID]; len(k.skipped) != 0 {
		t.Fatalf("%d skipped keys kept after every message was read", len(k.skipped))
	}
}

func TestSenderKeyDueByAge(t *testing.T) {
	k, err := NewSenderKey(rand.Reader, time.Now().Add(-SenderKeyLifetime))
	if err != nil {
		t.Fatal(err)
	}
	if !k.Due(time.Now()) {
		t.Fatal("a 7-day-old sender key is not due")
	}
}

func TestDistributionRejects(t *testing.T) {
	f := newFixture(t, 2)
	d := f.send[0].Distribution(f.id)
	b := d.Marshal()
	if got, err := ParseDistribution(b); err != nil || !bytes.Equal(got.Marshal(), b) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := ParseDistribution(b[:len(b)-1]); !errors.Is(err, ErrMalformedGroupMessage) {
		t.Errorf("short: %v", err)
	}
	r := NewReceiver(ID{7})
	if err := r.AddKey(f.members[0].Public(), d); !errors.Is(err, ErrGroupMismatch) {
		t.Errorf("a key for another group: %v", err)
	}
	if err := f.recv[1].AddKey(f.members[1].Public(), d); !errors.Is(err, ErrGroupMismatch) {
		t.Errorf("a key ID another member's key holds: %v", err)
	}
}

func FuzzOpenGroupMessage(f *testing.F) {
	fx := newFixture(f, 2)
	f.Add(fx.seal(f, 0, "seed").Ciphertext)
	f.Fuzz(func(t *testing.T, c []byte) {
		env := &protocol.Envelope{Version: protocol.EnvelopeVersion, Tag: fx.g.Tag(fx.epoch), Expiry: fx.expiry, Ciphertext: c}
		fx.recv[1].Open(fx.g, fx.epoch, env) // must not panic
	})
}

func FuzzParseInner(f *testing.F) {
	m := Inner{Type: ContentReceipts, Body: make([]byte, 32)}
	b, _ := m.Marshal()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseInner(b)
		if err != nil {
			return
		}
		again, err := m.Marshal()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("an accepted inner message does not re-encode to itself: %v", err)
		}
	})
}
