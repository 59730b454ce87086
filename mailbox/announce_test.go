package mailbox

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

func seededPeer(t *testing.T, b byte) peer.ID {
	t.Helper()
	k, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// The expected bytes were assembled by hand from the multiaddr and peer ID
// specifications (ip4 0x04, tcp 0x06, udp 0x0111, quic-v1 0x01cd, p2p
// 0x01a5 in the multicodec table), with the Ed25519 public keys computed
// by OpenSSL 3.0.
func TestAnnouncementKnownAnswer(t *testing.T) {
	mbxs := []peer.AddrInfo{
		{ID: seededPeer(t, 1), Addrs: []ma.Multiaddr{ma.StringCast("/ip4/198.51.100.7/tcp/4001")}},
		{ID: seededPeer(t, 2), Addrs: []ma.Multiaddr{ma.StringCast("/ip4/203.0.113.9/udp/4001/quic-v1")}},
	}
	b, err := EncodeAnnouncement(mbxs)
	if err != nil {
		t.Fatal(err)
	}
	const want = "02003104c6336407060fa1a503260024080112208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c003404cb00710991020fa1cd03a503260024080112208139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394"
	if hex.EncodeToString(b) != want {
		t.Fatalf("announcement =\n%x\nwant\n%s", b, want)
	}
	got, err := ParseAnnouncement(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != mbxs[0].ID || got[1].ID != mbxs[1].ID || !got[1].Addrs[0].Equal(mbxs[1].Addrs[0]) {
		t.Fatalf("parsed %v, want %v", got, mbxs)
	}
}

func TestAnnouncementMergesAddrsAndRejects(t *testing.T) {
	one := peer.AddrInfo{ID: seededPeer(t, 3), Addrs: []ma.Multiaddr{
		ma.StringCast("/ip4/198.51.100.7/tcp/4001"), ma.StringCast("/ip4/198.51.100.7/udp/4001/quic-v1")}}
	b, err := EncodeAnnouncement([]peer.AddrInfo{one})
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseAnnouncement(b)
	if err != nil || len(got) != 1 || len(got[0].Addrs) != 2 {
		t.Fatalf("a mailbox with two addresses parsed as %v, %v", got, err)
	}
	bare := ma.StringCast("/ip4/198.51.100.7/tcp/4001").Bytes()
	entry := func(a []byte) []byte { return append([]byte{byte(len(a) >> 8), byte(len(a))}, a...) }
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"count 0", []byte{0}},
		{"count 9", append([]byte{9}, bytes.Repeat(b[1:], 9)...)},
		{"cut short", b[:len(b)-1]},
		{"trailing byte", append(bytes.Clone(b), 0)},
		{"length 0", []byte{1, 0, 0}},
		{"length 257", append([]byte{1, 1, 1}, make([]byte, 257)...)},
		{"not a multiaddr", append([]byte{1}, entry([]byte{0xff, 0xff, 0xff})...)},
		{"no /p2p", append([]byte{1}, entry(bare)...)},
	} {
		if _, err := ParseAnnouncement(tc.b); !errors.Is(err, ErrBadAnnouncement) {
			t.Errorf("%s: ParseAnnouncement = %v, want ErrBadAnnouncement", tc.name, err)
		}
	}
	var many []peer.AddrInfo
	for i := range 9 {
		many = append(many, peer.AddrInfo{ID: seededPeer(t, byte(10+i)), Addrs: []ma.Multiaddr{ma.StringCast("/ip4/198.51.100.7/tcp/4001")}})
	}
	if _, err := EncodeAnnouncement(many); !errors.Is(err, ErrBadAnnouncement) {
		t.Errorf("announcing 9 addresses: %v, want ErrBadAnnouncement", err)
	}
}
