package invite

import (
	"bytes"
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
	body = append(body, checksum(body)...)
	return Scheme + strings.ToLower(encoding.EncodeToString(body))
}

func inviteBody(t *testing.T, s string) []byte {
	t.Helper()
	raw, err := encoding.DecodeString(strings.ToUpper(strings.TrimPrefix(s, Scheme)))
	if err != nil {
		t.Fatal(err)
	}
	return raw[:len(raw)-checksumSize]
}

func TestInviteRoundTrip(t *testing.T) {
	inv := testInvite(t, 1)
	s := inv.String()
	if !strings.HasPrefix(s, Scheme) || strings.ContainsAny(s, " \n=") {
		t.Fatalf("bad text form %q", s)
	}
	for _, in := range []string{s, "  " + s + "\n", strings.ToUpper(s)} {
		got, err := Parse(in)
		if err != nil {
			t.Fatalf("Parse(%q): %v", in, err)
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
	i := len(Scheme) + 10
	if flipped[i] == 'a' {
		flipped[i] = 'b'
	} else {
		flipped[i] = 'a'
	}

	forged := append([]byte(nil), body...)
	forged[3+certLen-1] ^= 1 // last signature byte

	newer := append([]byte(nil), body...)
	newer[0] = 4

	tooMany := append([]byte(nil), body[:3+certLen]...)
	tooMany = append(tooMany, MaxAddrs+1)

	badAddr := append([]byte(nil), body[:3+certLen]...)
	badAddr = append(badAddr, 1, 0, 3, 0xff, 0xff, 0xff)

	for _, tc := range []struct {
		name string
		in   string
		want error
	}{
		{"empty", "", ErrFormat},
		{"other scheme", "https://example.invalid/x", ErrFormat},
		{"not base32", Scheme + "!!!!", ErrFormat},
		{"checksum", string(flipped), ErrChecksum},
		{"truncated", good[:len(good)-8], ErrChecksum},
		{"newer version", rawInvite(newer), ErrVersion},
		{"forged certificate", rawInvite(forged), keys.ErrDeviceSignature},
		{"trailing bytes", rawInvite(append(append([]byte(nil), body...), 0)), ErrFormat},
		{"too many addresses", rawInvite(tooMany), ErrFormat},
		{"bad address", rawInvite(badAddr), ErrFormat},
		{"cut inside certificate", rawInvite(body[:3+certLen/2]), ErrFormat},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.in)
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
	if string(checksum(body)) == string(plain[:checksumSize]) {
		t.Fatal("checksum is not domain separated")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(testInvite(f, 3).String())
	f.Add(Scheme)
	f.Add("sotto://aaaa")
	f.Fuzz(func(t *testing.T, s string) {
		inv, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(inv.String())
		if err != nil {
			t.Fatalf("re-encoded invite does not parse: %v", err)
		}
		if again.String() != inv.String() {
			t.Fatal("invite encoding is not canonical")
		}
	})
}

// testPeer is a public peer with one address.
func testPeer(t testing.TB, seed byte, addr string) peer.AddrInfo {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.NewChaCha8([32]byte{seed, 0xee}))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return peer.AddrInfo{ID: id, Addrs: []ma.Multiaddr{ma.StringCast(addr)}}
}

func TestInvitePeers(t *testing.T) {
	inv := testInvite(t, 4)
	v1 := inv.String()
	if b := inviteBody(t, v1); b[0] != Version {
		t.Fatalf("an invite without peers is version %d, want %d", b[0], Version)
	}
	p1 := testPeer(t, 1, "/ip4/192.0.0.130/tcp/4747")
	p2 := testPeer(t, 2, "/ip4/192.0.0.131/udp/4747/quic-v1")
	inv.Peers = []peer.AddrInfo{p1, p2}
	s := inv.String()
	body := inviteBody(t, s)
	if body[0] != VersionPeers {
		t.Fatalf("an invite with peers is version %d, want %d", body[0], VersionPeers)
	}
	got, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Peers) != 2 || got.Peers[0].ID != p1.ID || !got.Peers[1].Addrs[0].Equal(p2.Addrs[0]) {
		t.Fatalf("peers after a round trip: %v", got.Peers)
	}
	if got.String() != s {
		t.Fatal("re-encoding differs")
	}
	// At most MaxPeers, one address each, are written.
	many := *inv
	many.Peers = nil
	for i := range MaxPeers + 2 {
		p := testPeer(t, byte(10+i), "/ip4/192.0.0.140/tcp/4747")
		p.Addrs = append(p.Addrs, ma.StringCast("/ip4/192.0.0.141/tcp/4747"))
		many.Peers = append(many.Peers, p)
	}
	got, err = Parse(many.String())
	if err != nil || len(got.Peers) != MaxPeers || len(got.Peers[0].Addrs) != 1 {
		t.Fatalf("Parse = %v, %v; want %d peers of one address", got, err, MaxPeers)
	}

	// Rejections: count 0 in version 2 (not canonical), too many, a peer
	// address without /p2p, the inviter itself, a peer twice, a trailing
	// byte after the peers.
	head := append([]byte(nil), body[:len(body)-1]...)
	peersAt := len(inviteBody(t, v1)) // the peer list starts where version 1 ends
	base := append([]byte{VersionPeers}, inviteBody(t, v1)[1:peersAt]...)
	self, _ := inv.PeerID()
	withPeers := func(addrs ...string) []byte {
		b := append([]byte(nil), base...)
		var items [][]byte
		for _, a := range addrs {
			items = append(items, ma.StringCast(a).Bytes())
		}
		return appendList(b, items)
	}
	p1s := "/ip4/192.0.0.130/tcp/4747/p2p/" + p1.ID.String()
	tooMany := []string{}
	for range MaxPeers + 1 {
		tooMany = append(tooMany, p1s)
	}
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"no peers in version 2", append(append([]byte(nil), base...), 0)},
		{"too many peers", withPeers(tooMany...)},
		{"peer without /p2p", withPeers("/ip4/192.0.0.130/tcp/4747")},
		{"inviter as its own peer", withPeers("/ip4/192.0.0.130/tcp/4747/p2p/" + self.String())},
		{"peer twice", withPeers(p1s, p1s)},
		{"trailing byte", append(append([]byte(nil), body...), 0)},
		{"cut peer list", head},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, err := Parse(rawInvite(tc.body)); !errors.Is(err, ErrFormat) {
				t.Fatalf("Parse = %v, %v; want ErrFormat", got, err)
			}
		})
	}
	if _, err := Parse(rawInvite(withPeers(p1s))); err != nil {
		t.Fatalf("a well-formed peer list is refused: %v", err)
	}
}

