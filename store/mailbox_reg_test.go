package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/sotto-im/sotto/protocol"
)

// mbxEpoch is the epoch of mbxNow.
var mbxEpoch = protocol.Epoch(mbxNow)

func mbxRegister(t testing.TB, db *DB, regs []MailboxRegistration, now time.Time) (int, error) {
	t.Helper()
	var n int
	err := db.Update(func(tx *Tx) error {
		var err error
		n, err = tx.MailboxRegister(regs, now)
		return err
	})
	return n, err
}

func mustMbxRegister(t testing.TB, db *DB, want int, regs ...MailboxRegistration) {
	t.Helper()
	if n, err := mbxRegister(t, db, regs, mbxNow); err != nil || n != want {
		t.Fatalf("MailboxRegister = %d, %v; want %d accepted", n, err, want)
	}
}

func mbxPutReg(t testing.TB, db *DB, env []byte, kind byte, now time.Time, lim MailboxLimits) (bool, error) {
	t.Helper()
	var stored bool
	err := db.Update(func(tx *Tx) error {
		var err error
		stored, err = tx.MailboxPutRegistered(env, kind, now, lim)
		return err
	})
	return stored, err
}

func mustMbxPutReg(t testing.TB, db *DB, env []byte, kind byte, lim MailboxLimits) {
	t.Helper()
	if stored, err := mbxPutReg(t, db, env, kind, mbxNow, lim); err != nil || !stored {
		t.Fatalf("MailboxPutRegistered = %v, %v", stored, err)
	}
}

func mbxRegOf(t testing.TB, db *DB, tag [32]byte, now time.Time) (MailboxRegistration, bool) {
	t.Helper()
	var reg MailboxRegistration
	var ok bool
	mustView(t, db, func(tx *Tx) error {
		var err error
		reg, ok, err = tx.MailboxRegistrationOf(tag, now)
		return err
	})
	return reg, ok
}

func mbxRegCount(t testing.TB, db *DB) int64 {
	t.Helper()
	var n int64
	mustView(t, db, func(tx *Tx) error {
		var err error
		n, err = tx.MailboxRegistrationCount()
		return err
	})
	return n
}

func pairReg(tag [32]byte, e uint64) MailboxRegistration {
	return MailboxRegistration{Kind: RegPair, Tag: tag, Epoch: e}
}

func introReg(tag [32]byte, e uint64) MailboxRegistration {
	return MailboxRegistration{Kind: RegIntro, Tag: tag, Epoch: e}
}

// checkRegistrations verifies that the registrations, their expiry index
// and their count agree.
func checkRegistrations(t testing.TB, db *DB) {
	t.Helper()
	mustView(t, db, func(tx *Tx) error {
		r, err := tx.regBuckets(false)
		if err != nil {
			return err
		}
		if err := r.reg.ForEach(func(k, _ []byte) error {
			v, held, err := r.get([32]byte(k))
			if err != nil || !held {
				return err
			}
			if r.exp.Get(concat(be64(uint64(v.expiry)), k)) == nil {
				t.Errorf("registration %x has no expiry index entry", k[:6])
			}
			return nil
		}); err != nil {
			return err
		}
		nreg, nexp := r.reg.Stats().KeyN, r.exp.Stats().KeyN
		if nreg != nexp {
			t.Errorf("%d registrations, %d expiry index entries", nreg, nexp)
		}
		if n, err := r.count(); err != nil || n != int64(nreg) {
			t.Errorf("registration count %d, %v; %d held", n, err, nreg)
		}
		return nil
	})
}

func TestRegistrationExpiry(t *testing.T) {
	for _, e := range []uint64{0, 1, mbxEpoch, maxRegistrationEpoch} {
		got := RegistrationExpiry(e)
		if !got.Equal(protocol.EpochStart(e + 16)) {
			t.Errorf("RegistrationExpiry(%d) = %v, want the start of epoch %d", e, got, e+16)
		}
		if last := protocol.Epoch(got.Add(-time.Nanosecond)); last != e+15 {
			t.Errorf("RegistrationExpiry(%d): the last live instant is in epoch %d, want %d", e, last, e+15)
		}
	}
	// Epochs no envelope can reach do not overflow.
	for _, e := range []uint64{maxRegistrationEpoch + 1, 1 << 62, ^uint64(0)} {
		if got := RegistrationExpiry(e); !got.Equal(RegistrationExpiry(maxRegistrationEpoch)) {
			t.Errorf("RegistrationExpiry(%d) = %v", e, got)
		}
	}
}

