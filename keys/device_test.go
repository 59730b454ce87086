package keys

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
	"time"
)

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testPeerID is shaped like a binary libp2p peer ID: identity multihash of
// a protobuf Ed25519 public key (38 bytes).
var testPeerID = append([]byte{0x00, 0x24, 0x08, 0x01, 0x12, 0x20}, bytes.Repeat([]byte{0xab}, 32)...)

func testAccount(t testing.TB, label string) *AccountPrivate {
	t.Helper()
	a, err := GenerateAccount(testRand(label))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func testDevice(t testing.TB, acct *AccountPrivate, label string) (DeviceCertificate, *DHPrivate) {
	t.Helper()
	ik, err := GenerateDH(testRand(label))
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewDeviceCertificate(acct, testPeerID, ik.Public(), testNow)
	if err != nil {
		t.Fatal(err)
	}
	return c, ik
}

// TestDeviceCertificateKnownAnswer pins the encoding (and with it the
// signing input, since Ed25519 is deterministic).
func TestDeviceCertificateKnownAnswer(t *testing.T) {
	acct, err := NewAccountPrivate(bytes.Repeat([]byte{0x01}, 32))
	if err != nil {
		t.Fatal(err)
	}
	ik, err := NewDHPrivate(bytes.Repeat([]byte{0x02}, 32))
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewDeviceCertificate(acct, []byte{0x00, 0x03, 0xaa, 0xbb, 0xcc}, ik.Public(), time.Unix(1700000000, 999))
	if err != nil {
		t.Fatal(err)
	}
	got := hex.EncodeToString(c.Marshal())
	if got != wantDeviceCertHex {
		t.Errorf("encoding =\n%s\nwant\n%s", got, wantDeviceCertHex)
	}
	if err := c.Verify(); err != nil {
		t.Fatal(err)
	}
	p, err := ParseDeviceCertificate(mustHex(t, wantDeviceCertHex))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Equal(c) || !p.Created.Equal(time.Unix(1700000000, 0)) {
		t.Fatalf("parsed %+v", p)
	}
}

const wantDeviceCertHex = "018a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c050003aabbccce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59000000006553f10083572b1d3e9e890f5c33230b98a41907c743696e361e6d5363eea28b2f354904d88ec02985df52a74ea0c41598a0faaafd847df137252a2dbe481d8db3ecb701"

func TestDeviceCertificateVerify(t *testing.T) {
	acct := testAccount(t, "device-acct")
	other := testAccount(t, "device-other")
	base, _ := testDevice(t, acct, "device-ik")
	lo := DHPublic(lowOrder[2])
	cases := []struct {
		name   string
		mutate func(c *DeviceCertificate)
		want   error
	}{
		{"valid", func(c *DeviceCertificate) {}, nil},
		{"flipped signature", func(c *DeviceCertificate) { c.Signature[0] ^= 1 }, ErrDeviceSignature},
		{"zero signature", func(c *DeviceCertificate) { c.Signature = [SignatureSize]byte{} }, ErrDeviceSignature},
		{"other account", func(c *DeviceCertificate) { c.Account = other.Public() }, ErrDeviceSignature},
		{"peer ID changed", func(c *DeviceCertificate) { c.PeerID = append(bytes.Clone(c.PeerID[:len(c.PeerID)-1]), 0) }, ErrDeviceSignature},
		{"identity key changed", func(c *DeviceCertificate) { c.IdentityDH[0] ^= 2 }, ErrDeviceSignature},
		{"created changed", func(c *DeviceCertificate) { c.Created = c.Created.Add(time.Second) }, ErrDeviceSignature},
		{"empty peer ID", func(c *DeviceCertificate) { c.PeerID = nil }, ErrDeviceMalformed},
		{"long peer ID", func(c *DeviceCertificate) { c.PeerID = make([]byte, MaxPeerIDSize+1) }, ErrDeviceMalformed},
		{"zero account", func(c *DeviceCertificate) { c.Account = AccountPublic{} }, ErrDeviceMalformed},
		{"created before 1970", func(c *DeviceCertificate) { c.Created = time.Time{} }, ErrDeviceMalformed},
		{"low-order identity key", func(c *DeviceCertificate) { c.IdentityDH = lo }, ErrDHLowOrder},
		{"non-canonical identity key", func(c *DeviceCertificate) { c.IdentityDH[31] |= 0x80 }, ErrDHNonCanonical},
	}
	all := []error{ErrDeviceSignature, ErrDeviceMalformed, ErrDeviceVersion, ErrDHLowOrder, ErrDHNonCanonical}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cert := base
			cert.PeerID = bytes.Clone(base.PeerID)
			c.mutate(&cert)
			checkErr(t, cert.Verify(), c.want, all)
		})
	}
	// A certificate with a bad key cannot be made either.
	if _, err := NewDeviceCertificate(acct, testPeerID, lo, testNow); !errors.Is(err, ErrDHLowOrder) {
		t.Errorf("NewDeviceCertificate with low-order key: %v", err)
	}
	if _, err := NewDeviceCertificate(acct, nil, base.IdentityDH, testNow); !errors.Is(err, ErrDeviceMalformed) {
		t.Errorf("NewDeviceCertificate without peer ID: %v", err)
	}
}

