package mailbox

import (
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/p2p/p2ptest"
	"github.com/sotto-im/sotto/protocol"
)

// Many networks registering (65,536 are one IPv6 /48) must not lock new
// networks out of the per-network registration table for 18 days; and a
// renewal leaves no entry at all.
func TestRegistrationTableNoLockout(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts()})
	now := time.Now()
	tracked := func() int {
		m.svc.v2.mu.Lock()
		defer m.svc.v2.mu.Unlock()
		return len(m.svc.v2.regs)
	}
	if !m.svc.reserveRegistrations("ip6/2001:db8:ffff:ffff::/64", 0, now) || tracked() != 0 {
		t.Fatalf("a renewal left %d entries in the table", tracked())
	}
	for i := range maxTrackedNets {
		if !m.svc.reserveRegistrations(fmt.Sprintf("ip6/2001:db8:%x:%x::/64", i>>8, i&0xff), 1, now) {
			t.Fatalf("network %d refused while filling the table", i)
		}
	}
	e := protocol.Epoch(now)
	acc, _, err := newClient2(t).Register(ctx, m.h.AddrInfo(), []Registration{newPairSession().reg(e)})
	if err != nil || acc != 1 {
		t.Errorf("an honest user's first registration after 65536 other networks each registered a tag: %d accepted, %v (locked out for 18 days)", acc, err)
	}
	if n := tracked(); n > maxTrackedNets {
		t.Errorf("the table holds %d networks, more than %d", n, maxTrackedNets)
	}
}

// FILTER frames on an open filter stream take tokens of the network's
// rate like any request; beyond the bucket they are answered Throttled.
func TestFilterFramesRateLimited(t *testing.T) {
	ctx := testkit.Context(t, mbxTestTimeout)
	// A rate of 1 a second keeps the count independent of the machine's
	// speed.
	const burst = 100
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts(WithRateLimit(1, burst))})
	h := p2ptest.NewHost(t)
	h.LibP2P().Peerstore().AddAddrs(m.h.ID(), m.h.AddrInfo().Addrs, time.Hour)
	st, err := h.LibP2P().NewStream(ctx, m.h.ID(), Protocol2)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Reset()
	tags := make([][32]byte, MaxFilterTags)
	for i := range tags {
		tags[i] = randTag()
	}
	req := appendFilterRequest(nil, tags)
	ok := 0
	const frames = 3 * burst
	start := time.Now()
	for range frames {
		if err := p2p.WriteFrame(st, req, MaxRequestSize2); err != nil {
			t.Fatal(err)
		}
		resp, err := p2p.ReadFrame(st, MaxResponseSize)
		if err != nil {
			t.Fatal(err)
		}
		if s, _, err := parseResponse(resp); err == nil && s == StatusOK {
			ok++
		}
	}
	// The first frame opened the filter (one token); the rest change it.
	if limit := burst + int(time.Since(start).Seconds()) + 1; ok > limit || ok < burst-1 {
		t.Errorf("%d of %d FILTER frames on one stream answered OK; the per-network bucket allows %d to %d", ok, frames, burst-1, limit)
	}
}

// Validly signed deposits under tags nobody registered cost a forger one
// signature each; from one mesh peer, past the mailbox's burst and rate,
// they are ignored: neither stored nor forwarded, and without a penalty
// that could hit an honest but busy neighbour. (The test sets a rate of
// 1 a second so that its count does not depend on the machine's speed.)
func TestMeshDepositsIgnoredPastRate(t *testing.T) {
	const burst = 100
	m := newMailboxNode(t, mbxNodeOpts{svcOpts: v2Opts(WithMeshDepositRate(1, burst))})
	now := time.Now()
	ps := newPairSession()
	dep, _, _ := ps.deposit(t, now, 100)
	shard := ps.tag(protocol.Epoch(now)).Shard(Shards)
	validate := m.svc.validDeposit(shard)
	flooder, other := peer.ID("flooder"), peer.ID("neighbour")
	start := time.Now()
	accepted, ignored := 0, 0
	for range 3 * burst {
		switch validate(flooder, dep) {
		case p2p.Accept:
			accepted++
		case p2p.Ignore:
			ignored++
		default:
			t.Fatal("a valid deposit was rejected")
		}
	}
	limit := burst + int(time.Since(start).Seconds()) + 1
	if accepted < burst || accepted > limit || ignored == 0 {
		t.Fatalf("%d accepted, %d ignored from one peer; want %d to %d accepted, the rest ignored", accepted, ignored, burst, limit)
	}
	if v := validate(other, dep); v != p2p.Accept {
		t.Fatalf("another mesh peer's deposit: %v, want accepted", v)
	}
	if _, err := NewService(m.h, nil, m.db, WithMeshDepositRate(0, 1)); err == nil {
		t.Fatal("a mesh deposit rate of 0 was accepted")
	}
}