// TestInviteVector is protocol/SPEC.md's invite test vector: the invite of
// testInvite(5) with one peer, testPeer(1) at /ip4/192.0.0.130/tcp/4747.
func TestInviteVector(t *testing.T) {
	const vector = "sotto://aialaalyokkt4w7bmbr7pnadbivhjd3loji7d2b4fkivzmjbsfppirvhjitaajaiaejcasxz455lwirlnhfkdfi3m4zsexchmsum4ghhgcwhp3xyixbattaoll73izxk5mgy7ns56lcoael7hlvkvgo2xum5mmib4rz4x6u2lvhaaaaaabvutuqa7a75q2wgw75irv2fqoyyxiuvxip3oanjjmzqeefowgxbadapwamz5g7vov6lvu42sgpl7ndhorkf22egotttlmvsknfwvz5ehnysecicaaeai7yaaaaqmd5baafqi7yaaaazcaqpuhgqgaiagecmaaaaqidbfc5famtaajaiaejca3cuty2n4jiev7iqq6cbuhvvj7mt54tipi4zxlpi446y2amgbhlfrdatola"
	inv := testInvite(t, 5)
	inv.Peers = []peer.AddrInfo{testPeer(t, 1, "/ip4/192.0.0.130/tcp/4747")}
	if got := inv.String(); got != vector {
		t.Fatalf("invite encoding changed:\n got %s\nwant %s", got, vector)
	}
	got, err := Parse(vector)
	if err != nil {
		t.Fatal(err)
	}
	if got.Peers[0].ID.String() != "12D3KooWH7F35tLL2ZRfkmsoBjzzHfBHZzp5sDrSp5bCyhKjG6x4" || len(got.Addrs) != 2 {
		t.Fatalf("vector parses to %+v", got)
	}
}

