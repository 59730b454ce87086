package protocol

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/sotto-im/sotto/keys"
)

// sessNow is the clock of the session tests.
var sessNow = time.Date(2026, 3, 14, 9, 26, 53, 0, time.UTC)

const sessTTL = 7 * 24 * time.Hour

// sessRNG returns a deterministic randomness source.
func sessRNG(seed uint64) io.Reader {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return rand.NewChaCha8(s)
}

// sessParty is one device with its identity, published bundle and prekey
// store.
type sessParty struct {
	name   string
	me     LocalIdentity
	bundle *keys.Bundle
	store  *sessStore
}

// sessStore is an in-memory PrekeySource that applies Accepted results
// the way persistent storage does. It tells last-resort KEM prekeys from
// one-time ones (KEMPrekeyKinds).
type sessStore struct {
	*keys.PrekeySecrets
	lastResort map[keys.PrekeyID]bool // IDs in KEM that are last-resort prekeys
	seen       map[[32]byte]bool
}

func newSessStore(sec *keys.PrekeySecrets, lastResort ...keys.PrekeyID) *sessStore {
	s := &sessStore{PrekeySecrets: sec, lastResort: map[keys.PrekeyID]bool{}, seen: map[[32]byte]bool{}}
	for _, id := range lastResort {
		s.lastResort[id] = true
	}
	return s
}

func (s *sessStore) SeenInitial(id [32]byte) bool { return s.seen[id] }

func (s *sessStore) OneTimeKEMPrekey(id keys.PrekeyID) (*keys.KEMPrivate, bool) {
	if s.lastResort[id] {
		return nil, false
	}
	return s.KEMPrekey(id)
}

func (s *sessStore) LastResortKEMPrekey(id keys.PrekeyID) (*keys.KEMPrivate, bool) {
	if !s.lastResort[id] {
		return nil, false
	}
	return s.KEMPrekey(id)
}

// commit records what Accept reported: the replay cache entry and the
// deletion of consumed one-time prekeys. Like persistent storage, it
// deletes the KEM prekey ConsumedKEM names only if it is a one-time one.
func (s *sessStore) commit(a Accepted) {
	s.seen[a.InitialID] = true
	if a.ConsumedOneTimeDH != nil {
		delete(s.OneTimeDH, *a.ConsumedOneTimeDH)
	}
	if a.ConsumedKEM != nil && !s.lastResort[*a.ConsumedKEM] {
		delete(s.KEM, *a.ConsumedKEM)
	}
}

// snapshot describes everything the store holds.
func (s *sessStore) snapshot() string {
	ids := func(m any) []keys.PrekeyID {
		var out []keys.PrekeyID
		switch m := m.(type) {
		case map[keys.PrekeyID]*keys.DHPrivate:
			for id := range m {
				out = append(out, id)
			}
		case map[keys.PrekeyID]*keys.KEMPrivate:
			for id := range m {
				out = append(out, id)
			}
		case map[keys.PrekeyID]bool:
			for id := range m {
				out = append(out, id)
			}
		}
		slices.Sort(out)
		return out
	}
	return fmt.Sprintf("signed %v one-time %v kem %v last-resort %v seen %d",
		ids(s.SignedDH), ids(s.OneTimeDH), ids(s.KEM), ids(s.lastResort), len(s.seen))
}

// legacySource is a PrekeySource that does not implement KEMPrekeyKinds.
type legacySource struct{ s *sessStore }

func (l legacySource) SignedPrekey(id keys.PrekeyID) (*keys.DHPrivate, bool) {
	return l.s.SignedPrekey(id)
}
func (l legacySource) OneTimePrekey(id keys.PrekeyID) (*keys.DHPrivate, bool) {
	return l.s.OneTimePrekey(id)
}
func (l legacySource) KEMPrekey(id keys.PrekeyID) (*keys.KEMPrivate, bool) { return l.s.KEMPrekey(id) }
func (l legacySource) SeenInitial(id [32]byte) bool                        { return l.s.SeenInitial(id) }

// spySource forwards to a store and counts the lookups made through it.
type spySource struct {
	s       *sessStore
	lookups []string
}

func (p *spySource) SignedPrekey(id keys.PrekeyID) (*keys.DHPrivate, bool) {
	p.lookups = append(p.lookups, fmt.Sprint("signed ", id))
	return p.s.SignedPrekey(id)
}
func (p *spySource) OneTimePrekey(id keys.PrekeyID) (*keys.DHPrivate, bool) {
	p.lookups = append(p.lookups, fmt.Sprint("one-time ", id))
	return p.s.OneTimePrekey(id)
}
func (p *spySource) KEMPrekey(id keys.PrekeyID) (*keys.KEMPrivate, bool) {
	p.lookups = append(p.lookups, fmt.Sprint("kem ", id))
	return p.s.KEMPrekey(id)
}
func (p *spySource) OneTimeKEMPrekey(id keys.PrekeyID) (*keys.KEMPrivate, bool) {
	p.lookups = append(p.lookups, fmt.Sprint("one-time kem ", id))
	return p.s.OneTimeKEMPrekey(id)
}
func (p *spySource) LastResortKEMPrekey(id keys.PrekeyID) (*keys.KEMPrivate, bool) {
	p.lookups = append(p.lookups, fmt.Sprint("last-resort kem ", id))
	return p.s.LastResortKEMPrekey(id)
}
func (p *spySource) SeenInitial(id [32]byte) bool {
	p.lookups = append(p.lookups, "seen")
	return p.s.SeenInitial(id)
}