func TestMailboxRegisterAccepts(t *testing.T) {
	db, _ := openTest(t)
	tags := make([][32]byte, 10)
	for i := range tags {
		tags[i] = mbxTag(i)
	}
	regs := []MailboxRegistration{
		pairReg(tags[1], mbxEpoch),                                // accepted
		pairReg(tags[1], mbxEpoch),                                // again: accepted, harmless
		introReg(tags[2], mbxEpoch),                               // accepted
		{Kind: 0x00, Tag: tags[3], Epoch: mbxEpoch},               // unknown kind
		{Kind: 0x03, Tag: tags[4], Epoch: mbxEpoch},               // unknown kind
		pairReg(tags[5], mbxEpoch-16),                             // expired at the start of mbxEpoch
		pairReg(tags[6], mbxEpoch-15),                             // live until the end of mbxEpoch: accepted
		introReg(tags[1], mbxEpoch+1),                             // tag 1 holds both kinds now
		pairReg(tags[7], maxRegistrationEpoch+1),                  // beyond any envelope
		pairReg(tags[8], ^uint64(0)),                              // likewise
		{Kind: RegIntro, Tag: tags[9], Epoch: mbxEpoch + 2},       // accepted
		{Kind: RegPair | RegIntro, Tag: tags[9], Epoch: mbxEpoch}, // unknown kind, tag 9 unchanged
	}
	mustMbxRegister(t, db, 6, regs...)
	if n := mbxRegCount(t, db); n != 4 {
		t.Fatalf("%d registrations held, want 4", n)
	}
	for _, tc := range []struct {
		tag  int
		want MailboxRegistration
		ok   bool
	}{
		{1, MailboxRegistration{Kind: RegPair | RegIntro, Tag: tags[1], Epoch: mbxEpoch + 1}, true},
		{2, introReg(tags[2], mbxEpoch), true},
		{3, MailboxRegistration{}, false},
		{4, MailboxRegistration{}, false},
		{5, MailboxRegistration{}, false},
		{6, pairReg(tags[6], mbxEpoch-15), true},
		{7, MailboxRegistration{}, false},
		{8, MailboxRegistration{}, false},
		{9, introReg(tags[9], mbxEpoch+2), true},
	} {
		if reg, ok := mbxRegOf(t, db, tags[tc.tag], mbxNow); ok != tc.ok || reg != tc.want {
			t.Errorf("tag %d: registration %+v, %v; want %+v, %v", tc.tag, reg, ok, tc.want, tc.ok)
		}
	}
	checkRegistrations(t, db)

	// A registration of the other kind joins a live one: the tag takes
	// both kinds, under the later expiry. (A stranger who registers a
	// recipient's intro tag as pairwise first must not lock it out.)
	mustMbxRegister(t, db, 1, pairReg(tags[2], mbxEpoch+1))
	if reg, _ := mbxRegOf(t, db, tags[2], mbxNow); reg.Kind != RegPair|RegIntro || reg.Epoch != mbxEpoch+1 {
		t.Fatalf("tag 2 after a pairwise registration: %+v; want both kinds, epoch +1", reg)
	}
	for _, kind := range []byte{RegPair, RegIntro} {
		if _, err := mbxPutReg(t, db, mbxEnvelope(tags[2], 300+int(kind), 10, time.Hour), kind, mbxNow, MailboxLimits{}); err != nil {
			t.Fatalf("deposit of kind %d under a tag of both kinds: %v", kind, err)
		}
	}

	// Registering again keeps the later expiry.
	mustMbxRegister(t, db, 1, pairReg(tags[1], mbxEpoch+2))
	mustMbxRegister(t, db, 1, pairReg(tags[1], mbxEpoch-1))
	if reg, ok := mbxRegOf(t, db, tags[1], mbxNow); !ok || reg.Epoch != mbxEpoch+2 {
		t.Fatalf("after registering epochs +2 and -1: %+v, %v; want epoch +2", reg, ok)
	}
	if !mbxRegLive(t, db, tags[1], RegistrationExpiry(mbxEpoch+2).Add(-time.Second)) {
		t.Fatal("the later registration does not last to its expiry")
	}
	checkRegistrations(t, db)

	// A registration of the other kind that has expired is replaced.
	afterTag6 := RegistrationExpiry(mbxEpoch - 15)
	if n, err := mbxRegister(t, db, []MailboxRegistration{introReg(tags[6], mbxEpoch)}, afterTag6); err != nil || n != 1 {
		t.Fatalf("replacing an expired registration: %d, %v", n, err)
	}
	if reg, ok := mbxRegOf(t, db, tags[6], afterTag6); !ok || reg != introReg(tags[6], mbxEpoch) {
		t.Fatalf("replaced registration: %+v, %v", reg, ok)
	}
	if n := mbxRegCount(t, db); n != 4 {
		t.Fatalf("%d registrations held after replacing one, want 4", n)
	}
	checkRegistrations(t, db)
}

func mbxRegLive(t testing.TB, db *DB, tag [32]byte, now time.Time) bool {
	t.Helper()
	_, ok := mbxRegOf(t, db, tag, now)
	return ok
}

func TestMailboxRegisterBatchLimit(t *testing.T) {
	db, _ := openTest(t)
	batch := make([]MailboxRegistration, MaxMailboxRegistrations+1)
	for i := range batch {
		batch[i] = pairReg(mbxTag(i), mbxEpoch)
	}
	if n, err := mbxRegister(t, db, batch, mbxNow); !errors.Is(err, ErrTooLarge) || n != 0 {
		t.Fatalf("%d registrations: %d, %v; want ErrTooLarge", len(batch), n, err)
	}
	if n := mbxRegCount(t, db); n != 0 {
		t.Fatalf("a refused batch left %d registrations", n)
	}
	mustMbxRegister(t, db, MaxMailboxRegistrations, batch[:MaxMailboxRegistrations]...)
	if n := mbxRegCount(t, db); n != MaxMailboxRegistrations {
		t.Fatalf("%d registrations held, want %d", n, MaxMailboxRegistrations)
	}
	mustMbxRegister(t, db, 0)
	checkRegistrations(t, db)
}

func TestMailboxRegisterReadOnly(t *testing.T) {
	db, _ := openTest(t)
	mustView(t, db, func(tx *Tx) error {
		if _, err := tx.MailboxRegister([]MailboxRegistration{pairReg(mbxTag(1), mbxEpoch)}, mbxNow); !errors.Is(err, ErrReadOnly) {
			t.Errorf("register in View: %v", err)
		}
		if _, err := tx.MailboxPutRegistered(mbxEnvelope(mbxTag(1), 1, 10, time.Hour), RegPair, mbxNow, MailboxLimits{}); !errors.Is(err, ErrReadOnly) {
			t.Errorf("put in View: %v", err)
		}
		return nil
	})
}

