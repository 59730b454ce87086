package p2p

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
	dssync "github.com/ipfs/go-datastore/sync"
	dht "github.com/libp2p/go-libp2p-kad-dht"

	"github.com/sotto-im/sotto/internal/testkit"
)

func TestBundleKey(t *testing.T) {
	acct := bytes.Repeat([]byte{0xab}, 32)
	key := BundleKey(acct)
	if want := "/sotto-bundle/" + string(bytes.Repeat([]byte("ab"), 32)); key != want {
		t.Fatalf("BundleKey = %q, want %q", key, want)
	}
	got, err := parseBundleKey(key)
	if err != nil || !bytes.Equal(got, acct) {
		t.Fatalf("parseBundleKey = %x, %v", got, err)
	}
	for _, bad := range []string{
		"/sotto-bundle/",
		"/sotto-bundle/AB",
		"/sotto-bundle/abc",
		"/sotto-bundle/zz",
		"/pk/ab",
		"sotto-bundle/ab",
		"/sotto-bundle/" + string(bytes.Repeat([]byte("ab"), MaxBundleKeyLen+1)),
	} {
		if _, err := parseBundleKey(bad); !errors.Is(err, ErrBadRecordKey) {
			t.Errorf("parseBundleKey(%q) = %v, want ErrBadRecordKey", bad, err)
		}
	}
}

func TestBundleValidator(t *testing.T) {
	key := BundleKey([]byte("account"))
	v := bundleValidator{v: fakeVerifier{}, now: time.Now}
	tests := []struct {
		name  string
		key   string
		value []byte
		want  error // nil: valid
	}{
		{"valid", key, fakeBundle(1, "valid"), nil},
		{"forged", key, fakeBundle(9, "forged"), errForged},
		{"short", key, []byte("x"), errForged},
		{"bad key", "/sotto-bundle/XYZ", fakeBundle(1, "valid"), ErrBadRecordKey},
		{"too large", key, append(fakeBundle(1, "valid"), make([]byte, MaxBundleRecordSize)...), ErrRecordTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := v.Validate(tt.key, tt.value)
			if tt.want == nil && err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Validate = %v, want %v", err, tt.want)
			}
		})
	}
	if err := (bundleValidator{now: time.Now}).Validate(key, fakeBundle(1, "valid")); !errors.Is(err, ErrNoVerifier) {
		t.Fatalf("Validate without verifier = %v, want ErrNoVerifier", err)
	}
}

