package protocol

import (
	"bytes"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"testing"

	"github.com/sotto-im/sotto/keys"
)

// packet is one ratchet message on the simulated transport.
type packet struct {
	id        int
	msg, pt   []byte
	secret    [32]byte
	chain     int // index of the sender's sending chain
	delivered bool
}

// party is one end of the simulated conversation.
type party struct {
	name      string
	r         *Ratchet
	chains    map[keys.DHPublic]int // sender ratchet key -> chain index
	inbox     []*packet             // in flight to this party, any order
	seen      []*packet             // delivered to this party
	maxChain  int                   // newest peer chain this party has stepped into
	steppedIn bool
	late      []latePacket // held back from the inbox until their step
}

// latePacket is a straggler: a packet the transport holds back for many
// steps, as a mailbox copy or a partitioned link would.
type latePacket struct {
	p   *packet
	due int
}

// lossyStats counts what happened in one run.
type lossyStats struct {
	sent, ok, dup, dropped int
	// tooOld counts packets that arrived on a chain the receiver had
	// already evicted (more than MaxOldChains DH steps late).
	tooOld int
	// deepOld counts packets that decrypted on an old chain more than 5
	// steps back, the cap on old chains in earlier builds.
	deepOld int
}

// lossyConfig shapes the simulated transport.
type lossyConfig struct {
	steps int
	// straggle is the per-mille of sent packets held back for 1 to
	// maxDelay steps instead of entering the inbox.
	straggle, maxDelay int
}

// TestRatchetLossyTransport runs long two-way conversations over a
// transport that drops, reorders and duplicates messages, and checks that
// every delivered message decrypts exactly once to the right plaintext,
// that every redelivery is reported as a duplicate, and that failures leave
// the state unchanged. Messages on a chain older than MaxOldChains steps are
// expected to fail authentication, which the model accounts for.
func TestRatchetLossyTransport(t *testing.T) {
	seeds := []uint64{1, 2, 3, 4, 5, 6, 7, 8}
	cfg := lossyConfig{steps: 4000}
	if testing.Short() {
		seeds, cfg.steps = seeds[:2], 1000
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			runLossy(t, seed, cfg)
		})
	}
}

// TestRatchetLossyTransportStragglers is TestRatchetLossyTransport with
// some packets held back for up to 3000 steps, about 75 DH steps at the
// generator's pace: some arrive on an old chain still held, others after
// their chain was evicted, possibly duplicated. Across the seeds both must
// happen, or the eviction path went untested.
func TestRatchetLossyTransportStragglers(t *testing.T) {
	seeds := []uint64{11, 12, 13, 14}
	cfg := lossyConfig{steps: 4000, straggle: 30, maxDelay: 3000}
	if testing.Short() {
		seeds = seeds[:2]
	}
	var total lossyStats
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			st := runLossy(t, seed, cfg)
			total.tooOld += st.tooOld
			total.deepOld += st.deepOld
		})
	}
	if total.tooOld == 0 {
		t.Errorf("no packet arrived on an evicted chain in any run: chain eviction was not exercised")
	}
	if total.deepOld == 0 {
		t.Errorf("no packet decrypted on an old chain more than 5 steps back in any run")
	}
}