func TestMailboxRegisteredTags(t *testing.T) {
	db, _ := openTest(t)
	a, b, c, old, none := mbxTag(1), mbxTag(2), mbxTag(3), mbxTag(4), mbxTag(5)
	mustMbxRegister(t, db, 4, pairReg(a, mbxEpoch), introReg(b, mbxEpoch), pairReg(c, mbxEpoch+1), pairReg(old, mbxEpoch-15))
	mustView(t, db, func(tx *Tx) error {
		for _, tc := range []struct {
			name string
			now  time.Time
			in   [][32]byte
			want [][32]byte
		}{
			{"order kept", mbxNow, [][32]byte{c, none, a, b, old}, [][32]byte{c, a, b, old}},
			{"duplicates dropped", mbxNow, [][32]byte{b, b, none, a, b, none}, [][32]byte{b, a}},
			{"none registered", mbxNow, [][32]byte{none}, [][32]byte{}},
			{"empty", mbxNow, nil, [][32]byte{}},
			{"expired dropped", RegistrationExpiry(mbxEpoch - 15), [][32]byte{old, a, c}, [][32]byte{a, c}},
			{"only the latest", RegistrationExpiry(mbxEpoch), [][32]byte{a, b, c}, [][32]byte{c}},
		} {
			got, err := tx.MailboxRegisteredTags(tc.in, tc.now)
			if err != nil {
				return err
			}
			if len(got) != len(tc.want) {
				t.Errorf("%s: %d tags, want %d", tc.name, len(got), len(tc.want))
				continue
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("%s: tag %d is %x, want %x", tc.name, i, got[i][:4], tc.want[i][:4])
				}
			}
		}
		return nil
	})
}

func TestMailboxPutRegisteredRefuses(t *testing.T) {
	db, _ := openTest(t)
	pair, intro, none := mbxTag(1), mbxTag(2), mbxTag(3)
	mustMbxRegister(t, db, 2, pairReg(pair, mbxEpoch), introReg(intro, mbxEpoch))
	tests := []struct {
		name string
		env  []byte
		kind byte
		want error
	}{
		{"unregistered tag", mbxEnvelope(none, 1, 100, time.Hour), RegPair, ErrMailboxUnregistered},
		{"unregistered tag, intro", mbxEnvelope(none, 2, 100, time.Hour), RegIntro, ErrMailboxUnregistered},
		{"intro deposit under a pairwise tag", mbxEnvelope(pair, 3, 100, time.Hour), RegIntro, ErrMailboxUnregistered},
		{"pairwise deposit under an intro tag", mbxEnvelope(intro, 4, 100, time.Hour), RegPair, ErrMailboxUnregistered},
		{"unknown kind", mbxEnvelope(pair, 5, 100, time.Hour), 0x03, ErrMailboxUnregistered},
		{"kind zero", mbxEnvelope(pair, 6, 100, time.Hour), 0x00, ErrMailboxUnregistered},
		{"malformed", []byte("hello, mailbox"), RegPair, protocol.ErrUnknownVersion},
		{"expired", mbxEnvelope(pair, 7, 100, -time.Second), RegPair, protocol.ErrExpired},
		{"ttl too long", mbxEnvelope(pair, 8, 100, protocol.MaxTTL+2*protocol.MaxClockSkew), RegPair, protocol.ErrTTLTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stored, err := mbxPutReg(t, db, tt.env, tt.kind, mbxNow, MailboxLimits{})
			if stored || !errors.Is(err, tt.want) {
				t.Fatalf("MailboxPutRegistered = %v, %v; want %v", stored, err, tt.want)
			}
			if tt.want != ErrMailboxUnregistered && !errors.Is(err, ErrMailboxInvalid) {
				t.Fatalf("MailboxPutRegistered = %v, want ErrMailboxInvalid too", err)
			}
		})
	}
	if n, _ := mbxStats(t, db); n != 0 {
		t.Fatalf("%d refused envelopes stored", n)
	}
	// The right kind is stored, and served by the version 1 query.
	pe, ie := mbxEnvelope(pair, 10, 100, time.Hour), mbxEnvelope(intro, 11, 100, time.Hour)
	mustMbxPutReg(t, db, pe, RegPair, MailboxLimits{})
	mustMbxPutReg(t, db, ie, RegIntro, MailboxLimits{})
	p := mbxQuery(t, db, [][32]byte{intro, pair}, nil, 0, mbxNow)
	if len(p.Entries) != 2 || !bytes.Equal(p.Entries[0].Envelope, pe) || !bytes.Equal(p.Entries[1].Envelope, ie) {
		t.Fatalf("query: %d entries", len(p.Entries))
	}
	checkMailbox(t, db)
}