func newSessParty(tb testing.TB, rng io.Reader, name string, oneTime int) *sessParty {
	tb.Helper()
	acct, err := keys.GenerateAccount(rng)
	if err != nil {
		tb.Fatal(err)
	}
	ik, err := keys.GenerateDH(rng)
	if err != nil {
		tb.Fatal(err)
	}
	peerID := append([]byte{0x00, 0x24, 0x08, 0x01, 0x12, 0x20}, bytes.Repeat([]byte(name[:1]), 32)...)
	cert, err := keys.NewDeviceCertificate(acct, peerID, ik.Public(), sessNow.Add(-time.Hour))
	if err != nil {
		tb.Fatal(err)
	}
	b, sec, err := keys.GeneratePrekeys(rng, acct, cert, sessNow.Add(-time.Hour), 1, oneTime, 30*24*time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return &sessParty{
		name:   name,
		me:     LocalIdentity{Account: acct, IdentityDH: ik, Device: cert},
		bundle: b,
		store:  newSessStore(sec, b.LastResortKEM.ID),
	}
}

func (p *sessParty) account() keys.AccountPublic { return p.me.Account.Public() }

// derandEncapsulator draws ML-KEM encapsulation randomness from rng.
func derandEncapsulator(rng io.Reader) InitiateOption {
	return WithEncapsulator(func(pk keys.KEMPublic) ([]byte, []byte, error) {
		var m [32]byte
		if _, err := io.ReadFull(rng, m[:]); err != nil {
			return nil, nil, err
		}
		return encapsulateDerand(pk, m[:])
	})
}

func textMessage(i int, body string) Message {
	m := Message{Sent: sessNow.Add(time.Duration(i) * time.Millisecond), Type: ContentText, Body: []byte(body)}
	m.ID[0], m.ID[15] = byte(i), byte(i>>8)
	return m
}

func mustSeal(tb testing.TB, rng io.Reader, s *Session, now time.Time, m Message) *Envelope {
	tb.Helper()
	env, sealed, err := s.Seal(rng, now, m, sessTTL)
	if err != nil {
		tb.Fatalf("Seal: %v", err)
	}
	if !env.CheckDeleteToken(sealed.DeleteToken) {
		tb.Fatal("sealed delete token does not match the envelope")
	}
	// Every envelope goes over the wire: parse its encoding.
	wire, err := ParseEnvelope(env.Marshal())
	if err != nil {
		tb.Fatalf("ParseEnvelope of sealed envelope: %v", err)
	}
	return wire
}

func mustOpen(tb testing.TB, s *Session, now time.Time, env *Envelope, want Message) {
	tb.Helper()
	got, opened, err := s.Open(now, env)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	if !env.CheckDeleteToken(opened.DeleteToken) {
		tb.Fatal("opened delete token does not match the envelope")
	}
	checkSessMessage(tb, got, want, s.Peer())
}

func checkSessMessage(tb testing.TB, got, want Message, sender keys.AccountPublic) {
	tb.Helper()
	if got.Sender != sender || got.ID != want.ID || !got.Sent.Equal(want.Sent.Truncate(time.Millisecond)) ||
		got.Seq != want.Seq || got.Type != want.Type || !bytes.Equal(got.Body, want.Body) {
		tb.Fatalf("message mismatch:\n got  %+v\n want %+v (sender %v)", got, want, sender)
	}
}

func mustAccept(tb testing.TB, p *sessParty, env *Envelope, want Message, from keys.AccountPublic) (*Session, Accepted) {
	tb.Helper()
	s, got, acc, err := Accept(sessNow, p.me, p.store, env)
	if err != nil {
		tb.Fatalf("Accept: %v", err)
	}
	checkSessMessage(tb, got, want, from)
	if !env.CheckDeleteToken(acc.DeleteToken) {
		tb.Fatal("accepted delete token does not match the envelope")
	}
	p.store.commit(acc)
	return s, acc
}

func mustSessState(tb testing.TB, s *Session) []byte {
	tb.Helper()
	b, err := s.MarshalBinary()
	if err != nil {
		tb.Fatalf("MarshalBinary: %v", err)
	}
	return b
}

// TestSessionSetup runs PQXDH and a conversation in both directions, with
// and without one-time prekeys (without them: no DH4, last-resort KEM).
func TestSessionSetup(t *testing.T) {
	for _, tc := range []struct {
		name    string
		oneTime int
	}{
		{"one-time prekeys", 4},
		{"last-resort only", 0},
	} {
		for _, dir := range []string{"alice-first", "bob-first"} {
			t.Run(tc.name+"/"+dir, func(t *testing.T) {
				rng := sessRNG(1)
				a := newSessParty(t, rng, "alice", tc.oneTime)
				b := newSessParty(t, rng, "bob", tc.oneTime)
				if dir == "bob-first" {
					a, b = b, a
				}
				sa, err := Initiate(rng, sessNow, a.me, b.bundle, derandEncapsulator(rng))
				if err != nil {
					t.Fatal(err)
				}
				if !sa.PendingInitial() || !sa.Initiator() || sa.Peer() != b.account() {
					t.Fatal("new initiator session in the wrong state")
				}
				epoch := Epoch(sessNow)
				m0 := textMessage(0, "hello "+b.name)
				e0 := mustSeal(t, rng, sa, sessNow, m0)
				if e0.Tag != IntroTag(b.account(), epoch) {
					t.Fatal("initial envelope is not under the responder's intro tag")
				}
				if id, ok := EnvelopeInitialID(e0); !ok || id != sa.InitialID() {
					t.Fatal("EnvelopeInitialID does not name the initiator's session")
				}
				sb, acc := mustAccept(t, b, e0, m0, a.account())
				if acc.InitialID != sa.InitialID() || sb.InitialID() != sa.InitialID() {
					t.Fatal("initial IDs differ")
				}
				if tc.oneTime > 0 {
					if acc.ConsumedOneTimeDH == nil || acc.ConsumedKEM == nil {
						t.Fatalf("one-time prekeys not reported as consumed: %+v", acc)
					}
					if len(b.store.OneTimeDH) != tc.oneTime-1 {
						t.Fatal("one-time X25519 prekey not deleted")
					}
				} else if acc.ConsumedOneTimeDH != nil || acc.ConsumedKEM != nil {
					t.Fatalf("last-resort path reported consumed prekeys: %+v", acc)
				}
				if _, ok := b.store.KEM[b.bundle.LastResortKEM.ID]; !ok {
					t.Fatal("last-resort KEM prekey was deleted")
				}
				if sb.Initiator() || sb.PendingInitial() || sb.Peer() != a.account() ||
					!sb.PeerDevice().Equal(a.me.Device) || !sa.PeerDevice().Equal(b.me.Device) {
					t.Fatal("responder session in the wrong state")
				}
				if sa.SendTag(epoch) != sb.RecvTag(epoch) || sa.RecvTag(epoch) != sb.SendTag(epoch) ||
					sa.SendTag(epoch) == sa.RecvTag(epoch) || sa.SendTag(epoch) == sa.SendTag(epoch+1) {
					t.Fatal("pairwise tags do not pair up")
				}

				// Alice sends again before any reply: still initial-prefixed.
				m1 := textMessage(1, "are you there?")
				e1 := mustSeal(t, rng, sa, sessNow, m1)
				if e1.Tag != e0.Tag || e1.Ciphertext[0] != kindInitial {
					t.Fatal("second message before a reply lost its initial prefix")
				}
				mustOpen(t, sb, sessNow, e1, m1)

				// Bob replies; Alice's next messages drop the prefix.
				r0 := textMessage(2, "hi "+a.name)
				f0 := mustSeal(t, rng, sb, sessNow, r0)
				if f0.Tag != sb.SendTag(epoch) || f0.Ciphertext[0] != kindMessage {
					t.Fatal("responder's message is not under its pairwise tag")
				}
				mustOpen(t, sa, sessNow, f0, r0)
				if sa.PendingInitial() {
					t.Fatal("initiator still pending after the first reply")
				}
				for i := 3; i < 10; i++ {
					from, to := sa, sb
					if i%3 == 0 {
						from, to = sb, sa
					}
					m := textMessage(i, fmt.Sprintf("message %d", i))
					e := mustSeal(t, rng, from, sessNow, m)
					if e.Tag != from.SendTag(epoch) || e.Ciphertext[0] != kindMessage {
						t.Fatalf("message %d: wrong tag or kind", i)
					}
					mustOpen(t, to, sessNow, e, m)
				}
			})
		}
	}
}

// TestInitialPrefixOnExistingSession: messages Alice sealed before Bob's
// reply all carry the same prefix; the responder routes them to the
// existing session by initial ID, in any order, and Accept refuses them as
// replays.
func TestInitialPrefixOnExistingSession(t *testing.T) {
	rng := sessRNG(2)
	a := newSessParty(t, rng, "alice", 2)
	b := newSessParty(t, rng, "bob", 2)
	sa, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	var envs []*Envelope
	var msgs []Message
	for i := range 4 {
		msgs = append(msgs, textMessage(i, fmt.Sprintf("early %d", i)))
		envs = append(envs, mustSeal(t, rng, sa, sessNow, msgs[i]))
	}
	for i := 1; i < len(envs); i++ {
		if !bytes.Equal(envs[i].Ciphertext[:InitialPrefixSize], envs[0].Ciphertext[:InitialPrefixSize]) {
			t.Fatal("initial prefix differs between messages")
		}
	}
	// The third arrives first and sets up the session.
	sb, _ := mustAccept(t, b, envs[2], msgs[2], a.account())
	for _, i := range []int{0, 3, 1} {
		id, ok := EnvelopeInitialID(envs[i])
		if !ok || id != sb.InitialID() {
			t.Fatalf("envelope %d not recognised as the session's", i)
		}
		if _, _, _, err := Accept(sessNow, b.me, b.store, envs[i]); !errors.Is(err, ErrReplay) {
			t.Fatalf("Accept of a later initial message: %v, want ErrReplay", err)
		}
		mustOpen(t, sb, sessNow, envs[i], msgs[i])
	}
	// Duplicates are reported as such.
	if _, _, err := sb.Open(sessNow, envs[0]); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("duplicate initial message: %v, want ErrDuplicate", err)
	}
	// An initial-prefixed message of another exchange is not this session's.
	sa2, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	other := mustSeal(t, rng, sa2, sessNow, textMessage(9, "other"))
	if _, _, err := sb.Open(sessNow, other); !errors.Is(err, ErrNotThisSession) {
		t.Fatalf("foreign initial message: %v, want ErrNotThisSession", err)
	}
	// The initiator never accepts initial-prefixed messages on its session.
	if _, _, err := sa.Open(sessNow, envs[0]); !errors.Is(err, ErrNotThisSession) {
		t.Fatalf("initiator opening an initial message: %v, want ErrNotThisSession", err)
	}
}

