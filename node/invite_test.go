package node

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/sotto-im/sotto/keys"
)

func testInvite(t testing.TB, seed uint64) *Invite {
	t.Helper()
	rng := rand.NewChaCha8([32]byte{byte(seed)})
	acct, err := keys.GenerateAccount(rng)
	if err != nil {
		t.Fatal(err)
	}
	hostKey, _, err := crypto.GenerateEd25519Key(rng)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(hostKey)
	if err != nil {
		t.Fatal(err)
	}
	ik, err := keys.GenerateDH(rng)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := keys.NewDeviceCertificate(acct, []byte(id), ik.Public(), time.Unix(1_800_000_000, 0))
	if err != nil {
		t.Fatal(err)
	}
	return &Invite{Device: cert, Addrs: []ma.Multiaddr{
		ma.StringCast("/ip4/127.0.0.1/tcp/4001"),
		ma.StringCast("/ip4/127.0.0.1/udp/4001/quic-v1"),
	}}
}

// rawInvite re-encodes body with a valid checksum, so tests can reach the
// checks behind the checksum.
func rawInvite(body []byte) string {
	body = append(body, inviteChecksum(body)...)
	return InviteScheme + strings.ToLower(inviteEncoding.EncodeToString(body))
}

func inviteBody(t *testing.T, s string) []byte {
	t.Helper()
	raw, err := inviteEncoding.DecodeString(strings.ToUpper(strings.TrimPrefix(s, InviteScheme)))
	if err != nil {
		t.Fatal(err)
	}
	return raw[:len(raw)-inviteChecksumSize]
}

func TestInviteRoundTrip(t *testing.T) {
	inv := testInvite(t, 1)
	s := inv.String()
	if !strings.HasPrefix(s, InviteScheme) || strings.ContainsAny(s, " \n=") {
		t.Fatalf("bad text form %q", s)
	}
	for _, in := range []string{s, "  " + s + "\n", strings.ToUpper(s)} {
		got, err := ParseInvite(in)
		if err != nil {
			t.Fatalf("ParseInvite(%q): %v", in, err)
		}
		if !got.Device.Equal(inv.Device) || len(got.Addrs) != 2 || !got.Addrs[1].Equal(inv.Addrs[1]) {
			t.Fatalf("round trip changed the invite: %+v", got)
		}
		if got.String() != s {
			t.Fatal("re-encoding differs")
		}
	}
	id, err := inv.PeerID()
	if err != nil || string(id) != string(inv.Device.PeerID) {
		t.Fatalf("PeerID = %v, %v", id, err)
	}
	if inv.Account() != inv.Device.Account {
		t.Fatal("Account differs from the certificate's")
	}
}

func TestInviteRejects(t *testing.T) {
	inv := testInvite(t, 2)
	good := inv.String()
	body := inviteBody(t, good)
	certLen := int(binary.BigEndian.Uint16(body[1:3]))

	flipped := []byte(good)
	i := len(InviteScheme) + 10
	if flipped[i] == 'a' {
		flipped[i] = 'b'
	} else {
		flipped[i] = 'a'
	}

	forged := append([]byte(nil), body...)
	forged[3+certLen-1] ^= 1 // last signature byte

	newer := append([]byte(nil), body...)
	newer[0] = 2

	tooMany := append([]byte(nil), body[:3+certLen]...)
	tooMany = append(tooMany, MaxInviteAddrs+1)

	badAddr := append([]byte(nil), body[:3+certLen]...)
	badAddr = append(badAddr, 1, 0, 3, 0xff, 0xff, 0xff)

	for _, tc := range []struct {
		name string
		in   string
		want error
	}{
		{"empty", "", ErrInviteFormat},
		{"other scheme", "https://example.invalid/x", ErrInviteFormat},
		{"not base32", InviteScheme + "!!!!", ErrInviteFormat},
		{"checksum", string(flipped), ErrInviteChecksum},
		{"truncated", good[:len(good)-8], ErrInviteChecksum},
		{"newer version", rawInvite(newer), ErrInviteVersion},
		{"forged certificate", rawInvite(forged), keys.ErrDeviceSignature},
		{"trailing bytes", rawInvite(append(append([]byte(nil), body...), 0)), ErrInviteFormat},
		{"too many addresses", rawInvite(tooMany), ErrInviteFormat},
		{"bad address", rawInvite(badAddr), ErrInviteFormat},
		{"cut inside certificate", rawInvite(body[:3+certLen/2]), ErrInviteFormat},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseInvite(tc.in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("ParseInvite = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestInviteChecksumLabel(t *testing.T) {
	// The checksum is domain separated: a plain SHA-256 prefix must not match.
	body := []byte{1, 2, 3}
	plain := sha256.Sum256(body)
	if string(inviteChecksum(body)) == string(plain[:inviteChecksumSize]) {
		t.Fatal("checksum is not domain separated")
	}
}

func FuzzParseInvite(f *testing.F) {
	f.Add(testInvite(f, 3).String())
	f.Add(InviteScheme)
	f.Add("sotto://aaaa")
	f.Fuzz(func(t *testing.T, s string) {
		inv, err := ParseInvite(s)
		if err != nil {
			return
		}
		again, err := ParseInvite(inv.String())
		if err != nil {
			t.Fatalf("re-encoded invite does not parse: %v", err)
		}
		if again.String() != inv.String() {
			t.Fatal("invite encoding is not canonical")
		}
	})
}