func TestMailboxRegisteredQuota(t *testing.T) {
	size := int64(protocol.EnvelopeHeaderSize + 100)
	// The version 1 per-tag quota is set tight to show it does not apply.
	tests := []struct {
		name string
		lim  MailboxLimits
		pair int // envelopes of mbxEnvelope(…, 100, …) a pairwise tag holds
		intr int // and an intro tag
	}{
		{"count", MailboxLimits{PairEnvelopes: 5, IntroEnvelopes: 2, TagEnvelopes: 1}, 5, 2},
		{"bytes", MailboxLimits{PairBytes: 4*size + 50, IntroBytes: 3*size - 1, TagBytes: 1}, 4, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, _ := openTest(t)
			pair, intro, other := mbxTag(1), mbxTag(2), mbxTag(3)
			mustMbxRegister(t, db, 3, pairReg(pair, mbxEpoch), introReg(intro, mbxEpoch), pairReg(other, mbxEpoch))
			for _, q := range []struct {
				tag  [32]byte
				kind byte
				fit  int
				base int
			}{{pair, RegPair, tt.pair, 0}, {intro, RegIntro, tt.intr, 100}} {
				for i := range q.fit {
					if _, err := mbxPutReg(t, db, mbxEnvelope(q.tag, q.base+i, 100, time.Hour), q.kind, mbxNow, tt.lim); err != nil {
						t.Fatalf("kind %d envelope %d: %v", q.kind, i, err)
					}
				}
				if _, err := mbxPutReg(t, db, mbxEnvelope(q.tag, q.base+50, 100, time.Hour), q.kind, mbxNow, tt.lim); !errors.Is(err, ErrMailboxTagFull) {
					t.Fatalf("kind %d over quota: %v, want ErrMailboxTagFull", q.kind, err)
				}
			}
			// Other tags are unaffected.
			for i := range tt.pair {
				if _, err := mbxPutReg(t, db, mbxEnvelope(other, 200+i, 100, time.Hour), RegPair, mbxNow, tt.lim); err != nil {
					t.Fatalf("other tag, envelope %d: %v", i, err)
				}
			}
			// Deleting one frees room under the full tag.
			mustUpdate(t, db, func(tx *Tx) error { _, err := tx.MailboxDelete(intro, mbxToken(100)); return err })
			if _, err := mbxPutReg(t, db, mbxEnvelope(intro, 150, 100, time.Hour), RegIntro, mbxNow, tt.lim); err != nil {
				t.Fatalf("after delete: %v", err)
			}
			checkMailbox(t, db)
		})
	}
}

func TestMailboxRegisteredDefaultQuota(t *testing.T) {
	l := MailboxLimits{}.WithDefaults()
	if l.PairEnvelopes != 1024 || l.PairBytes != 8<<20 || l.IntroEnvelopes != 64 || l.IntroBytes != 1<<20 {
		t.Fatalf("default quotas %+v", l)
	}
	// The intro default holds 64 envelopes and refuses the 65th.
	db, _ := openTest(t)
	tag := mbxTag(1)
	mustMbxRegister(t, db, 1, introReg(tag, mbxEpoch))
	mustUpdate(t, db, func(tx *Tx) error {
		for i := range DefaultMailboxIntroEnvelopes {
			if _, err := tx.MailboxPutRegistered(mbxEnvelope(tag, i, 20, time.Hour), RegIntro, mbxNow, MailboxLimits{}); err != nil {
				return err
			}
		}
		_, err := tx.MailboxPutRegistered(mbxEnvelope(tag, 1000, 20, time.Hour), RegIntro, mbxNow, MailboxLimits{})
		if !errors.Is(err, ErrMailboxTagFull) {
			t.Errorf("envelope %d under an intro tag: %v, want ErrMailboxTagFull", DefaultMailboxIntroEnvelopes+1, err)
		}
		return nil
	})
}

// TestMailboxRegisteredNeverEvicts fills a mailbox to its total cap with
// envelopes under registered tags; a deposit under another registered tag
// is refused, and every envelope accepted before is still served.
func TestMailboxRegisteredNeverEvicts(t *testing.T) {
	size := protocol.EnvelopeHeaderSize + 100
	tests := []struct {
		name string
		lim  MailboxLimits
		fit  int
	}{
		{"count", MailboxLimits{TotalEnvelopes: 6}, 6},
		{"bytes", MailboxLimits{TotalBytes: int64(5*size + 10)}, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, _ := openTest(t)
			tags := [][32]byte{mbxTag(1), mbxTag(2), mbxTag(3)}
			late := mbxTag(4)
			mustMbxRegister(t, db, 4, pairReg(tags[0], mbxEpoch), pairReg(tags[1], mbxEpoch), introReg(tags[2], mbxEpoch), pairReg(late, mbxEpoch))
			kinds := []byte{RegPair, RegPair, RegIntro}
			var envs [][]byte
			for i := range tt.fit {
				e := mbxEnvelope(tags[i%3], i, 100, time.Hour)
				envs = append(envs, e)
				if stored, err := mbxPutReg(t, db, e, kinds[i%3], mbxNow, tt.lim); err != nil || !stored {
					t.Fatalf("envelope %d: %v, %v", i, stored, err)
				}
			}
			n0, b0 := mbxStats(t, db)
			for _, d := range []struct {
				name string
				env  []byte
				kind byte
			}{
				{"another registered tag", mbxEnvelope(late, 100, 100, time.Hour), RegPair},
				{"a tag already holding envelopes", mbxEnvelope(tags[0], 101, 100, time.Hour), RegPair},
				{"a small envelope", mbxEnvelope(late, 102, 8, time.Hour), RegPair},
			} {
				if stored, err := mbxPutReg(t, db, d.env, d.kind, mbxNow, tt.lim); stored || !errors.Is(err, ErrMailboxFull) {
					t.Fatalf("%s in a full mailbox: %v, %v; want ErrMailboxFull", d.name, stored, err)
				}
			}
			if n, b := mbxStats(t, db); n != n0 || b != b0 {
				t.Fatalf("stats %d, %d after refused deposits; were %d, %d", n, b, n0, b0)
			}
			p := mbxQuery(t, db, append(tags, late), nil, 0, mbxNow)
			if len(p.Entries) != len(envs) {
				t.Fatalf("%d envelopes served, %d accepted", len(p.Entries), len(envs))
			}
			for i, e := range p.Entries {
				if !bytes.Equal(e.Envelope, envs[i]) {
					t.Fatalf("entry %d is not the envelope accepted %d-th", i, i)
				}
			}
			// An envelope leaving by its delete token makes room.
			mustUpdate(t, db, func(tx *Tx) error { _, err := tx.MailboxDelete(tags[0], mbxToken(0)); return err })
			if stored, err := mbxPutReg(t, db, mbxEnvelope(late, 100, 100, time.Hour), RegPair, mbxNow, tt.lim); err != nil || !stored {
				t.Fatalf("after a delete: %v, %v", stored, err)
			}
			checkMailbox(t, db)
		})
	}
}