// TestReplayRejected: an initial message accepted once is refused again
// with ErrReplay, before any prekey is looked up, and the replay returns
// no session and nothing to consume. With last-resort keys only, the
// replay cache alone stops it; with one-time keys, the replay is still
// reported as such rather than as a consumed prekey.
func TestReplayRejected(t *testing.T) {
	for _, oneTime := range []int{0, 1} {
		t.Run(fmt.Sprint("one-time=", oneTime), func(t *testing.T) {
			rng := sessRNG(3)
			a := newSessParty(t, rng, "alice", 0)
			b := newSessParty(t, rng, "bob", oneTime)
			sa, err := Initiate(rng, sessNow, a.me, b.bundle)
			if err != nil {
				t.Fatal(err)
			}
			m := textMessage(0, "once")
			e := mustSeal(t, rng, sa, sessNow, m)
			first := e.Marshal()
			mustAccept(t, b, e, m, a.account())
			before := b.store.snapshot()
			for _, env := range []*Envelope{e, mustSeal(t, rng, sa, sessNow, textMessage(1, "again, same prefix"))} {
				spy := &spySource{s: b.store}
				s, got, acc, err := Accept(sessNow, b.me, spy, env)
				if !errors.Is(err, ErrReplay) {
					t.Fatalf("replayed initial message: %v, want ErrReplay", err)
				}
				if s != nil || got.Body != nil || !got.Sender.IsZero() || acc != (Accepted{}) {
					t.Fatalf("replay returned a session, message or consumption: %v %+v %+v", s, got, acc)
				}
				if !slices.Equal(spy.lookups, []string{"seen"}) {
					t.Fatalf("replay looked up prekeys: %v", spy.lookups)
				}
				if after := b.store.snapshot(); after != before {
					t.Fatalf("replay changed the prekey store:\n%s\n%s", before, after)
				}
			}
			if !bytes.Equal(e.Marshal(), first) {
				t.Fatal("Accept changed the envelope")
			}
		})
	}
}