func TestBundleValidatorSelect(t *testing.T) {
	key := BundleKey([]byte("account"))
	v := bundleValidator{v: fakeVerifier{}, now: time.Now}
	tests := []struct {
		name   string
		values [][]byte
		want   int // -1: error
	}{
		{"single", [][]byte{fakeBundle(1, "valid")}, 0},
		{"highest seq wins", [][]byte{fakeBundle(1, "valid"), fakeBundle(3, "valid"), fakeBundle(2, "valid")}, 1},
		{"forged higher seq ignored", [][]byte{fakeBundle(2, "valid"), fakeBundle(99, "forged")}, 0},
		{"tie keeps first", [][]byte{fakeBundle(5, "valid"), fakeBundle(5, "valid")}, 0},
		{"none valid", [][]byte{fakeBundle(1, "forged"), []byte("x")}, -1},
		{"empty", nil, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := v.Select(key, tt.values)
			if tt.want < 0 {
				if !errors.Is(err, ErrNoValidRecord) {
					t.Fatalf("Select = %d, %v, want ErrNoValidRecord", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Select = %d, %v, want %d", got, err, tt.want)
			}
		})
	}
}

func TestValidatorGetsClock(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	var seen time.Time
	v := bundleValidator{
		v: BundleVerifierFunc(func(key string, value []byte, now time.Time) (uint64, error) {
			seen = now
			return 1, nil
		}),
		now: func() time.Time { return at },
	}
	if err := v.Validate(BundleKey([]byte("a")), []byte("v")); err != nil {
		t.Fatal(err)
	}
	if !seen.Equal(at) {
		t.Fatalf("verifier saw time %v, want %v", seen, at)
	}
}

func seqOf(t *testing.T, v []byte) uint64 {
	t.Helper()
	if len(v) < 8 {
		t.Fatalf("record of %d bytes", len(v))
	}
	return binary.BigEndian.Uint64(v)
}

func TestBundleRecordAcrossHosts(t *testing.T) {
	_, a, b, _, _ := threeHosts(t, WithNAT(false))
	ctx := testkit.Context(t, 60*time.Second)
	acct := []byte("alice-account-key-32-bytes-long!")

	if err := a.PutBundle(ctx, acct, fakeBundle(1, "valid")); err != nil {
		t.Fatalf("PutBundle: %v", err)
	}
	got, err := b.GetBundle(ctx, acct)
	if err != nil {
		t.Fatalf("GetBundle: %v", err)
	}
	if !bytes.Equal(got, fakeBundle(1, "valid")) {
		t.Fatalf("GetBundle = %x", got)
	}

	// A newer record replaces it; an older one is refused.
	if err := a.PutBundle(ctx, acct, fakeBundle(5, "valid")); err != nil {
		t.Fatalf("PutBundle(seq 5): %v", err)
	}
	if err := a.PutBundle(ctx, acct, fakeBundle(3, "valid")); !errors.Is(err, ErrStaleBundle) {
		t.Fatalf("PutBundle with a lower seq = %v, want ErrStaleBundle", err)
	}
	// A node that did not publish the newer record is refused by the DHT.
	if err := b.PutBundle(ctx, acct, fakeBundle(4, "valid")); err == nil {
		t.Fatal("PutBundle below the stored seq succeeded")
	}
	got, err = b.GetBundle(ctx, acct)
	if err != nil {
		t.Fatalf("GetBundle: %v", err)
	}
	if seqOf(t, got) != 5 {
		t.Fatalf("GetBundle returned seq %d, want 5", seqOf(t, got))
	}

	// The local check refuses a forged record before it reaches the DHT.
	if err := a.PutBundle(ctx, acct, fakeBundle(9, "forged")); !errors.Is(err, errForged) {
		t.Fatalf("PutBundle(forged) = %v, want the verifier's error", err)
	}
}

func TestForgedRecordFromLyingHost(t *testing.T) {
	// liar's verifier accepts anything, so it stores and serves a forged
	// record; honest nodes must refuse it.
	ctx := testkit.Context(t, 60*time.Second)
	boot := newTestHost(t, WithNAT(false))
	liar := newTestHost(t, WithNAT(false), WithBundleVerifier(acceptAll), WithBootstrapPeers(boot.AddrInfo()))
	honest := newTestHost(t, WithNAT(false), WithBootstrapPeers(boot.AddrInfo()))
	for _, h := range []*Host{liar, honest} {
		if err := h.Bootstrap(ctx); err != nil {
			t.Fatal(err)
		}
	}
	acct := []byte("bob")
	if err := liar.PutBundle(ctx, acct, fakeBundle(7, "forged")); err != nil {
		t.Logf("liar PutBundle: %v (honest peers refuse to store it)", err)
	}
	if v, err := liar.GetBundle(ctx, acct); err != nil || !bytes.HasSuffix(v, []byte("forged")) {
		t.Fatalf("liar does not hold its forged record: %v", err)
	}
	if _, err := boot.GetBundle(ctx, acct); !errors.Is(err, ErrBundleNotFound) {
		t.Fatalf("honest bootstrap node GetBundle = %v, want ErrBundleNotFound", err)
	}
	if _, err := honest.GetBundle(ctx, acct); !errors.Is(err, ErrBundleNotFound) {
		t.Fatalf("honest GetBundle = %v, want ErrBundleNotFound", err)
	}

	// A valid record from the liar is still accepted by honest nodes, and
	// preferred over the forged one with a higher seq.
	if err := liar.PutBundle(ctx, acct, fakeBundle(8, "valid")); err != nil {
		t.Fatalf("PutBundle(valid): %v", err)
	}
	got, err := honest.GetBundle(ctx, acct)
	if err != nil || !bytes.Equal(got, fakeBundle(8, "valid")) {
		t.Fatalf("honest GetBundle = %q, %v", got, err)
	}
}

func TestRepublish(t *testing.T) {
	tests := []struct {
		name     string
		interval time.Duration
		onDemand bool
	}{
		{"on demand", DefaultRepublishInterval, true},
		{"on schedule", MinRepublishInterval, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testkit.Context(t, 60*time.Second)
			boot := newTestHost(t, WithNAT(false))
			a := newTestHost(t, WithNAT(false), WithBootstrapPeers(boot.AddrInfo()), WithRepublishInterval(tt.interval))
			if err := a.Bootstrap(ctx); err != nil {
				t.Fatal(err)
			}
			acct := []byte("carol")
			if err := a.PutBundle(ctx, acct, fakeBundle(2, "valid")); err != nil {
				t.Fatal(err)
			}
			// c joins after the put: it holds no copy until a republishes.
			store := dssync.MutexWrap(ds.NewMapDatastore())
			holds := func() bool {
				res, err := store.Query(ctx, query.Query{})
				if err != nil {
					t.Fatal(err)
				}
				defer res.Close()
				for e := range res.Next() {
					if bytes.Contains(e.Value, fakeBundle(2, "valid")) {
						return true
					}
				}
				return false
			}
			c := newTestHost(t, WithNAT(false), WithBootstrapPeers(boot.AddrInfo()), withDHTOptions(dht.ValueDatastore(store)))
			if err := c.Bootstrap(ctx); err != nil {
				t.Fatal(err)
			}
			if err := c.Connect(ctx, a.AddrInfo()); err != nil {
				t.Fatal(err)
			}
			if holds() {
				t.Fatal("c holds the record before any republish")
			}
			if tt.onDemand {
				a.RepublishNow()
			}
			testkit.WaitFor(t, ctx, holds)
		})
	}
}