func TestMailboxRegistrationExpires(t *testing.T) {
	db, _ := openTest(t)
	tag := mbxTag(1)
	// Registered for an old epoch, the registration ends in a day or two.
	// An envelope may not outlive it (it would lose its protection from
	// eviction); one that expires with it is taken.
	e := mbxEpoch - 14
	end := RegistrationExpiry(e)
	mustMbxRegister(t, db, 1, pairReg(tag, e))
	if _, err := mbxPutReg(t, db, mbxEnvelope(tag, 9, 100, 13*24*time.Hour), RegPair, mbxNow, MailboxLimits{}); !errors.Is(err, protocol.ErrTTLTooLong) || !errors.Is(err, ErrMailboxInvalid) {
		t.Fatalf("an envelope outliving its registration: %v, want ErrTTLTooLong", err)
	}
	env := mbxEnvelope(tag, 1, 100, end.Sub(mbxNow))
	mustMbxPutReg(t, db, env, RegPair, MailboxLimits{})

	if reg, ok := mbxRegOf(t, db, tag, end.Add(-time.Second)); !ok || reg != pairReg(tag, e) {
		t.Fatalf("a second before expiry: %+v, %v", reg, ok)
	}
	if _, ok := mbxRegOf(t, db, tag, end); ok {
		t.Fatal("registration live at its expiry")
	}
	mustView(t, db, func(tx *Tx) error {
		tags, err := tx.MailboxRegisteredTags([][32]byte{tag}, end)
		if err == nil && len(tags) != 0 {
			t.Errorf("expired registration listed")
		}
		return err
	})
	// An expired registration, not yet swept, refuses deposits.
	if _, err := mbxPutReg(t, db, mbxEnvelope(tag, 2, 100, 13*24*time.Hour), RegPair, end, MailboxLimits{}); !errors.Is(err, ErrMailboxUnregistered) {
		t.Fatalf("deposit after the registration expired: %v, want ErrMailboxUnregistered", err)
	}

	sweep := func(now time.Time) int {
		t.Helper()
		var n int
		mustUpdate(t, db, func(tx *Tx) error {
			var err error
			n, err = tx.MailboxSweep(now)
			return err
		})
		return n
	}
	if n := sweep(end.Add(-time.Second)); n != 0 {
		t.Fatalf("sweep before expiry removed %d", n)
	}
	if n := mbxRegCount(t, db); n != 1 {
		t.Fatalf("%d registrations before the sweep, want 1", n)
	}
	// Before the end both are held; at the end the envelope and the
	// registration go together.
	if p := mbxQuery(t, db, [][32]byte{tag}, nil, 0, end.Add(-time.Second)); len(p.Entries) != 1 || !bytes.Equal(p.Entries[0].Envelope, env) {
		t.Fatalf("a second before the end: %d envelopes", len(p.Entries))
	}
	if n := sweep(end); n != 2 {
		t.Fatalf("sweep at the registration's expiry removed %d, want the envelope and the registration", n)
	}
	if n := mbxRegCount(t, db); n != 0 {
		t.Fatalf("%d registrations after the sweep", n)
	}
	checkRegistrations(t, db)
	if n, _ := mbxStats(t, db); n != 0 {
		t.Fatalf("%d envelopes after their expiry", n)
	}
	checkMailbox(t, db)
	// The tag can be registered again.
	if n, err := mbxRegister(t, db, []MailboxRegistration{introReg(tag, protocol.Epoch(end))}, end); err != nil || n != 1 {
		t.Fatalf("registering again after the sweep: %d, %v", n, err)
	}
	checkRegistrations(t, db)
}

// TestMailboxSweepBound checks that envelopes and registrations share the
// bound of one sweep.
func TestMailboxSweepBound(t *testing.T) {
	db, _ := openTest(t)
	mustMbxPut(t, db, mbxEnvelope(mbxTag(0), 0, 10, time.Minute))
	e := mbxEpoch - 15
	mustUpdate(t, db, func(tx *Tx) error {
		batch := make([]MailboxRegistration, 0, MaxMailboxRegistrations)
		for i := range MaxMailboxSweep {
			var tag [32]byte
			binary.BigEndian.PutUint64(tag[:], uint64(i))
			batch = append(batch, pairReg(tag, e))
			if len(batch) == MaxMailboxRegistrations || i == MaxMailboxSweep-1 {
				if n, err := tx.MailboxRegister(batch, mbxNow); err != nil || n != len(batch) {
					t.Fatalf("MailboxRegister = %d, %v", n, err)
				}
				batch = batch[:0]
			}
		}
		return nil
	})
	if n := mbxRegCount(t, db); n != MaxMailboxSweep {
		t.Fatalf("%d registrations held, want %d", n, MaxMailboxSweep)
	}
	later := RegistrationExpiry(e)
	for i, want := range []int{MaxMailboxSweep, 1, 0} {
		mustUpdate(t, db, func(tx *Tx) error {
			n, err := tx.MailboxSweep(later)
			if n != want {
				t.Errorf("sweep %d removed %d, want %d", i, n, want)
			}
			return err
		})
	}
	if n, _ := mbxStats(t, db); n != 0 {
		t.Fatalf("%d envelopes left", n)
	}
	if n := mbxRegCount(t, db); n != 0 {
		t.Fatalf("%d registrations left", n)
	}
	checkRegistrations(t, db)
}