// TestAcceptBadEphemeralKey: an initial message whose EK_A is a low-order
// point or a non-canonical encoding is rejected while the header is
// parsed, before the prekey source is consulted; nothing is consumed, and
// the genuine message is accepted afterwards and consumes its prekeys.
func TestAcceptBadEphemeralKey(t *testing.T) {
	rng := sessRNG(7)
	a := newSessParty(t, rng, "alice", 0)
	b := newSessParty(t, rng, "bob", 2)
	sa, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	m := textMessage(0, "hi")
	e := mustSeal(t, rng, sa, sessNow, m)
	const ekAt = 14
	ek := e.Ciphertext[ekAt : ekAt+keys.DHSize]
	u := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	highBit := bytes.Clone(ek)
	highBit[31] |= 0x80
	cases := []struct {
		name string
		ek   []byte
		want error
	}{
		{"u = 0", make([]byte, 32), keys.ErrDHLowOrder},
		{"u = 1", u("0100000000000000000000000000000000000000000000000000000000000000"), keys.ErrDHLowOrder},
		{"u = p - 1", u("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), keys.ErrDHLowOrder},
		{"order 8", u("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"), keys.ErrDHLowOrder},
		{"order 8, other", u("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"), keys.ErrDHLowOrder},
		{"u = p (0 unreduced)", u("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), keys.ErrDHNonCanonical},
		{"u = p + 1 (1 unreduced)", u("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), keys.ErrDHNonCanonical},
		{"genuine EK_A with the high bit set", highBit, keys.ErrDHNonCanonical},
	}
	before := b.store.snapshot()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bad := *e
			bad.Ciphertext = bytes.Clone(e.Ciphertext)
			copy(bad.Ciphertext[ekAt:], c.ek)
			if _, ok := EnvelopeInitialID(&bad); ok {
				t.Fatal("EnvelopeInitialID accepted the header")
			}
			spy := &spySource{s: b.store}
			s, got, acc, err := Accept(sessNow, b.me, spy, &bad)
			if !errors.Is(err, ErrMalformedInitial) || !errors.Is(err, c.want) {
				t.Fatalf("Accept: %v, want ErrMalformedInitial wrapping %v", err, c.want)
			}
			if s != nil || got.Body != nil || acc != (Accepted{}) {
				t.Fatalf("rejected message returned a session, message or consumption: %v %+v %+v", s, got, acc)
			}
			if len(spy.lookups) != 0 {
				t.Fatalf("prekey source consulted: %v", spy.lookups)
			}
			if after := b.store.snapshot(); after != before {
				t.Fatalf("prekey store changed:\n%s\n%s", before, after)
			}
		})
	}
	_, acc := mustAccept(t, b, e, m, a.account())
	if acc.ConsumedOneTimeDH == nil || acc.ConsumedKEM == nil {
		t.Fatalf("genuine message consumed nothing: %+v", acc)
	}
	if len(b.store.OneTimeDH) != 1 || len(b.store.KEM) != 2 {
		t.Fatalf("after the genuine message: %s", b.store.snapshot())
	}
}

// initiateFlags runs Initiate's steps with the initial header's flags
// changed before the identity is sealed over it: the message a hostile
// initiator would send, well-formed and correctly sealed.
func initiateFlags(tb testing.TB, rng io.Reader, me LocalIdentity, peer *keys.Bundle, set, clear byte) *Session {
	tb.Helper()
	in, err := pqxdhInitiate(rng, sessNow, &me, peer, &initiateConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	in.header.flags = in.header.flags&^clear | set
	s, err := newInitiatorSession(rng, &me, peer, in)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// TestKEMPrekeyKind: an initiator whose flag 0x02 misstates the kind of
// KEM prekey it used cannot keep a one-time KEM prekey from being deleted,
// nor have a last-resort one deleted. A source that tells the kinds apart
// (KEMPrekeyKinds) rejects such a message with ErrPrekeyKind, consuming
// nothing; with any other source Accept reports the KEM prekey used,
// whatever the flag, and the caller deletes it only if it is a one-time
// prekey.
func TestKEMPrekeyKind(t *testing.T) {
	rng := sessRNG(8)
	a := newSessParty(t, rng, "alice", 0)
	b := newSessParty(t, rng, "bob", 1)
	otKEM := b.bundle.OneTimeKEM[0].ID
	lrKEM := b.bundle.LastResortKEM.ID
	// A bundle without one-time KEM prekeys makes Initiate use the
	// last-resort prekey.
	noOTKEM, err := keys.ParseBundle(b.bundle.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	noOTKEM.OneTimeKEM = nil
	noOTKEM.Sign(b.me.Account)

	cases := []struct {
		name       string
		bundle     *keys.Bundle
		set, clear byte
		kemID      keys.PrekeyID
		wantKinds  error // with KEMPrekeyKinds
	}{
		{"one-time KEM prekey, flag cleared", b.bundle, 0, flagOneTimeKEM, otKEM, ErrPrekeyKind},
		{"last-resort KEM prekey, flag set", noOTKEM, flagOneTimeKEM, 0, lrKEM, ErrPrekeyKind},
		{"one-time KEM prekey, honest", b.bundle, 0, 0, otKEM, nil},
		{"last-resort KEM prekey, honest", noOTKEM, 0, 0, lrKEM, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rng := sessRNG(9)
			fresh := func() *sessParty {
				p := *b
				sec := keys.NewPrekeySecrets()
				if err := sec.Merge(b.store.PrekeySecrets); err != nil {
					t.Fatal(err)
				}
				p.store = newSessStore(sec, lrKEM)
				return &p
			}
			m := textMessage(0, "hello")
			sa := initiateFlags(t, rng, a.me, c.bundle, c.set, c.clear)
			e := mustSeal(t, rng, sa, sessNow, m)
			if got := keys.PrekeyID(binary.BigEndian.Uint32(e.Ciphertext[6:])); got != c.kemID {
				t.Fatalf("initiator used KEM prekey %d, want %d", got, c.kemID)
			}

			// A source that tells the kinds apart.
			bob := fresh()
			before := bob.store.snapshot()
			s, _, acc, err := Accept(sessNow, bob.me, bob.store, e)
			if c.wantKinds != nil {
				if !errors.Is(err, c.wantKinds) {
					t.Fatalf("Accept: %v, want %v", err, c.wantKinds)
				}
				if s != nil || acc != (Accepted{}) {
					t.Fatalf("rejected message returned a session or consumption: %+v", acc)
				}
				if after := bob.store.snapshot(); after != before {
					t.Fatalf("prekey store changed:\n%s\n%s", before, after)
				}
			} else {
				if err != nil {
					t.Fatalf("Accept: %v", err)
				}
				if oneTime := c.kemID == otKEM; (acc.ConsumedKEM != nil) != oneTime ||
					(oneTime && *acc.ConsumedKEM != otKEM) {
					t.Fatalf("ConsumedKEM = %v for KEM prekey %d", acc.ConsumedKEM, c.kemID)
				}
			}

			// A source that cannot tell: the message is accepted (it is
			// well-formed and sealed), and the KEM prekey used is reported
			// whatever the flag says.
			bob = fresh()
			s, got, acc, err := Accept(sessNow, bob.me, legacySource{bob.store}, e)
			if err != nil {
				t.Fatalf("Accept with a source that cannot tell the kinds: %v", err)
			}
			checkSessMessage(t, got, m, a.account())
			if s.Peer() != a.account() || acc.ConsumedKEM == nil || *acc.ConsumedKEM != c.kemID {
				t.Fatalf("ConsumedKEM = %v, want %d", acc.ConsumedKEM, c.kemID)
			}
			bob.store.commit(acc)
			_, otLeft := bob.store.KEM[otKEM]
			_, lrLeft := bob.store.KEM[lrKEM]
			if otLeft == (c.kemID == otKEM) || !lrLeft {
				t.Fatalf("after commit: one-time KEM prekey held %v, last-resort held %v", otLeft, lrLeft)
			}
		})
	}
}

// TestConsumedOneTimePrekey: an initial message naming a one-time prekey
// that is no longer stored is rejected, for each kind of one-time prekey.
func TestConsumedOneTimePrekey(t *testing.T) {
	for _, tc := range []struct {
		name   string
		delete func(s *sessStore, b *keys.Bundle)
	}{
		{"x25519", func(s *sessStore, b *keys.Bundle) { delete(s.OneTimeDH, b.OneTimeDH[0].ID) }},
		{"ml-kem", func(s *sessStore, b *keys.Bundle) { delete(s.KEM, b.OneTimeKEM[0].ID) }},
		{"used by another initiator", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := sessRNG(4)
			a := newSessParty(t, rng, "alice", 0)
			c := newSessParty(t, rng, "carol", 0)
			b := newSessParty(t, rng, "bob", 1) // one of each: every initiator picks the same
			sa, err := Initiate(rng, sessNow, a.me, b.bundle)
			if err != nil {
				t.Fatal(err)
			}
			e := mustSeal(t, rng, sa, sessNow, textMessage(0, "hi"))
			if tc.delete != nil {
				tc.delete(b.store, b.bundle)
			} else {
				sc, err := Initiate(rng, sessNow, c.me, b.bundle)
				if err != nil {
					t.Fatal(err)
				}
				m := textMessage(1, "first")
				mustAccept(t, b, mustSeal(t, rng, sc, sessNow, m), m, c.account())
			}
			_, _, _, err = Accept(sessNow, b.me, b.store, e)
			if !errors.Is(err, ErrPrekeyConsumed) {
				t.Fatalf("Accept with a consumed one-time prekey: %v, want ErrPrekeyConsumed", err)
			}
		})
	}
}

func TestUnknownPrekeyRejected(t *testing.T) {
	rng := sessRNG(5)
	a := newSessParty(t, rng, "alice", 0)
	b := newSessParty(t, rng, "bob", 0)
	sa, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	e := mustSeal(t, rng, sa, sessNow, textMessage(0, "hi"))
	delete(b.store.SignedDH, b.bundle.SignedPrekey.ID)
	if _, _, _, err := Accept(sessNow, b.me, b.store, e); !errors.Is(err, ErrUnknownPrekey) {
		t.Fatalf("Accept after the signed prekey was retired: %v, want ErrUnknownPrekey", err)
	}
}

// TestBundleVerification: Initiate refuses a bundle with any bad signature,
// even when the bundle itself is re-signed over the forgery.
func TestBundleVerification(t *testing.T) {
	rng := sessRNG(6)
	a := newSessParty(t, rng, "alice", 0)
	b := newSessParty(t, rng, "bob", 2)
	m := newSessParty(t, rng, "mallory", 0)
	resign := func(bd *keys.Bundle) { bd.Sign(b.me.Account) }
	for _, tc := range []struct {
		name   string
		mutate func(bd *keys.Bundle)
		want   error
	}{
		{"forged signed prekey signature", func(bd *keys.Bundle) { bd.SignedPrekey.Signature[7] ^= 1; resign(bd) }, keys.ErrPrekeySignature},
		{"substituted signed prekey", func(bd *keys.Bundle) { bd.SignedPrekey.Public = m.bundle.SignedPrekey.Public; resign(bd) }, keys.ErrPrekeySignature},
		{"forged last-resort KEM signature", func(bd *keys.Bundle) { bd.LastResortKEM.Signature[0] ^= 0x80; resign(bd) }, keys.ErrPrekeySignature},
		{"forged one-time KEM signatures", func(bd *keys.Bundle) {
			// Whichever one-time KEM prekey Initiate picks, it checks it.
			for i := range bd.OneTimeKEM {
				bd.OneTimeKEM[i].Signature[63] ^= 1
			}
			resign(bd)
		}, keys.ErrPrekeySignature},
		{"KEM prekey signed by another account", func(bd *keys.Bundle) {
			bd.LastResortKEM = keys.NewSignedKEMPrekey(m.me.Account, bd.LastResortKEM.ID, bd.LastResortKEM.Public)
			resign(bd)
		}, keys.ErrPrekeySignature},
		{"bundle signature", func(bd *keys.Bundle) { bd.Seq++ }, keys.ErrBundleSignature},
		{"expired", func(bd *keys.Bundle) { bd.Expires = sessNow.Add(-time.Second); resign(bd) }, keys.ErrBundleExpired},
		{"device of another account", func(bd *keys.Bundle) { bd.Device = m.me.Device; resign(bd) }, keys.ErrDeviceMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bd, err := keys.ParseBundle(b.bundle.Marshal())
			if err != nil {
				t.Fatal(err)
			}
			tc.mutate(bd)
			s, err := Initiate(rng, sessNow, a.me, bd)
			if !errors.Is(err, tc.want) || s != nil {
				t.Fatalf("Initiate: %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := Initiate(rng, sessNow, b.me, b.bundle); !errors.Is(err, ErrSelfSession) {
		t.Fatalf("session with oneself: %v, want ErrSelfSession", err)
	}
	bad := a.me
	bad.IdentityDH = m.me.IdentityDH
	if _, err := Initiate(rng, sessNow, bad, b.bundle); !errors.Is(err, ErrLocalIdentity) {
		t.Fatalf("inconsistent local identity: %v, want ErrLocalIdentity", err)
	}
}

// TestForgedInitiatorIdentity: a sealed identity whose certificate does
// not verify is rejected.
func TestForgedInitiatorIdentity(t *testing.T) {
	rng := sessRNG(7)
	a := newSessParty(t, rng, "alice", 0)
	b := newSessParty(t, rng, "bob", 0)
	// Alice's certificate with a broken signature: it still names her
	// account and identity key, so only its signature gives it away.
	forged := a.me
	forged.Device.Signature[3] ^= 1
	sa, err := Initiate(rng, sessNow, forged, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	e := mustSeal(t, rng, sa, sessNow, textMessage(0, "it's me, alice"))
	if _, _, _, err := Accept(sessNow, b.me, b.store, e); !errors.Is(err, keys.ErrDeviceSignature) {
		t.Fatalf("forged device certificate: %v, want ErrDeviceSignature", err)
	}
}

func TestIdentityChanged(t *testing.T) {
	rng := sessRNG(8)
	a := newSessParty(t, rng, "alice", 1)
	b := newSessParty(t, rng, "bob", 1)
	m := newSessParty(t, rng, "mallory", 1)

	// Alice stored Bob's account; the directory now serves Mallory's bundle.
	if _, err := Initiate(rng, sessNow, a.me, m.bundle, WithExpectedPeer(b.account())); !errors.Is(err, ErrIdentityChanged) {
		t.Fatalf("Initiate with a changed peer: %v, want ErrIdentityChanged", err)
	}
	sa, err := Initiate(rng, sessNow, a.me, b.bundle, WithExpectedPeer(b.account()))
	if err != nil {
		t.Fatal(err)
	}
	msg := textMessage(0, "hi")
	e := mustSeal(t, rng, sa, sessNow, msg)
	// Bob expected this contact to be Mallory (say, by peer ID): refused,
	// and nothing is consumed.
	if _, _, _, err := Accept(sessNow, b.me, b.store, e, WithExpectedPeer(m.account())); !errors.Is(err, ErrIdentityChanged) {
		t.Fatalf("Accept with a changed peer: %v, want ErrIdentityChanged", err)
	}
	sb, _, acc, err := Accept(sessNow, b.me, b.store, e, WithExpectedPeer(a.account()))
	if err != nil {
		t.Fatal(err)
	}
	b.store.commit(acc)
	if err := sb.CheckPeer(a.account()); err != nil {
		t.Fatal(err)
	}
	if err := sb.CheckPeer(m.account()); !errors.Is(err, ErrIdentityChanged) {
		t.Fatalf("CheckPeer against another account: %v, want ErrIdentityChanged", err)
	}
}

// TestSealedSender: no envelope contains the sender's account key, its
// identity key, its peer ID or certificate, the recipient's account key,
// or the plaintext.
func TestSealedSender(t *testing.T) {
	rng := sessRNG(9)
	a := newSessParty(t, rng, "alice", 1)
	b := newSessParty(t, rng, "bob", 1)
	sa, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	const body = "the secret plan is at noon, bring the documents"
	secrets := func(p *sessParty) map[string][]byte {
		return map[string][]byte{
			"account key":     p.me.Account.Public().Bytes(),
			"identity key":    p.me.IdentityDH.Public().Bytes(),
			"peer ID":         p.me.Device.PeerID,
			"device cert sig": p.me.Device.Signature[:],
			"plaintext":       []byte(body),
			"plaintext head":  []byte(body)[:8],
		}
	}
	check := func(env *Envelope, from, to *sessParty) {
		t.Helper()
		wire := env.Marshal()
		for what, v := range secrets(from) {
			if bytes.Contains(wire, v) {
				t.Errorf("envelope from %s contains the sender's %s", from.name, what)
			}
		}
		if bytes.Contains(wire, to.account().Bytes()) || bytes.Contains(wire, to.me.IdentityDH.Public().Bytes()) {
			t.Errorf("envelope to %s contains the recipient's keys", to.name)
		}
	}
	m := Message{Type: ContentText, Body: []byte(body), Sent: sessNow}
	e0 := mustSeal(t, rng, sa, sessNow, m)
	check(e0, a, b)
	sb, _ := mustAccept(t, b, e0, m, a.account())
	e1 := mustSeal(t, rng, sb, sessNow, m)
	check(e1, b, a)
	mustOpen(t, sa, sessNow, e1, m)
	e2 := mustSeal(t, rng, sa, sessNow, m)
	check(e2, a, b)
}

// TestTamperedEnvelopes flips bits everywhere in an initial envelope and in
// ordinary envelopes of both directions: every change is rejected, the
// session state is unchanged, and the original still opens afterwards.
func TestTamperedEnvelopes(t *testing.T) {
	rng := sessRNG(10)
	a := newSessParty(t, rng, "alice", 1)
	b := newSessParty(t, rng, "bob", 1)
	sa, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	m0 := textMessage(0, "initial")
	e0 := mustSeal(t, rng, sa, sessNow, m0)
	wire0 := e0.Marshal()

	// Initial envelope against Accept. Every byte of the envelope header
	// and the initial header, then a stride through the rest.
	storeBefore := len(b.store.OneTimeDH) + len(b.store.KEM)
	for _, i := range tamperPositions(len(wire0), EnvelopeHeaderSize+InitialHeaderSize) {
		bad := bytes.Clone(wire0)
		bad[i] ^= 0x01
		env, err := ParseEnvelope(bad)
		if err != nil {
			continue
		}
		if _, _, _, err := Accept(sessNow, b.me, b.store, env); err == nil {
			t.Fatalf("Accept took an initial envelope with byte %d flipped", i)
		}
	}
	if len(b.store.seen) != 0 || len(b.store.OneTimeDH)+len(b.store.KEM) != storeBefore {
		t.Fatal("failed Accept calls changed the prekey store")
	}
	sb, _ := mustAccept(t, b, e0, m0, a.account())

	// A later initial-prefixed message against Open, then ordinary ones.
	m1 := textMessage(1, "second initial")
	e1 := mustSeal(t, rng, sa, sessNow, m1)
	tamperOpen(t, sb, e1, m1)
	r := textMessage(2, "reply")
	f := mustSeal(t, rng, sb, sessNow, r)
	tamperOpen(t, sa, f, r)
	m3 := textMessage(3, "ordinary")
	e3 := mustSeal(t, rng, sa, sessNow, m3)
	tamperOpen(t, sb, e3, m3)
}

// tamperPositions lists every byte below dense and every 7th byte after.
func tamperPositions(n, dense int) []int {
	var out []int
	for i := 0; i < n; i++ {
		if i < dense || i%7 == 0 || i == n-1 {
			out = append(out, i)
		}
	}
	return out
}

func tamperOpen(t *testing.T, s *Session, env *Envelope, want Message) {
	t.Helper()
	before := mustSessState(t, s)
	wire := env.Marshal()
	for _, i := range tamperPositions(len(wire), EnvelopeHeaderSize+1+RatchetEncHeaderSize+1) {
		bad := bytes.Clone(wire)
		bad[i] ^= 0x20
		e, err := ParseEnvelope(bad)
		if err != nil {
			continue
		}
		if _, _, err := s.Open(sessNow, e); err == nil {
			t.Fatalf("Open took an envelope with byte %d flipped", i)
		}
		if !bytes.Equal(mustSessState(t, s), before) {
			t.Fatalf("failed Open (byte %d flipped) changed the session", i)
		}
	}
	// Truncated and extended ciphertexts.
	for _, n := range []int{1, len(env.Ciphertext) - 1} {
		e := *env
		e.Ciphertext = env.Ciphertext[:n]
		if _, _, err := s.Open(sessNow, &e); err == nil {
			t.Fatalf("Open took a ciphertext truncated to %d bytes", n)
		}
	}
	e := *env
	e.Ciphertext = append(bytes.Clone(env.Ciphertext), 0)
	if _, _, err := s.Open(sessNow, &e); err == nil {
		t.Fatal("Open took a ciphertext with a trailing byte")
	}
	if !bytes.Equal(mustSessState(t, s), before) {
		t.Fatal("failed Open changed the session")
	}
	mustOpen(t, s, sessNow, env, want)
}

// TestSenderMismatch: an inner message naming another sender is rejected
// even though it decrypts.
func TestSenderMismatch(t *testing.T) {
	rng := sessRNG(11)
	a := newSessParty(t, rng, "alice", 0)
	b := newSessParty(t, rng, "bob", 0)
	m := newSessParty(t, rng, "mallory", 0)
	sa, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := sa.Seal(rng, sessNow, Message{Sender: m.account()}, sessTTL); !errors.Is(err, ErrSenderMismatch) {
		t.Fatalf("Seal as another account: %v, want ErrSenderMismatch", err)
	}
	// Build an initial envelope whose inner sender is Mallory, by hand.
	forged := func(s *Session, tag Tag, prefix []byte) *Envelope {
		msg := Message{Sender: m.account(), Type: ContentText, Body: []byte("x")}
		inner, err := msg.marshal()
		if err != nil {
			t.Fatal(err)
		}
		env := &Envelope{Version: EnvelopeVersion, Tag: tag, Expiry: sessNow.Add(time.Hour)}
		ct, secret, err := s.ratchet.Encrypt(rng, Pad(inner), messageAD(s.ad, env))
		if err != nil {
			t.Fatal(err)
		}
		env.DeleteHash = HashDeleteToken(DeleteToken(secret))
		env.Ciphertext = append(bytes.Clone(prefix), ct...)
		return env
	}
	e := forged(sa, IntroTag(b.account(), Epoch(sessNow)), sa.prefix)
	if _, _, _, err := Accept(sessNow, b.me, b.store, e); !errors.Is(err, ErrSenderMismatch) {
		t.Fatalf("Accept of a message naming another sender: %v, want ErrSenderMismatch", err)
	}
	good := textMessage(1, "real")
	sb, _ := mustAccept(t, b, mustSeal(t, rng, sa, sessNow, good), good, a.account())
	before := mustSessState(t, sa)
	e = forged(sb, sb.SendTag(Epoch(sessNow)), []byte{kindMessage})
	if _, _, err := sa.Open(sessNow, e); !errors.Is(err, ErrSenderMismatch) {
		t.Fatalf("Open of a message naming another sender: %v, want ErrSenderMismatch", err)
	}
	if !bytes.Equal(before, mustSessState(t, sa)) {
		t.Fatal("rejected message changed the session")
	}
}

func TestSealLimits(t *testing.T) {
	rng := sessRNG(12)
	a := newSessParty(t, rng, "alice", 0)
	b := newSessParty(t, rng, "bob", 0)
	sa, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	before := mustSessState(t, sa)
	for _, tc := range []struct {
		name string
		m    Message
		ttl  time.Duration
		want error
	}{
		{"zero ttl", Message{}, 0, ErrBadTTL},
		{"sub-second ttl", Message{}, time.Millisecond, ErrBadTTL},
		{"ttl beyond MaxTTL", Message{}, MaxTTL + time.Second, ErrBadTTL},
		{"body too large", Message{Body: make([]byte, MaxBodySize+1)}, time.Hour, ErrBodyTooLarge},
		{"ragged receipt", Message{Type: ContentReceipt, Body: make([]byte, 17)}, time.Hour, ErrMalformedMessage},
	} {
		if _, _, err := sa.Seal(rng, sessNow, tc.m, tc.ttl); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if !bytes.Equal(before, mustSessState(t, sa)) {
		t.Fatal("failed Seal changed the session")
	}
	// The largest body fits in an envelope, initial prefix included, and
	// unknown content types travel unchanged.
	big := Message{Type: ContentType(200), Body: bytes.Repeat([]byte{0xa5}, MaxBodySize), Sent: sessNow}
	e := mustSeal(t, rng, sa, sessNow, big)
	mustAccept(t, b, e, big, a.account())
	if e.Size() > MaxEnvelopeSize || !e.Expiry.Equal(sessNow.Add(sessTTL)) {
		t.Fatalf("envelope size %d, expiry %v", e.Size(), e.Expiry)
	}
}

// TestExpiredEnvelope: Accept and Open check the envelope against the clock.
func TestExpiredEnvelope(t *testing.T) {
	rng := sessRNG(13)
	a := newSessParty(t, rng, "alice", 0)
	b := newSessParty(t, rng, "bob", 0)
	sa, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	e := mustSeal(t, rng, sa, sessNow, textMessage(0, "late"))
	later := sessNow.Add(sessTTL)
	if _, _, _, err := Accept(later, b.me, b.store, e); !errors.Is(err, ErrExpired) {
		t.Fatalf("Accept of an expired envelope: %v, want ErrExpired", err)
	}
	// Under someone else's intro tag.
	c := newSessParty(t, rng, "carol", 0)
	if _, _, _, err := Accept(sessNow, c.me, c.store, e); !errors.Is(err, ErrNotForMe) {
		t.Fatalf("Accept by a third party: %v, want ErrNotForMe", err)
	}
}

// TestSimultaneousInitiation: Alice and Bob initiate at the same time and
// each sends before receiving anything. With PreferSession both pick the
// same session, send on it only, keep the other for receiving, and every
// message is delivered exactly once.
func TestSimultaneousInitiation(t *testing.T) {
	rng := sessRNG(14)
	p := [2]*sessParty{newSessParty(t, rng, "alice", 2), newSessParty(t, rng, "bob", 2)}
	type node struct {
		party    *sessParty
		sessions []*Session
		send     *Session
		got      []string
	}
	nodes := [2]*node{{party: p[0]}, {party: p[1]}}
	for i, n := range nodes {
		s, err := Initiate(rng, sessNow, n.party.me, p[1-i].bundle)
		if err != nil {
			t.Fatal(err)
		}
		n.sessions = []*Session{s}
		n.send = s
	}
	// receive routes an envelope the way a node does: intro-tagged
	// envelopes to the session with that initial ID or to Accept,
	// pairwise-tagged ones by receiving tag.
	receive := func(n *node, env *Envelope) {
		t.Helper()
		var s *Session
		if id, ok := EnvelopeInitialID(env); ok {
			for _, c := range n.sessions {
				if c.InitialID() == id && !c.Initiator() {
					s = c
				}
			}
			if s == nil {
				ns, m, acc, err := Accept(sessNow, n.party.me, n.party.store, env)
				if err != nil {
					t.Fatalf("%s: Accept: %v", n.party.name, err)
				}
				n.party.store.commit(acc)
				n.sessions = append(n.sessions, ns)
				n.send = PreferSession(n.send, ns)
				n.got = append(n.got, string(m.Body))
				return
			}
		} else {
			for _, c := range n.sessions {
				if c.RecvTag(Epoch(sessNow)) == env.Tag {
					s = c
				}
			}
			if s == nil {
				t.Fatalf("%s: no session for tag %v", n.party.name, env.Tag)
			}
		}
		m, _, err := s.Open(sessNow, env)
		if err != nil {
			t.Fatalf("%s: Open: %v", n.party.name, err)
		}
		n.got = append(n.got, string(m.Body))
	}
	send := func(from, to *node, body string) *Envelope {
		t.Helper()
		return mustSeal(t, rng, from.send, sessNow, Message{Type: ContentText, Body: []byte(body), Sent: sessNow})
	}
	var want [2][]string
	var inflight [2][]*Envelope // envelopes to nodes[i]
	post := func(i int, body string) {
		inflight[1-i] = append(inflight[1-i], send(nodes[i], nodes[1-i], body))
		want[1-i] = append(want[1-i], body)
	}
	// Both send twice before anything arrives.
	post(0, "a1")
	post(0, "a2")
	post(1, "b1")
	post(1, "b2")
	deliver := func(i, k int) { // deliver the first k in-flight envelopes to nodes[i]
		for _, e := range inflight[i][:k] {
			receive(nodes[i], e)
		}
		inflight[i] = inflight[i][k:]
	}
	deliver(1, 1) // Bob gets a1: now he has two sessions and picks one
	post(1, "b3")
	deliver(0, 3) // Alice gets b1, b2, b3
	post(0, "a3")
	deliver(1, 2) // a2, a3
	post(1, "b4")
	post(0, "a4")
	deliver(0, 1)
	deliver(1, 1)
	post(0, "a5")
	post(1, "b5")
	deliver(0, 1)
	deliver(1, 1)

	if nodes[0].send != PreferSession(nodes[0].sessions[0], nodes[0].sessions[1]) ||
		nodes[0].send.InitialID() != nodes[1].send.InitialID() {
		t.Fatal("the two sides send on different sessions")
	}
	if nodes[0].send.PendingInitial() || nodes[1].send.PendingInitial() {
		t.Fatal("preferred session still sends initial messages")
	}
	for i := range nodes {
		if fmt.Sprint(nodes[i].got) != fmt.Sprint(want[i]) {
			t.Fatalf("%s received %v, want %v", nodes[i].party.name, nodes[i].got, want[i])
		}
	}
	// The side with the smaller account key initiated the preferred session.
	small := 0
	if bytes.Compare(p[1].account().Bytes(), p[0].account().Bytes()) < 0 {
		small = 1
	}
	if !nodes[small].send.Initiator() || nodes[1-small].send.Initiator() {
		t.Fatal("preferred session was not initiated by the smaller account")
	}
}

// TestSessionStateRoundTrip: sessions survive encoding at every stage and
// carry on working.
func TestSessionStateRoundTrip(t *testing.T) {
	rng := sessRNG(15)
	a := newSessParty(t, rng, "alice", 1)
	b := newSessParty(t, rng, "bob", 1)
	reload := func(s *Session) *Session {
		t.Helper()
		enc := mustSessState(t, s)
		got, err := UnmarshalSession(enc)
		if err != nil {
			t.Fatalf("UnmarshalSession: %v", err)
		}
		if !bytes.Equal(mustSessState(t, got), enc) {
			t.Fatal("session state does not re-encode to the same bytes")
		}
		return got
	}
	sa, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	sa = reload(sa)
	if !sa.PendingInitial() || !sa.Initiator() {
		t.Fatal("pending initiator state lost")
	}
	m := textMessage(0, "zero")
	sb, _ := mustAccept(t, b, mustSeal(t, rng, sa, sessNow, m), m, a.account())
	sa, sb = reload(sa), reload(sb)
	m = textMessage(1, "one")
	mustOpen(t, sa, sessNow, mustSeal(t, rng, sb, sessNow, m), m)
	sa, sb = reload(sa), reload(sb)
	if sa.PendingInitial() || sa.Peer() != b.account() || sb.Peer() != a.account() || !sb.PeerDevice().Equal(a.me.Device) {
		t.Fatal("session fields lost in encoding")
	}
	m = textMessage(2, "two")
	mustOpen(t, sb, sessNow, mustSeal(t, rng, sa, sessNow, m), m)
}

// TestUnmarshalSessionGarbage: truncations, bit flips and junk fail
// cleanly; whatever still decodes re-encodes to the same bytes.
func TestUnmarshalSessionGarbage(t *testing.T) {
	rng := sessRNG(16)
	a := newSessParty(t, rng, "alice", 0)
	b := newSessParty(t, rng, "bob", 0)
	sa, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	enc := mustSessState(t, sa)
	for n := range len(enc) {
		if _, err := UnmarshalSession(enc[:n]); err == nil {
			t.Fatalf("truncation to %d bytes decoded", n)
		}
	}
	if _, err := UnmarshalSession(append(bytes.Clone(enc), 0)); err == nil {
		t.Fatal("trailing byte decoded")
	}
	for i := range enc {
		bad := bytes.Clone(enc)
		bad[i] ^= 0x04
		s, err := UnmarshalSession(bad)
		if err != nil {
			continue
		}
		if !bytes.Equal(mustSessState(t, s), bad) {
			t.Fatalf("flipped byte %d decoded to a different encoding", i)
		}
	}
	for _, junk := range [][]byte{nil, {1}, {2, 0}, bytes.Repeat([]byte{0xff}, 4096), make([]byte, MaxSessionStateSize+1)} {
		if _, err := UnmarshalSession(junk); !errors.Is(err, ErrBadSession) {
			t.Fatalf("junk of %d bytes: %v, want ErrBadSession", len(junk), err)
		}
	}
}

// TestEnvelopeInitialID covers the routing helper on non-initial input.
func TestEnvelopeInitialID(t *testing.T) {
	for _, ct := range [][]byte{nil, {kindMessage}, {kindInitial}, append([]byte{kindInitial, 0x80}, make([]byte, InitialHeaderSize)...)} {
		if _, ok := EnvelopeInitialID(&Envelope{Ciphertext: ct}); ok {
			t.Fatalf("EnvelopeInitialID accepted %x", ct)
		}
	}
	if _, ok := EnvelopeInitialID(nil); ok {
		t.Fatal("EnvelopeInitialID accepted nil")
	}
}

func TestInnerMessageEncoding(t *testing.T) {
	m := Message{Sender: keys.AccountPublic{1, 2, 3}, ID: [16]byte{9}, Sent: time.UnixMilli(-5).UTC(), Seq: 1<<63 + 7, Type: ContentReceipt, Body: make([]byte, 32)}
	enc, err := m.marshal()
	if err != nil {
		t.Fatal(err)
	}
	if len(enc) != MessageHeaderSize+32 || enc[0] != innerVersion {
		t.Fatalf("encoding %x", enc)
	}
	got, err := parseMessage(enc)
	if err != nil {
		t.Fatal(err)
	}
	checkSessMessage(t, got, m, m.Sender)
	for _, bad := range [][]byte{enc[:MessageHeaderSize-1], append([]byte{2}, enc[1:]...), enc[:len(enc)-1]} {
		if _, err := parseMessage(bad); !errors.Is(err, ErrMalformedMessage) {
			t.Fatalf("parseMessage(%x): %v", bad, err)
		}
	}
}

// TestPreferSession covers the rule on its own: nil arguments, sessions
// initiated by different accounts (the order of the arguments does not
// matter), and two sessions initiated by the same account.
func TestPreferSession(t *testing.T) {
	rng := sessRNG(17)
	a := newSessParty(t, rng, "alice", 0)
	b := newSessParty(t, rng, "bob", 0)
	ab, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	ab2, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	ba, err := Initiate(rng, sessNow, b.me, a.bundle)
	if err != nil {
		t.Fatal(err)
	}
	if PreferSession(nil, ab) != ab || PreferSession(ab, nil) != ab || PreferSession(nil, nil) != nil {
		t.Fatal("nil handling")
	}
	wantCross := ab
	if bytes.Compare(b.account().Bytes(), a.account().Bytes()) < 0 {
		wantCross = ba
	}
	if PreferSession(ab, ba) != wantCross || PreferSession(ba, ab) != wantCross {
		t.Fatal("sessions of different initiators: not the smaller account's")
	}
	wantSame := ab
	if id1, id2 := ab.InitialID(), ab2.InitialID(); bytes.Compare(id2[:], id1[:]) < 0 {
		wantSame = ab2
	}
	if PreferSession(ab, ab2) != wantSame || PreferSession(ab2, ab) != wantSame {
		t.Fatal("sessions of one initiator: not the smaller initial ID")
	}
	if ab.LocalAccount() != a.account() || ba.LocalAccount() != b.account() {
		t.Fatal("LocalAccount")
	}
}

// TestSessionClone: a clone and its original evolve independently, and a
// clone encodes exactly like the original.
func TestSessionClone(t *testing.T) {
	rng := sessRNG(41)
	a := newSessParty(t, rng, "alice", 1)
	b := newSessParty(t, rng, "bob", 1)
	sa, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	c := sa.Clone()
	orig, _ := sa.MarshalBinary()
	cl, _ := c.MarshalBinary()
	if !bytes.Equal(orig, cl) {
		t.Fatal("clone encodes differently")
	}
	if _, _, err := c.Seal(rng, sessNow, Message{Sender: a.me.Account.Public(), Type: ContentText, Body: []byte("x")}, time.Hour); err != nil {
		t.Fatal(err)
	}
	after, _ := sa.MarshalBinary()
	if !bytes.Equal(orig, after) {
		t.Fatal("sealing on the clone changed the original")
	}
	cl2, _ := c.MarshalBinary()
	if bytes.Equal(cl, cl2) {
		t.Fatal("sealing did not change the clone")
	}
}

// TestSendTagAcrossEpochs: a session sealing on both sides of an epoch
// boundary, and back (a clock set back), tags each envelope for the epoch
// it was sealed in, which the peer's RecvTag names.
func TestSendTagAcrossEpochs(t *testing.T) {
	rng := sessRNG(21)
	a := newSessParty(t, rng, "alice", 1)
	b := newSessParty(t, rng, "bob", 1)
	sa, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	m0 := textMessage(0, "hello")
	sb, _ := mustAccept(t, b, mustSeal(t, rng, sa, sessNow, m0), m0, a.account())
	r0 := textMessage(1, "hi")
	mustOpen(t, sa, sessNow, mustSeal(t, rng, sb, sessNow, r0), r0)

	next := sessNow.Add(EpochLength)
	for i, now := range []time.Time{sessNow, next, next, sessNow, next} {
		m := textMessage(2+i, fmt.Sprintf("message %d", i))
		e := mustSeal(t, rng, sa, now, m)
		if e.Tag != sb.RecvTag(Epoch(now)) || e.Tag == sb.RecvTag(Epoch(now)+1) {
			t.Fatalf("message %d sealed in epoch %d has the wrong tag", i, Epoch(now))
		}
		if e.Tag != PairTag(sa.tagSeed, FromInitiator, Epoch(now)) {
			t.Fatalf("message %d: tag differs from its derivation", i)
		}
		mustOpen(t, sb, now, e, m)
	}
}

// TestHoldsSignedPrekey: a responder's session holds its signed prekey
// until it first sends, however many messages it receives; the
// initiator's never does.
func TestHoldsSignedPrekey(t *testing.T) {
	rng := sessRNG(7)
	a := newSessParty(t, rng, "alice", 1)
	b := newSessParty(t, rng, "bob", 1)
	sa, err := Initiate(rng, sessNow, a.me, b.bundle, derandEncapsulator(rng))
	if err != nil {
		t.Fatal(err)
	}
	m0, m1 := textMessage(0, "one"), textMessage(1, "two")
	e0 := mustSeal(t, rng, sa, sessNow, m0)
	e1 := mustSeal(t, rng, sa, sessNow, m1)
	sb, _ := mustAccept(t, b, e0, m0, a.account())
	if sa.HoldsSignedPrekey() {
		t.Fatal("the initiator's session claims to hold a signed prekey")
	}
	mustOpen(t, sb, sessNow, e1, m1)
	if !sb.HoldsSignedPrekey() {
		t.Fatal("the responder's session that never sent does not report its signed prekey")
	}
	// The encoding keeps it.
	back, err := UnmarshalSession(mustSessState(t, sb))
	if err != nil || !back.HoldsSignedPrekey() {
		t.Fatalf("after a round trip: %v, holds %v", err, back != nil && back.HoldsSignedPrekey())
	}
	r := textMessage(2, "reply")
	er := mustSeal(t, rng, sb, sessNow, r)
	if sb.HoldsSignedPrekey() {
		t.Fatal("the responder's session still reports its signed prekey after sending")
	}
	mustOpen(t, sa, sessNow, er, r)
	e3 := mustSeal(t, rng, sa, sessNow, textMessage(3, "three"))
	mustOpen(t, sb, sessNow, e3, textMessage(3, "three"))
	if sb.HoldsSignedPrekey() {
		t.Fatal("a later DH step made the responder's session report its signed prekey again")
	}
}

// TestPendingPrekeysGone: Alice and Carol start sessions with Bob from the
// same bundle, which has one one-time prekey of each kind, so both name
// them. Bob accepts Alice's first and rejects Carol's (ErrPrekeyConsumed);
// Carol's pending session then finds its prekeys gone from Bob's newer
// bundle (either kind alone is enough), not from the bundle it started
// from. A session that read the peer's answer, or that named no one-time
// prekey, is never reported.
func TestPendingPrekeysGone(t *testing.T) {
	rng := sessRNG(11)
	a := newSessParty(t, rng, "alice", 0)
	c := newSessParty(t, rng, "carol", 0)
	b := newSessParty(t, rng, "bob", 1)
	sa, err := Initiate(rng, sessNow, a.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := Initiate(rng, sessNow, c.me, b.bundle)
	if err != nil {
		t.Fatal(err)
	}
	ma, mc := textMessage(1, "from alice"), textMessage(2, "from carol")
	ea, ec := mustSeal(t, rng, sa, sessNow, ma), mustSeal(t, rng, sc, sessNow, mc)
	sb, acc := mustAccept(t, b, ea, ma, a.account())
	b.store.commit(acc)
	if _, _, _, err := Accept(sessNow, b.me, b.store, ec); !errors.Is(err, ErrPrekeyConsumed) {
		t.Fatalf("Carol's first message after Alice's took the prekeys: %v, want ErrPrekeyConsumed", err)
	}

	if sc.PendingPrekeysGone(b.bundle) || sc.PendingPrekeysGone(nil) {
		t.Fatal("prekeys reported gone from the bundle that lists them, or from no bundle")
	}
	newer := *b.bundle
	newer.OneTimeDH, newer.OneTimeKEM = nil, nil
	if !sc.PendingPrekeysGone(&newer) {
		t.Fatal("Carol's pending session does not find its prekeys gone from Bob's newer bundle")
	}
	dhOnly, kemOnly := *b.bundle, *b.bundle
	dhOnly.OneTimeDH, kemOnly.OneTimeKEM = nil, nil
	if !sc.PendingPrekeysGone(&dhOnly) || !sc.PendingPrekeysGone(&kemOnly) {
		t.Fatal("a one-time prekey of one kind gone is not reported")
	}
	// Alice reads Bob's answer: her session is no longer pending.
	if !sa.PendingPrekeysGone(&newer) {
		t.Fatal("Alice's pending session does not find its prekeys gone")
	}
	reply := textMessage(3, "from bob")
	mustOpen(t, sa, sessNow, mustSeal(t, rng, sb, sessNow, reply), reply)
	if sa.PendingPrekeysGone(&newer) {
		t.Fatal("a session that read the peer's answer is reported")
	}
	// A session that named no one-time prekey.
	d := newSessParty(t, rng, "dave", 0)
	sd, err := Initiate(rng, sessNow, a.me, d.bundle)
	if err != nil {
		t.Fatal(err)
	}
	if sd.PendingPrekeysGone(&newer) {
		t.Fatal("a session without one-time prekeys is reported")
	}
}
