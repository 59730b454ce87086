package protocol

import (
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/sotto-im/sotto/keys"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The expected values were computed with an independent HKDF-SHA256
// implementation (RFC 5869 over Python's hmac module).
func TestIntroTagKnownAnswers(t *testing.T) {
	var acct keys.AccountPublic
	for i := range acct {
		acct[i] = byte(i)
	}
	for _, tc := range []struct {
		epoch uint64
		want  string
	}{
		{0, "b5b525b3a7d4d6df343b133f941cf4073b0cbda961041e8c0b21d2f8ad9d44f0"},
		{20000, "336ecea85587d2b56538470e9a653dd5db7b3215831ae69203c367902e4cc644"},
		{20419, "97750b6c673bc46781a23cf6b8ae110f83118a4a8040125ffc9ecd3a77357611"},
	} {
		got := IntroTag(acct, tc.epoch)
		if hex.EncodeToString(got[:]) != tc.want {
			t.Errorf("IntroTag(epoch %d) = %x, want %s", tc.epoch, got, tc.want)
		}
	}
}

func TestPairTagKnownAnswers(t *testing.T) {
	var seed [32]byte
	for i := range seed {
		seed[i] = 0x42
	}
	for _, tc := range []struct {
		sender byte
		epoch  uint64
		want   string
	}{
		{FromInitiator, 20419, "f526bcef7cddebd9e55363f0a69ff7e811027afe82e13757d7e6124d81e82583"},
		{FromInitiator, 20420, "d8d43b4a469bb63d233b7715d2c5f237f1198a67b85a9c1aed27f716f02a25ab"},
		{FromResponder, 20419, "d08e4d568543bb8019da5577ff0a61a4621c3eb21ad3a4668c030b8024b9cf07"},
		{FromResponder, 20420, "223a31adf1e73cecb919c40e429709a130bf301a77478cb3a26e8ff39878e1d7"},
	} {
		got := PairTag(seed, tc.sender, tc.epoch)
		if hex.EncodeToString(got[:]) != tc.want {
			t.Errorf("PairTag(sender %d, epoch %d) = %x, want %s", tc.sender, tc.epoch, got, tc.want)
		}
	}
}

func TestTagsAreDistinct(t *testing.T) {
	var a, b keys.AccountPublic
	a[0], b[0] = 1, 2
	var s1, s2 [32]byte
	s1[0], s2[0] = 1, 2
	seen := map[Tag]string{}
	add := func(name string, tag Tag) {
		t.Helper()
		if prev, ok := seen[tag]; ok {
			t.Errorf("%s and %s share tag %v", name, prev, tag)
		}
		seen[tag] = name
	}
	for _, e := range []uint64{0, 1, 20419, 20420} {
		add("intro a "+itoa(e), IntroTag(a, e))
		add("intro b "+itoa(e), IntroTag(b, e))
		for _, dir := range []byte{FromInitiator, FromResponder} {
			add("pair s1 "+itoa(uint64(dir))+" "+itoa(e), PairTag(s1, dir, e))
			add("pair s2 "+itoa(uint64(dir))+" "+itoa(e), PairTag(s2, dir, e))
		}
	}
	// The pair tag must not equal the intro tag of an account whose key
	// happens to equal the seed: the labels separate them.
	if PairTag(s1, FromInitiator, 5) == IntroTag(keys.AccountPublic(s1), 5) {
		t.Error("pair and intro tags collide for equal inputs")
	}
}

func itoa(v uint64) string {
	if v == 0 {
		return "0"
	}
	var b []byte
	for ; v > 0; v /= 10 {
		b = append([]byte{byte('0' + v%10)}, b...)
	}
	return string(b)
}

func TestEpoch(t *testing.T) {
	for _, tc := range []struct {
		t    time.Time
		want uint64
	}{
		{time.Unix(0, 0), 0},
		{time.Unix(86399, 0), 0},
		{time.Unix(86400, 0), 1},
		{time.Unix(-1, 0), 0},
		{time.Date(2025, 11, 27, 0, 0, 0, 0, time.UTC), 20419},
		{time.Date(2025, 11, 27, 23, 59, 59, 999999999, time.UTC), 20419},
		{time.Date(2025, 11, 28, 0, 0, 0, 0, time.UTC), 20420},
		// Epochs are UTC days whatever the zone of the time value.
		{time.Date(2025, 11, 27, 23, 30, 0, 0, time.FixedZone("UTC-5", -5*3600)), 20420},
	} {
		if got := Epoch(tc.t); got != tc.want {
			t.Errorf("Epoch(%v) = %d, want %d", tc.t, got, tc.want)
		}
	}
}

func TestLiveEpochs(t *testing.T) {
	now := time.Date(2025, 11, 27, 12, 0, 0, 0, time.UTC) // epoch 20419
	got := LiveEpochs(now)
	// now − 15 days is epoch 20404; now + 1 day is epoch 20420.
	if len(got) != 17 || got[0] != 20404 || got[len(got)-1] != 20420 {
		t.Fatalf("LiveEpochs = %v, want 20404..20420", got)
	}
	for i := 1; i < len(got); i++ {
		if got[i] != got[i-1]+1 {
			t.Fatalf("LiveEpochs not consecutive: %v", got)
		}
	}
	// Property: an envelope sent at s by a clock up to a day off, still
	// alive at now, has its epoch in the live set.
	live := map[uint64]bool{}
	for _, e := range got {
		live[e] = true
	}
	for off := -MaxTTL - LiveEpochMargin; off <= LiveEpochMargin; off += time.Hour {
		if s := now.Add(off); !live[Epoch(s)] {
			t.Errorf("send time %v (epoch %d) not covered", s, Epoch(s))
		}
	}
	// Near the Unix epoch the window is clamped, not wrapped.
	if early := LiveEpochs(time.Unix(3600, 0)); early[0] != 0 || early[len(early)-1] != 1 {
		t.Errorf("LiveEpochs near 1970 = %v", early)
	}
}

func TestShard(t *testing.T) {
	tag := Tag{0x12, 0x34}
	for _, tc := range []struct {
		n, want uint16
	}{
		{0, 0},
		{1, 0},
		{16, 0x1234 % 16},
		{256, 0x34},
		{1000, 0x1234 % 1000},
		{65535, 0x1234},
	} {
		if got := tag.Shard(tc.n); got != tc.want {
			t.Errorf("Shard(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
	// Every result is in range.
	for i := range 2000 {
		tg := IntroTag(keys.AccountPublic{1}, uint64(i))
		if s := tg.Shard(7); s >= 7 {
			t.Fatalf("Shard(7) = %d", s)
		}
	}
}

func TestTagString(t *testing.T) {
	want := "tag:ab" + strings.Repeat("00", TagSize-1)
	if got := (Tag{0xab}).String(); got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}

func TestIsIntroTag(t *testing.T) {
	var acct, other keys.AccountPublic
	acct[0], other[0] = 1, 2
	now := EpochStart(20000).Add(time.Hour)
	live := LiveEpochs(now)
	for _, e := range []uint64{live[0], Epoch(now), live[len(live)-1]} {
		if !IsIntroTag(acct, IntroTag(acct, e), now) {
			t.Errorf("the intro tag of live epoch %d is not recognised", e)
		}
	}
	for _, tag := range []Tag{IntroTag(acct, live[0]-1), IntroTag(acct, live[len(live)-1]+1), IntroTag(other, Epoch(now)), {}} {
		if IsIntroTag(acct, tag, now) {
			t.Errorf("%x taken as an intro tag", tag[:4])
		}
	}
}

func TestEpochStart(t *testing.T) {
	for _, e := range []uint64{1, 20000} {
		s := EpochStart(e)
		if Epoch(s) != e || Epoch(s.Add(-time.Second)) != e-1 {
			t.Errorf("EpochStart(%d) = %v is not the first instant of the epoch", e, s)
		}
	}
}