func TestMailboxRegisteredDedup(t *testing.T) {
	db, _ := openTest(t)
	tag := mbxTag(1)
	mustMbxRegister(t, db, 1, pairReg(tag, mbxEpoch))
	lim := MailboxLimits{PairEnvelopes: 2}
	a, b := mbxEnvelope(tag, 1, 100, time.Hour), mbxEnvelope(tag, 2, 100, time.Hour)
	mustMbxPutReg(t, db, a, RegPair, lim)
	if stored, err := mbxPutReg(t, db, a, RegPair, mbxNow, lim); err != nil || stored {
		t.Fatalf("the same bytes again: %v, %v; want false, nil", stored, err)
	}
	mustMbxPutReg(t, db, b, RegPair, lim)
	// Held bytes are a duplicate even with the tag at its quota.
	if stored, err := mbxPutReg(t, db, b, RegPair, mbxNow, lim); err != nil || stored {
		t.Fatalf("held bytes under a full tag: %v, %v; want false, nil", stored, err)
	}
	if n, size := mbxStats(t, db); n != 2 || size != int64(len(a)+len(b)) {
		t.Fatalf("stats %d, %d", n, size)
	}
	// Bytes a version 1 deposit stored are held too.
	other := mbxTag(2)
	c := mbxEnvelope(other, 3, 100, time.Hour)
	mustMbxPut(t, db, c)
	mustMbxRegister(t, db, 1, introReg(other, mbxEpoch))
	// Once the tag is registered, version 1 deposits under it are refused.
	if _, err := mbxPut(t, db, mbxEnvelope(other, 4, 100, time.Hour), MailboxLimits{}); !errors.Is(err, ErrMailboxNeedsCredential) {
		t.Fatalf("a version 1 deposit under a registered tag: %v, want ErrMailboxNeedsCredential", err)
	}
	if stored, err := mbxPutReg(t, db, c, RegIntro, mbxNow, MailboxLimits{}); err != nil || stored {
		t.Fatalf("bytes of a version 1 deposit: %v, %v; want false, nil", stored, err)
	}
	checkMailbox(t, db)
}

func TestMailboxRegistrationCorrupt(t *testing.T) {
	tag := mbxTag(1)
	expiry := uint64(RegistrationExpiry(mbxEpoch).Unix())
	// A malformed registration fails whatever reads it.
	for _, tt := range []struct {
		name string
		v    []byte
	}{
		{"short value", []byte{RegPair}},
		{"long value", concat([]byte{RegPair}, be64(expiry), []byte{0})},
		{"unknown kind", concat([]byte{7}, be64(expiry))},
		{"expiry off an epoch", concat([]byte{RegPair}, be64(expiry+1))},
		{"expiry before epoch 16", concat([]byte{RegPair}, be64(0))},
	} {
		t.Run(tt.name, func(t *testing.T) {
			db, _ := openTest(t)
			mustMbxRegister(t, db, 1, pairReg(tag, mbxEpoch))
			mustUpdate(t, db, func(tx *Tx) error { return tx.tx.Bucket(bucketMbxReg).Put(tag[:], tt.v) })
			err := db.View(func(tx *Tx) error { _, _, err := tx.MailboxRegistrationOf(tag, mbxNow); return err })
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("MailboxRegistrationOf: %v, want ErrCorrupt", err)
			}
			err = db.View(func(tx *Tx) error { _, err := tx.MailboxRegisteredTags([][32]byte{tag}, mbxNow); return err })
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("MailboxRegisteredTags: %v, want ErrCorrupt", err)
			}
			if _, err := mbxPutReg(t, db, mbxEnvelope(tag, 1, 10, time.Hour), RegPair, mbxNow, MailboxLimits{}); !errors.Is(err, ErrCorrupt) {
				t.Errorf("MailboxPutRegistered: %v, want ErrCorrupt", err)
			}
			if _, err := mbxRegister(t, db, []MailboxRegistration{pairReg(tag, mbxEpoch+1)}, mbxNow); !errors.Is(err, ErrCorrupt) {
				t.Errorf("MailboxRegister: %v, want ErrCorrupt", err)
			}
		})
	}
	t.Run("count", func(t *testing.T) {
		db, _ := openTest(t)
		mustMbxRegister(t, db, 1, pairReg(tag, mbxEpoch))
		mustUpdate(t, db, func(tx *Tx) error { return tx.tx.Bucket(bucketMbxMeta).Put(keyMbxRegistrations, []byte{1}) })
		if err := db.View(func(tx *Tx) error { _, err := tx.MailboxRegistrationCount(); return err }); !errors.Is(err, ErrCorrupt) {
			t.Errorf("MailboxRegistrationCount: %v, want ErrCorrupt", err)
		}
		if _, err := mbxRegister(t, db, []MailboxRegistration{pairReg(mbxTag(2), mbxEpoch)}, mbxNow); !errors.Is(err, ErrCorrupt) {
			t.Errorf("MailboxRegister of a new tag: %v, want ErrCorrupt", err)
		}
	})
	t.Run("expiry index", func(t *testing.T) {
		db, _ := openTest(t)
		mustUpdate(t, db, func(tx *Tx) error { return tx.tx.Bucket(bucketMbxRegExp).Put(be64(1), present) })
		err := db.Update(func(tx *Tx) error { _, err := tx.MailboxSweep(mbxNow); return err })
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("sweep: %v, want ErrCorrupt", err)
		}
	})
	t.Run("index without registration", func(t *testing.T) {
		db, _ := openTest(t)
		mustUpdate(t, db, func(tx *Tx) error { return tx.tx.Bucket(bucketMbxRegExp).Put(concat(be64(1), tag[:]), present) })
		err := db.Update(func(tx *Tx) error { _, err := tx.MailboxSweep(mbxNow); return err })
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("sweep: %v, want ErrCorrupt", err)
		}
	})
}