// TestInviteVersion3 round-trips an invite with an intro secret and
// mailboxes (with no peers, which only version 3 allows), merges the
// addresses of one mailbox, and refuses what breaks the rules.
func TestInviteVersion3(t *testing.T) {
	inv := testInvite(t, 3)
	secret := [IntroSecretSize]byte{9}
	inv.IntroSecret = &secret
	m1 := testPeer(t, 1, "/ip4/198.51.100.7/tcp/4001")
	m1.Addrs = append(m1.Addrs, ma.StringCast("/ip4/198.51.100.7/udp/4001/quic-v1"))
	m2 := testPeer(t, 2, "/ip4/203.0.113.9/tcp/4001")
	inv.Mailboxes = []peer.AddrInfo{m1, m2}
	s := inv.String()
	got, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	if got.IntroSecret == nil || *got.IntroSecret != secret || len(got.Peers) != 0 {
		t.Fatalf("intro secret or peers lost: %+v", got)
	}
	if len(got.Mailboxes) != 2 || got.Mailboxes[0].ID != m1.ID || len(got.Mailboxes[0].Addrs) != 2 || got.Mailboxes[1].ID != m2.ID {
		t.Fatalf("mailboxes = %v, want %v", got.Mailboxes, inv.Mailboxes)
	}
	if got.String() != s {
		t.Fatal("re-encoding differs")
	}

	body := inviteBody(t, s)
	secretAt := bytes.Index(body, secret[:])
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"truncated intro secret", body[:secretAt+10]},
		{"no mailbox count", body[:secretAt+IntroSecretSize]},
		{"too many mailbox addresses", append(append([]byte(nil), body[:secretAt+IntroSecretSize]...), MaxMailboxAddrs+1)},
		{"mailbox without peer ID", append(append([]byte(nil), body[:secretAt+IntroSecretSize]...), 1, 0, 8, 0x04, 198, 51, 100, 7, 0x06, 0x0f, 0xa1)},
		{"trailing bytes", append(append([]byte(nil), body...), 0)},
	} {
		if _, err := Parse(rawInvite(tc.body)); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v, want ErrFormat", tc.name, err)
		}
	}
	// Version 2 still needs a peer.
	v2 := inviteBody(t, testInvite(t, 3).String())
	v2[0] = VersionPeers
	if _, err := Parse(rawInvite(append(v2, 0))); !errors.Is(err, ErrFormat) {
		t.Errorf("a version 2 invite without peers: %v, want ErrFormat", err)
	}
}

// TestInviteVersion3Vector: the version 2 vector's invite with an intro
// secret of 32 bytes 07 and its peer also as its one mailbox; computed
// apart from this code (Python: base32, hashlib).
func TestInviteVersion3Vector(t *testing.T) {
	const vector = "sotto://amalaalyokkt4w7bmbr7pnadbivhjd3loji7d2b4fkivzmjbsfppirvhjitaajaiaejcasxz455lwirlnhfkdfi3m4zsexchmsum4ghhgcwhp3xyixbattaoll73izxk5mgy7ns56lcoael7hlvkvgo2xum5mmib4rz4x6u2lvhaaaaaabvutuqa7a75q2wgw75irv2fqoyyxiuvxip3oanjjmzqeefowgxbadapwamz5g7vov6lvu42sgpl7ndhorkf22egotttlmvsknfwvz5ehnysecicaaeai7yaaaaqmd5baafqi7yaaaazcaqpuhgqgaiagecmaaaaqidbfc5famtaajaiaejca3cuty2n4jiev7iqq6cbuhvvj7mt54tipi4zxlpi446y2amgbhlfa4dqobyha4dqobyha4dqobyha4dqobyha4dqobyha4dqobyha4dqcabrataaaaecayjixjideyacicabciqgyve6gtpckbfp2eehqqnb5nkp3e7pe2d2hgn232hhhwgqdbqj2zl4s23ay"
	inv := testInvite(t, 5)
	p := testPeer(t, 1, "/ip4/192.0.0.130/tcp/4747")
	inv.Peers, inv.Mailboxes = []peer.AddrInfo{p}, []peer.AddrInfo{p}
	secret := [IntroSecretSize]byte(bytes.Repeat([]byte{7}, IntroSecretSize))
	inv.IntroSecret = &secret
	if got := inv.String(); got != vector {
		t.Fatalf("invite encoding changed:\n got %s\nwant %s", got, vector)
	}
	got, err := Parse(vector)
	if err != nil {
		t.Fatal(err)
	}
	if *got.IntroSecret != secret || len(got.Mailboxes) != 1 || got.Mailboxes[0].ID != p.ID {
		t.Fatalf("vector parses to %+v", got)
	}
}