// checkErr asserts that err matches want (nil meaning success) and none
// of the other sentinels in all.
func checkErr(t *testing.T, err, want error, all []error) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if !errors.Is(err, want) {
		t.Fatalf("got %v, want %v", err, want)
	}
	for _, o := range all {
		if o != want && errors.Is(err, o) {
			t.Fatalf("error %v also matches %v", err, o)
		}
	}
}

func TestParseDeviceCertificate(t *testing.T) {
	acct := testAccount(t, "device-parse")
	cert, _ := testDevice(t, acct, "device-parse-ik")
	enc := cert.Marshal()
	p, err := ParseDeviceCertificate(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p.Marshal(), enc) || p.Verify() != nil {
		t.Fatal("round trip failed")
	}
	peerLenOff := 1 + AccountSize
	ikOff := peerLenOff + 1 + len(testPeerID)
	createdOff := ikOff + DHSize
	with := func(off int, v ...byte) []byte {
		b := bytes.Clone(enc)
		copy(b[off:], v)
		return b
	}
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrDeviceMalformed},
		{"version 0", with(0, 0), ErrDeviceVersion},
		{"version 2", with(0, 2), ErrDeviceVersion},
		{"trailing byte", append(bytes.Clone(enc), 0), ErrDeviceMalformed},
		{"peer ID length 0", with(peerLenOff, 0), ErrDeviceMalformed},
		{"peer ID length 65", with(peerLenOff, 65), ErrDeviceMalformed},
		{"peer ID length too long for data", with(peerLenOff, 64), ErrDeviceMalformed},
		{"low-order identity key", with(ikOff, lowOrder[1][:]...), ErrDHLowOrder},
		{"non-canonical identity key", with(ikOff+31, 0xff), ErrDHNonCanonical},
		{"created out of range", with(createdOff, 0x80), ErrDeviceMalformed},
		{"zero account", with(1, make([]byte, 32)...), ErrDeviceMalformed},
	}
	all := []error{ErrDeviceSignature, ErrDeviceMalformed, ErrDeviceVersion, ErrDHLowOrder, ErrDHNonCanonical}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseDeviceCertificate(c.in)
			checkErr(t, err, c.want, all)
		})
	}
	for n := range len(enc) {
		if _, err := ParseDeviceCertificate(enc[:n]); err == nil {
			t.Fatalf("prefix of %d bytes parsed", n)
		}
	}
}

func FuzzParseDeviceCertificate(f *testing.F) {
	acct := testAccount(f, "fuzz-device")
	cert, _ := testDevice(f, acct, "fuzz-device-ik")
	enc := cert.Marshal()
	f.Add(enc)
	f.Add(enc[:40])
	f.Add(mustHex(f, wantDeviceCertHex))
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseDeviceCertificate(data)
		if err != nil {
			return
		}
		if !bytes.Equal(c.Marshal(), data) {
			t.Fatalf("not canonical:\n in %x\nout %x", data, c.Marshal())
		}
		_ = c.Verify()
	})
}