func TestMailboxRegistrationSchemaUpgrade(t *testing.T) {
	// A mailbox made before registrations existed keeps its envelopes and
	// gains the registration buckets on open.
	old := openAtSchema(t, schemaBefore(t, "mailbox registrations"))
	v1 := mbxEnvelope(mbxTag(1), 1, 10, time.Hour)
	mustMbxPut(t, old, v1)
	mustView(t, old, func(tx *Tx) error {
		if _, err := tx.MailboxRegistrationCount(); !errors.Is(err, ErrCorrupt) {
			t.Errorf("registration count before the upgrade: %v, want a missing bucket", err)
		}
		return nil
	})
	db := upgrade(t, old)
	if n := mbxRegCount(t, db); n != 0 {
		t.Fatalf("%d registrations after the upgrade", n)
	}
	tag := mbxTag(2)
	mustMbxRegister(t, db, 1, pairReg(tag, mbxEpoch))
	v2 := mbxEnvelope(tag, 2, 10, time.Hour)
	mustMbxPutReg(t, db, v2, RegPair, MailboxLimits{})
	p := mbxQuery(t, db, [][32]byte{mbxTag(1), tag}, nil, 0, mbxNow)
	if len(p.Entries) != 2 || !bytes.Equal(p.Entries[0].Envelope, v1) || !bytes.Equal(p.Entries[1].Envelope, v2) {
		t.Fatalf("after the upgrade: %d envelopes", len(p.Entries))
	}
	if err := db.Check(); err != nil {
		t.Fatalf("Check after the upgrade: %v", err)
	}
}

// TestMailboxV1PutEvictsNoRegistered: while a mailbox still takes version 1
// deposits, their oldest-first eviction stops at an envelope a version 2
// deposit put under a registered tag: the version 1 deposit is refused
// instead, and the acknowledged envelope stays.
func TestMailboxV1PutEvictsNoRegistered(t *testing.T) {
	db, _ := openTest(t)
	lim := MailboxLimits{TotalEnvelopes: 3}
	reg := mbxTag(1)
	mustMbxRegister(t, db, 1, pairReg(reg, mbxEpoch))
	v1put := func(env []byte) error {
		return db.Update(func(tx *Tx) error { _, err := tx.MailboxPut(env, mbxNow, lim); return err })
	}
	// One version 1 envelope, then two registered ones, to the cap.
	if err := v1put(mbxEnvelope(mbxTag(9), 0, 100, time.Hour)); err != nil {
		t.Fatal(err)
	}
	held := [][]byte{mbxEnvelope(reg, 1, 100, time.Hour), mbxEnvelope(reg, 2, 100, time.Hour)}
	for _, e := range held {
		mustMbxPutReg(t, db, e, RegPair, lim)
	}
	// The first version 1 deposit past the cap evicts the version 1
	// envelope; the next would have to evict a registered one.
	if err := v1put(mbxEnvelope(mbxTag(9), 3, 100, time.Hour)); err != nil {
		t.Fatalf("version 1 deposit evicting a version 1 envelope: %v", err)
	}
	if err := v1put(mbxEnvelope(mbxTag(9), 4, 100, time.Hour)); !errors.Is(err, ErrMailboxFull) {
		t.Fatalf("version 1 deposit that would evict a registered envelope: %v, want ErrMailboxFull", err)
	}
	p := mbxQuery(t, db, [][32]byte{reg}, nil, 0, mbxNow)
	if len(p.Entries) != 2 || !bytes.Equal(p.Entries[0].Envelope, held[0]) || !bytes.Equal(p.Entries[1].Envelope, held[1]) {
		t.Fatalf("registered envelopes after version 1 pressure: %d served, want both", len(p.Entries))
	}
	checkMailbox(t, db)
}

// mbxHeld reports which of envs the mailbox serves under their tags.
func mbxHeld(t testing.TB, db *DB, tags [][32]byte, envs ...[]byte) []bool {
	t.Helper()
	p := mbxQuery(t, db, tags, nil, MaxMailboxPage, mbxNow)
	held := make([]bool, len(envs))
	for i, e := range envs {
		for _, got := range p.Entries {
			held[i] = held[i] || bytes.Equal(got.Envelope, e)
		}
	}
	return held
}

// TestMailboxV2EvictsV1: version 1 envelopes never take the room of
// version 2 deposits. A mailbox full of version 1 envelopes takes one
// registered deposit after another, each evicting the oldest version 1
// envelopes it needs, until registered envelopes alone fill it; then a
// registered deposit is refused and every one accepted before is served.
func TestMailboxV2EvictsV1(t *testing.T) {
	size := protocol.EnvelopeHeaderSize + 100
	tests := []struct {
		name string
		lim  MailboxLimits
		fit  int
	}{
		{"count", MailboxLimits{TotalEnvelopes: 6}, 6},
		{"bytes", MailboxLimits{TotalBytes: int64(6*size + 10)}, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, _ := openTest(t)
			regTags := [][32]byte{mbxTag(1), mbxTag(2)}
			mustMbxRegister(t, db, 2, pairReg(regTags[0], mbxEpoch), pairReg(regTags[1], mbxEpoch))
			var v1Tags [][32]byte
			var v1 [][]byte
			for i := range tt.fit {
				tag := mbxTag(100 + i)
				e := mbxEnvelope(tag, 100+i, 100, time.Hour)
				if stored, err := mbxPut(t, db, e, tt.lim); err != nil || !stored {
					t.Fatalf("version 1 envelope %d: %v, %v", i, stored, err)
				}
				v1Tags, v1 = append(v1Tags, tag), append(v1, e)
			}
			var reg [][]byte
			for i := range tt.fit {
				e := mbxEnvelope(regTags[i%2], i, 100, time.Hour)
				if stored, err := mbxPutReg(t, db, e, RegPair, mbxNow, tt.lim); err != nil || !stored {
					t.Fatalf("registered deposit %d into a mailbox holding %d version 1 envelopes: %v, %v", i, tt.fit-i, stored, err)
				}
				reg = append(reg, e)
				for j, held := range mbxHeld(t, db, v1Tags, v1...) {
					if held != (j > i) {
						t.Fatalf("after registered deposit %d, version 1 envelope %d held: %v; want the oldest evicted first", i, j, held)
					}
				}
			}
			checkMailbox(t, db)
			n0, b0 := mbxStats(t, db)
			if stored, err := mbxPutReg(t, db, mbxEnvelope(regTags[0], 99, 100, time.Hour), RegPair, mbxNow, tt.lim); stored || !errors.Is(err, ErrMailboxFull) {
				t.Fatalf("registered deposit into a mailbox full of registered envelopes: %v, %v; want ErrMailboxFull", stored, err)
			}
			if n, b := mbxStats(t, db); n != n0 || b != b0 {
				t.Fatalf("stats %d, %d after a refused deposit; were %d, %d", n, b, n0, b0)
			}
			for i, held := range mbxHeld(t, db, regTags, reg...) {
				if !held {
					t.Fatalf("registered envelope %d is gone", i)
				}
			}
		})
	}
}