func runLossy(t *testing.T, seed uint64, cfg lossyConfig) lossyStats {
	rng := mrand.New(mrand.NewPCG(seed, 0x5077))
	keyRand := mrand.NewChaCha8([32]byte{byte(seed)})
	a, b := newTestPair(t, keyRand)
	alice := &party{name: "alice", r: a, chains: map[keys.DHPublic]int{}}
	bob := &party{name: "bob", r: b, chains: map[keys.DHPublic]int{}}
	ad := []byte("lossy")
	nextID := 0
	var stats lossyStats
	step := 0

	sendFrom := func(from, to *party) {
		pt := fmt.Appendf(nil, "%s message %d", from.name, nextID)
		msg, secret, err := from.r.Encrypt(keyRand, pt, ad)
		if err != nil {
			t.Fatalf("%s Encrypt: %v", from.name, err)
		}
		pub := from.r.dhs.Public()
		chain, ok := from.chains[pub]
		if !ok {
			chain = len(from.chains)
			from.chains[pub] = chain
		}
		p := &packet{id: nextID, msg: msg, pt: pt, secret: secret, chain: chain}
		if cfg.straggle > 0 && p.id > 0 && rng.IntN(1000) < cfg.straggle {
			to.late = append(to.late, latePacket{p: p, due: step + 1 + rng.IntN(cfg.maxDelay)})
		} else {
			to.inbox = append(to.inbox, p)
		}
		nextID++
		stats.sent++
	}
	deliver := func(to *party, p *packet) {
		tooOld := to.steppedIn && to.maxChain-p.chain > MaxOldChains
		before := mustState(t, to.r)
		pt, secret, err := to.r.Decrypt(p.msg, ad)
		switch {
		case tooOld:
			if !errors.Is(err, ErrAuth) {
				t.Fatalf("%s: packet %d on a dropped chain: err = %v, want ErrAuth", to.name, p.id, err)
			}
			if !p.delivered {
				stats.tooOld++
			}
		case p.delivered:
			if !errors.Is(err, ErrDuplicate) {
				t.Fatalf("%s: redelivered packet %d: err = %v, want ErrDuplicate", to.name, p.id, err)
			}
			stats.dup++
		default:
			if err != nil {
				t.Fatalf("%s: packet %d (chain %d): %v", to.name, p.id, p.chain, err)
			}
			if !bytes.Equal(pt, p.pt) || secret != p.secret {
				t.Fatalf("%s: packet %d decrypted to the wrong plaintext or secret", to.name, p.id)
			}
			p.delivered = true
			to.seen = append(to.seen, p)
			if to.steppedIn && to.maxChain-p.chain > 5 {
				stats.deepOld++
			}
			if !to.steppedIn || p.chain > to.maxChain {
				to.maxChain, to.steppedIn = p.chain, true
			}
			stats.ok++
			return
		}
		if pt != nil || !bytes.Equal(before, mustState(t, to.r)) {
			t.Fatalf("%s: failed Decrypt changed the state", to.name)
		}
	}
	// take removes a random in-flight packet, biased towards older ones.
	take := func(p *party) *packet {
		i := min(rng.IntN(len(p.inbox)), rng.IntN(len(p.inbox)))
		pk := p.inbox[i]
		p.inbox = append(p.inbox[:i], p.inbox[i+1:]...)
		return pk
	}

	// The first message must reach Bob before he can reply.
	sendFrom(alice, bob)
	deliver(bob, take(bob))
	const maxInFlight = 64
	// release delivers the stragglers due by step, or all of them.
	release := func(p *party, all bool) {
		keep := p.late[:0]
		for _, l := range p.late {
			if all || l.due <= step {
				deliver(p, l.p)
			} else {
				keep = append(keep, l)
			}
		}
		p.late = keep
	}
	for ; step < cfg.steps; step++ {
		release(alice, false)
		release(bob, false)
		switch x := rng.IntN(100); {
		case x < 22 && len(bob.inbox) < maxInFlight:
			sendFrom(alice, bob)
		case x < 44 && len(alice.inbox) < maxInFlight:
			sendFrom(bob, alice)
		case x < 86:
			to := alice
			if rng.IntN(2) == 0 {
				to = bob
			}
			if len(to.inbox) > 0 {
				deliver(to, take(to))
			}
		case x < 93: // drop
			to := alice
			if rng.IntN(2) == 0 {
				to = bob
			}
			if len(to.inbox) > 0 {
				take(to)
				stats.dropped++
			}
		case x < 98: // duplicate something already delivered
			to := alice
			if rng.IntN(2) == 0 {
				to = bob
			}
			if len(to.seen) > 0 {
				deliver(to, to.seen[rng.IntN(len(to.seen))])
			}
		default: // persist and restore one side
			p := alice
			if rng.IntN(2) == 0 {
				p = bob
			}
			r2, err := UnmarshalRatchet(mustState(t, p.r))
			if err != nil {
				t.Fatalf("restoring %s: %v", p.name, err)
			}
			p.r = r2
		}
	}
	for _, p := range []*party{alice, bob} {
		for len(p.inbox) > 0 {
			deliver(p, take(p))
		}
		release(p, true)
		if n := len(p.r.discarded); n != 0 {
			t.Fatalf("%s discarded %d skipped keys; the generator stays below MaxSkippedKeys", p.name, n)
		}
	}
	if stats.ok+stats.tooOld+stats.dropped != stats.sent {
		t.Fatalf("accounting: sent %d, delivered %d, too old %d, dropped %d", stats.sent, stats.ok, stats.tooOld, stats.dropped)
	}
	if stats.ok < stats.sent*3/4 || stats.dup == 0 || alice.maxChain < 10 {
		t.Fatalf("weak run: %+v, %d chains", stats, alice.maxChain)
	}
	t.Logf("%+v, bob stepped into %d of alice's chains", stats, bob.maxChain+1)
	return stats
}