// TestMailboxV2EvictsV1NotInVain: a registered deposit that would not fit
// even with every version 1 envelope gone is refused and evicts nothing;
// one that fits once they are gone evicts them.
func TestMailboxV2EvictsV1NotInVain(t *testing.T) {
	db, _ := openTest(t)
	h := protocol.EnvelopeHeaderSize
	lim := MailboxLimits{TotalBytes: int64(2*(h+100) + h + 8)}
	tag := mbxTag(1)
	mustMbxRegister(t, db, 1, pairReg(tag, mbxEpoch))
	mustMbxPutReg(t, db, mbxEnvelope(tag, 1, 100, time.Hour), RegPair, lim)
	small := mbxEnvelope(mbxTag(9), 2, 8, time.Hour)
	if stored, err := mbxPut(t, db, small, lim); err != nil || !stored {
		t.Fatalf("version 1 deposit: %v, %v", stored, err)
	}
	mustMbxPutReg(t, db, mbxEnvelope(tag, 3, 100, time.Hour), RegPair, lim)
	if stored, err := mbxPutReg(t, db, mbxEnvelope(tag, 4, 9, time.Hour), RegPair, mbxNow, lim); stored || !errors.Is(err, ErrMailboxFull) {
		t.Fatalf("registered deposit one byte larger than the version 1 envelopes: %v, %v; want ErrMailboxFull", stored, err)
	}
	if !mbxHeld(t, db, [][32]byte{mbxTag(9)}, small)[0] {
		t.Fatal("a refused registered deposit evicted the version 1 envelope")
	}
	mustMbxPutReg(t, db, mbxEnvelope(tag, 5, 8, time.Hour), RegPair, lim)
	if mbxHeld(t, db, [][32]byte{mbxTag(9)}, small)[0] {
		t.Fatal("the version 1 envelope is still held after a registered deposit needed its room")
	}
	checkMailbox(t, db)
}

// TestMailboxV1IndexSchemaUpgrade: a mailbox made before the index of
// version 1 envelopes counts as version 1 every envelope whose tag holds no
// registration, and keeps protecting the others.
func TestMailboxV1IndexSchemaUpgrade(t *testing.T) {
	old := openAtSchema(t, 6)
	lim := MailboxLimits{TotalEnvelopes: 4}
	reg, late := mbxTag(1), mbxTag(2)
	put := func(db *DB, env []byte) {
		t.Helper()
		if stored, err := mbxPut(t, db, env, lim); err != nil || !stored {
			t.Fatalf("version 1 deposit: %v, %v", stored, err)
		}
	}
	mustMbxRegister(t, old, 1, pairReg(reg, mbxEpoch))
	first := mbxEnvelope(mbxTag(9), 1, 100, time.Hour)
	put(old, first)
	// A version 1 envelope whose tag was registered after it arrived: the
	// mailbox protected it, and still does.
	underLate := mbxEnvelope(late, 2, 100, time.Hour)
	put(old, underLate)
	mustMbxRegister(t, old, 1, pairReg(late, mbxEpoch))
	held := mbxEnvelope(reg, 3, 100, time.Hour)
	mustMbxPutReg(t, old, held, RegPair, lim)
	last := mbxEnvelope(mbxTag(10), 4, 100, time.Hour)
	put(old, last)

	db := upgrade(t, old)
	checkMailbox(t, db)
	all := [][32]byte{mbxTag(9), mbxTag(10), reg, late}
	for i, want := range [][]bool{{false, true, true, true}, {false, true, true, false}} {
		if stored, err := mbxPutReg(t, db, mbxEnvelope(reg, 10+i, 100, time.Hour), RegPair, mbxNow, lim); err != nil || !stored {
			t.Fatalf("registered deposit %d after the upgrade: %v, %v", i, stored, err)
		}
		got := mbxHeld(t, db, all, first, underLate, held, last)
		if !slices.Equal(got, want) {
			t.Fatalf("after registered deposit %d, held %v; want %v (first, under a late registration, registered, last)", i, got, want)
		}
	}
	if stored, err := mbxPutReg(t, db, mbxEnvelope(reg, 20, 100, time.Hour), RegPair, mbxNow, lim); stored || !errors.Is(err, ErrMailboxFull) {
		t.Fatalf("registered deposit with no version 1 envelope left: %v, %v; want ErrMailboxFull", stored, err)
	}
	checkMailbox(t, db)
}
