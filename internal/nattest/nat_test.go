// Package nattest runs real sotto daemons in a small internet built on one
// machine from Linux network namespaces and nftables (testbed.sh), and
// checks how they reach each other through NAT: hole punching, relays,
// mailboxes, plain TCP.
//
// The flow, as in libp2p's hole-punch interop test: public nodes come up
// (pub1: bootstrap, relay and mailbox; pub2..pub4: relays, and the
// observers identify and AutoNAT need), then alice behind router r1 and
// bob behind router r2, each bootstrapping through pub1; they add each
// other from invites and message each other while the test changes the
// routers' NAT, stops relays, stops and moves bob, drops UDP.
//
// TestNAT needs root, `ip netns` and nft; without them it skips, except
// under CI (SOTTO_CI=1), where that is a failure. SOTTO_NAT_TRIALS=N runs
// cases 1-3 and 9-11 N times each and prints delivery and hole-punch rates
// and latencies. SOTTO_NAT_BIN=PATH uses a prebuilt binary instead of
// building cmd/sotto.
//
//	go test ./internal/nattest/ -run TestNAT -v -count=1
//	SOTTO_NAT_TRIALS=10 go test ./internal/nattest/ -run TestNAT -v -count=1 -timeout 90m
package nattest

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sotto-im/sotto/p2p"
)

// Time bounds of TestNAT.
const (
	// testBudget bounds the whole test, the build included.
	testBudget = 6 * time.Minute
	// trialBudget is the further time each extra trial may take (one
	// trial of each of cases 1-3 and 9-11) under SOTTO_NAT_TRIALS.
	trialBudget = 5 * time.Minute
	// caseWait bounds each condition a case waits for.
	caseWait = 60 * time.Second
	// stayRelayed is how long case 2 watches, once its messages are
	// delivered, that no direct connection appears.
	stayRelayed = 15 * time.Second
	// cleanupReserve is left of go test's -timeout for the cleanup.
	cleanupReserve = 30 * time.Second
)

// scene is TestNAT's network with its cast.
type scene struct {
	nw         *network
	tb         *testbed
	pubs       []*daemon // pub1 (bootstrap, relay, mailbox), pub2..pub4
	alice, bob *daemon
	bootstrap  string // pub1's TCP address with its peer ID
	trials     int
	stats      []*caseStats
}

func TestNAT(t *testing.T) {
	checkRequirements(t)
	trials := 1
	if s := os.Getenv("SOTTO_NAT_TRIALS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("SOTTO_NAT_TRIALS=%q: want a positive number of trials", s)
		}
		trials = n
	}
	root, keep := t.TempDir(), os.Getenv("SOTTO_NAT_KEEP")
	if keep != "" {
		root = keep
	}
	s := newScene(t, testBudget+time.Duration(trials-1)*trialBudget, trials, root)
	s.nw.env = append(s.nw.env, "GOLOG_LOG_LEVEL=error,p2p-holepunch=debug", "GOLOG_LOG_FMT=nocolor")
	if keep != "" {
		s.nw.env = append(s.nw.env, "SOTTO_LOG_LEVEL=debug")
	}
	s.setUp(t)

	var took []string
	run := func(name string, f func(t *testing.T)) {
		start := time.Now()
		ran := false
		ok := t.Run(name, func(t *testing.T) {
			ran = true
			defer func() { t.Logf("%s took %v", name, time.Since(start).Round(100*time.Millisecond)) }()
			f(t)
		})
		if !ran { // not selected by -run
			return
		}
		d := time.Since(start).Round(100 * time.Millisecond)
		result := "ok"
		if !ok {
			result = "FAIL"
		}
		took = append(took, fmt.Sprintf("%-28s %-4s %v", name, result, d))
	}
	// Case 3 stops the relays, so it runs after every case that may use
	// them.
	run("1_port_preserving_NAT", s.portPreserving)
	// Case 10 needs the direct connection case 1 made, and NAT mappings
	// made under port-preserving NAT only.
	run("10_punch_after_stale_direct", s.punchAfterStaleDirect)
	run("2_symmetric_NAT", s.symmetric)
	run("4_bob_offline", s.bobOffline)
	run("5_bob_new_port", s.bobNewPort)
	run("6_carol_from_invite", s.carolFromInvite)
	run("7_udp_dropped", s.udpDropped)
	run("8_reachability", s.reachability)
	run("9_symmetric_both_sides", s.bothSymmetric)
	// Case 11 takes pub1's relay away, which case 3 does for all.
	run("11_relays_drop_traffic", s.relaysDropTraffic)
	run("3_relays_down", s.relaysDown)

	t.Logf("cases:\n%s", strings.Join(took, "\n"))
	if len(s.stats) > 0 {
		t.Logf("trials (SOTTO_NAT_TRIALS=%d):\n%s", trials, table(s.stats))
	}
}

// newScene builds the testbed and the binary within budget (less what
// go test's -timeout leaves for the cleanup), the daemons' data
// directories and logs under root.
func newScene(t *testing.T, budget time.Duration, trials int, root string) *scene {
	deadline := time.Now().Add(budget)
	if d, ok := t.Deadline(); ok && d.Add(-cleanupReserve).Before(deadline) {
		deadline = d.Add(-cleanupReserve)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	t.Cleanup(cancel)
	tb := newTestbed(t)
	bin := buildSotto(t, ctx)
	return &scene{nw: newNetwork(t, ctx, bin, tb, root), tb: tb, trials: trials}
}

// setUp starts the public nodes, then alice and bob, and makes them each
// other's contacts.
func (s *scene) setUp(t *testing.T) {
	nw := s.nw
	start := time.Now()
	for _, f := range []string{"--relay", "--public"} {
		if !nw.flags[f] {
			t.Errorf("`sotto run` has no %s flag yet: public nodes run without it (and case 3 has no relay to stop)", f)
		}
	}
	pub1 := nw.addDaemon(t, "pub1", "pub1", nw.only("--mailbox", "--relay", "--public")...)
	nw.start(t, pub1)
	s.bootstrap = fmt.Sprintf("/ip4/%s/tcp/%d/p2p/%s", pub1IP, pub1.port, pub1.peerID)
	s.pubs = []*daemon{pub1}
	for _, name := range []string{"pub2", "pub3", "pub4"} {
		d := nw.addDaemon(t, name, name, append(nw.only("--public", "--relay"), "--bootstrap", s.bootstrap)...)
		nw.start(t, d)
		s.pubs = append(s.pubs, d)
	}
	s.alice = nw.addDaemon(t, "alice", "alice", "--bootstrap", s.bootstrap)
	s.bob = nw.addDaemon(t, "bob", "bob", "--bootstrap", s.bootstrap)
	nw.start(t, s.alice)
	nw.start(t, s.bob)

	aliceInvite := strings.TrimSpace(nw.sotto(t, "invite", "--data", s.alice.dir))
	bobInvite := strings.TrimSpace(nw.sotto(t, "invite", "--data", s.bob.dir))
	nw.sotto(t, "contact", "add", "--data", s.alice.dir, "bob", bobInvite)
	nw.sotto(t, "contact", "add", "--data", s.bob.dir, "alice", aliceInvite)
	t.Logf("set up in %v: pub1 %s, alice %s (behind r1 %s), bob %s (behind r2 %s)",
		time.Since(start).Round(100*time.Millisecond), pub1.peerID, s.alice.peerID, r1WAN, s.bob.peerID, r2WAN)
}

// only keeps the flags `sotto run` has (setUp reports the others).
func (nw *network) only(flags ...string) []string {
	var have []string
	for _, f := range flags {
		if nw.flags[f] {
			have = append(have, f)
		}
	}
	return have
}

// Case 1: port-preserving NAT on both sides. Messages flow both ways, and
// hole punching turns the relayed connection between alice and bob into a
// direct one to r2's WAN address.
func (s *scene) portPreserving(t *testing.T) {
	s.tb.nat(t, "r1", "preserve")
	s.tb.nat(t, "r2", "preserve")
	cs := s.newCase("1 port-preserving NAT")
	for i := range s.trials {
		if i > 0 {
			s.nw.restart(t, s.bob, true) // a new relayed connection to punch
		}
		// Hole punching starts from a relayed connection, which needs the
		// callee's relay reservation: wait for both, then write.
		reserved := s.waitReserved(t, s.alice, s.bob)
		tr := s.exchange(t, fmt.Sprintf("case 1.%d", i+1), watchDirect)
		tr.reserved = reserved
		cs.add(tr)
		arrived(t, tr)
		requireReportSeen(t, tr)
		switch {
		case s.trials > 1:
			// A rate under measurement, not an assertion.
			t.Logf("trial %d: via %v, direct=%v (%s) after %v", i+1, tr.via, tr.direct, tr.directAddr, tr.toDirect)
		case !tr.direct:
			t.Errorf("bob never appeared in alice's connections with relayed=false within %v (connections to bob: %s)", caseWait, tr.conns)
		case !strings.Contains(tr.directAddr, "/ip4/"+r2WAN+"/"):
			t.Errorf("alice's direct connection to bob is on %s, want r2's WAN address %s", tr.directAddr, r2WAN)
		default:
			t.Logf("hole punched: alice reaches bob at %s, seen %v after the sends; messages via %v", tr.directAddr, tr.toDirect.Round(10*time.Millisecond), tr.via)
		}
	}
}

// randomNAT makes routers map every flow to a random port until the case
// ends, then preserve ports again.
func (s *scene) randomNAT(t *testing.T, routers ...string) {
	for _, r := range routers {
		s.tb.nat(t, r, "random")
	}
	t.Cleanup(func() {
		for _, r := range routers {
			if err := s.tb.run("nat", s.tb.prefix, r, "preserve"); err != nil {
				t.Error(err)
			}
		}
	})
}

// Case 2: symmetric NAT (fully random ports) at r2. Messages flow both
// ways through the relay, and the connection stays relayed: hole punching
// cannot guess r2's next port.
func (s *scene) symmetric(t *testing.T) {
	s.tb.nat(t, "r1", "preserve")
	s.randomNAT(t, "r2")
	cs := s.newCase("2 symmetric NAT at r2")
	for i := range s.trials {
		// Conntrack keeps the mappings of flows it knows; bob's new port
		// makes every flow new, so all go through the random mapping.
		s.nw.restart(t, s.bob, true)
		reserved := s.waitReserved(t, s.alice, s.bob)
		tr := s.exchange(t, fmt.Sprintf("case 2.%d", i+1), watchRelayed)
		tr.reserved = reserved
		cs.add(tr)
		arrived(t, tr)
		requireReportSeen(t, tr)
		t.Logf("trial %d: via %v, delivered after %v", i+1, tr.via, tr.delivered)
		if tr.direct {
			t.Errorf("alice has a direct connection to bob at %s through a symmetric NAT (connections to bob: %s)", tr.directAddr, tr.conns)
		}
		if !tr.sawRelayed {
			t.Errorf("alice never had a relayed connection to bob (via %v; connections to bob: %s)", tr.via, tr.conns)
		}
	}
}

// Case 9: symmetric NAT on both sides (each home behind a carrier's NAT
// that maps every flow to a random port). Neither side can predict the
// other's next mapping, so hole punching fails both ways: messages flow
// both ways through a relay, and the connection stays relayed. Alice and
// bob restart on new ports, so that no mapping made before carries over.
func (s *scene) bothSymmetric(t *testing.T) {
	s.randomNAT(t, "r1", "r2")
	cs := s.newCase("9 symmetric NAT at r1 and r2")
	for i := range s.trials {
		s.nw.restart(t, s.alice, true)
		s.nw.restart(t, s.bob, true)
		reserved := s.waitReserved(t, s.alice, s.bob)
		tr := s.exchange(t, fmt.Sprintf("case 9.%d", i+1), watchRelayed)
		tr.reserved = reserved
		cs.add(tr)
		arrived(t, tr)
		requireReportSeen(t, tr)
		t.Logf("trial %d: via %v, delivered after %v", i+1, tr.via, tr.delivered)
		if tr.direct {
			t.Errorf("alice has a direct connection to bob at %s with symmetric NAT on both sides (connections to bob: %s)", tr.directAddr, tr.conns)
		}
		if !tr.sawRelayed {
			t.Errorf("alice never had a relayed connection to bob (via %v; connections to bob: %s)", tr.via, tr.conns)
		}
		// Through the relay, or (should the relayed stream fail) the
		// mailbox; never on a direct connection, and the relay carried
		// at least one of the two.
		relayed := 0
		for _, v := range tr.via {
			switch {
			case strings.HasSuffix(v, " direct"):
				t.Errorf("a message went %s through symmetric NAT on both sides", v)
			case strings.HasSuffix(v, " relay"):
				relayed++
			}
		}
		if relayed == 0 {
			t.Errorf("no message went through the relay (via %v)", tr.via)
		}
	}
}

// Case 10: alice restarts while the path between her and bob is cut, so
// that bob keeps his direct connection to the alice that is gone; her
// new node reaches him through a relay. libp2p punches a hole when a
// relayed connection comes in, but not to a peer it already holds a
// direct connection to, and it does not try again once that dead
// connection closes: the pair stays relayed for good, with no gossip
// between them, unless one of the two opens a fresh relayed connection
// (p2p/upgrade.go). The path comes back; the pair must get a direct
// connection again.
func (s *scene) punchAfterStaleDirect(t *testing.T) {
	s.tb.nat(t, "r1", "preserve")
	s.tb.nat(t, "r2", "preserve")
	requireReport(t, s.alice, s.nw.status(t, s.alice))
	cs := s.newCase("10 stale direct connection")
	for i := range s.trials {
		tr := s.staleDirectTrial(t, i+1)
		cs.add(tr)
		if s.trials > 1 {
			t.Logf("trial %d: via %v, direct again %v after the path came back", i+1, tr.via, tr.toDirect)
		}
	}
}

// staleDirectTrial is one trial of case 10.
func (s *scene) staleDirectTrial(t *testing.T, n int) trial {
	nw, alice, bob := s.nw, s.alice, s.bob
	if !s.directBetween(t) {
		tr := s.exchange(t, fmt.Sprintf("case 10.%d warm-up", n), watchDirect)
		if !tr.direct {
			t.Fatalf("alice and bob have no direct connection to begin with: %s", tr.conns)
		}
	}
	blocked := true
	heal := func() {
		if blocked {
			blocked = false
			if err := s.tb.run("heal", s.tb.prefix, "alice"); err != nil {
				t.Error(err)
			}
		}
	}
	if err := s.tb.run("block", s.tb.prefix, "alice", r2WAN); err != nil {
		t.Fatal(err)
	}
	defer heal()
	nw.restart(t, alice, true)
	nw.poll(t, "alice holds a relay reservation", caseWait, []*daemon{alice}, func() (bool, string) {
		st := nw.status(t, alice)
		return len(st.Relays) > 0, fmt.Sprintf("relays %v", st.Relays)
	})
	id := nw.send(t, alice, "bob", fmt.Sprintf("case 10.%d after the restart %s", n, randomHex(3)))
	tr := trial{sent: 1, report: true}
	var relayed bool
	nw.poll(t, "bob receives alice's message and a relayed connection from her", caseWait, []*daemon{alice, bob}, func() (bool, string) {
		m, ok := find(nw.messages(t, bob), id)
		conns := nw.status(t, bob).connectionsTo(alice.peerID)
		for _, c := range conns {
			relayed = relayed || c.Relayed
		}
		if ok && m.Direction == "in" && tr.arrived == 0 {
			tr.arrived, tr.via = 1, []string{"alice→bob " + m.Via}
		}
		return tr.arrived == 1 && relayed, fmt.Sprintf("found=%v %+v; bob's connections to alice: %+v", ok, m, conns)
	})
	tr.sawRelayed = relayed
	heal()
	healed := time.Now()
	nw.poll(t, "a direct connection between alice and bob", 3*caseWait/2, []*daemon{alice, bob}, func() (bool, string) {
		conns := nw.status(t, alice).connectionsTo(bob.peerID)
		for _, c := range conns {
			if !c.Relayed {
				tr.direct, tr.directAddr = true, c.Addr
				return true, ""
			}
		}
		return false, fmt.Sprintf("alice's connections to bob: %+v; bob's to alice: %+v", conns, nw.status(t, bob).connectionsTo(alice.peerID))
	})
	// In the table, case 10's send→direct counts from when the path came
	// back.
	tr.toDirect = time.Since(healed)
	t.Logf("direct again at %s, %v after the path came back", tr.directAddr, tr.toDirect.Round(100*time.Millisecond))
	if n := nw.status(t, alice).RelayReopens + nw.status(t, bob).RelayReopens; n == 0 {
		t.Errorf("neither alice nor bob reports a relayed connection reopened (relay_reopens)")
	}
	if !strings.Contains(tr.directAddr, "/ip4/"+r2WAN+"/") {
		t.Errorf("alice's direct connection to bob is on %s, want r2's WAN address %s", tr.directAddr, r2WAN)
	}
	return tr
}

// directBetween reports whether alice has a direct connection to bob.
func (s *scene) directBetween(t *testing.T) bool {
	for _, c := range s.nw.status(t, s.alice).connectionsTo(s.bob.peerID) {
		if !c.Relayed {
			return true
		}
	}
	return false
}

// stalledBound is what a message may take to arrive when every relay of
// its recipient holds the recipient's reservation but forwards nothing:
// no more than the dial through them may take (p2p.DirectDialTimeout,
// 5 s), plus node.DefaultMailboxAfter (2 s). The message goes to the
// mailboxes after DefaultMailboxAfter whatever the dial does, so it
// arrives well within.
const stalledBound = 7 * time.Second

// Case 11: every relay, those bob holds his reservations at among them,
// stops forwarding (its process is frozen: the connections stay up,
// nothing is answered), and
// r2 maps each flow to a random port, so there is no direct path either.
// Alice's messages to bob must still arrive, through the mailbox, each
// within stalledBound: a relay that takes reservations and drops traffic
// costs at most the dial timeout, once per message and not per retry.
// pub1 (the mailbox) stops relaying first, so that bob's relays are all
// ones the test can freeze.
func (s *scene) relaysDropTraffic(t *testing.T) {
	pub1 := s.pubs[0]
	pub1.args = slices.DeleteFunc(pub1.args, func(a string) bool { return a == "--relay" })
	s.nw.restart(t, pub1, false)
	s.tb.nat(t, "r1", "preserve")
	s.randomNAT(t, "r2")
	cs := s.newCase("11 relays forward nothing")
	for i := range s.trials {
		cs.add(s.frozenRelaysTrial(t, i+1))
	}
}

// frozenRelaysTrial is one trial of case 11.
func (s *scene) frozenRelaysTrial(t *testing.T, n int) trial {
	nw, alice, bob := s.nw, s.alice, s.bob
	nw.restart(t, bob, true)
	s.waitReserved(t, bob)
	var frozen []*daemon
	defer func() {
		for _, d := range frozen {
			if err := d.cmd.Process.Signal(syscall.SIGCONT); err != nil {
				t.Errorf("%s: SIGCONT: %v", d.name, err)
			}
		}
	}()
	// Every relay left, so that bob cannot move to one that works.
	relays := nw.status(t, bob).Relays
	for _, r := range relays {
		if !slices.ContainsFunc(s.pubs[1:], func(d *daemon) bool { return d.peerID == r }) {
			t.Fatalf("bob's relay %s is none of pub2..pub4", r)
		}
	}
	for _, d := range s.pubs[1:] {
		if err := d.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatalf("%s: SIGSTOP: %v", d.name, err)
		}
		frozen = append(frozen, d)
	}
	t.Logf("froze pub2..pub4; bob's relays were %v", relays)
	tr := trial{sent: 2}
	for i := range tr.sent {
		start := time.Now()
		id := nw.send(t, alice, "bob", fmt.Sprintf("case 11.%d.%d past frozen relays %s", n, i+1, randomHex(3)))
		var m message
		took := nw.poll(t, "bob receives alice's message", caseWait, []*daemon{alice, bob}, func() (bool, string) {
			var ok bool
			m, ok = find(nw.messages(t, bob), id)
			return ok && m.Direction == "in", fmt.Sprintf("found=%v %+v", ok, m)
		})
		tr.arrived++
		tr.via = append(tr.via, "alice→bob "+m.Via)
		t.Logf("message %d arrived via %s %v after sending", i+1, m.Via, took.Round(100*time.Millisecond))
		if m.Via == "relay" {
			t.Errorf("message %d arrived through a relay that forwards nothing", i+1)
		}
		if took > stalledBound {
			t.Errorf("message %d took %v, more than %v: a frozen relay cost more than the dial timeout", i+1, took.Round(100*time.Millisecond), stalledBound)
		}
		nw.poll(t, "alice sees her message delivered", caseWait, []*daemon{alice, bob}, func() (bool, string) {
			out, _ := find(nw.messages(t, alice), id)
			return out.State == "delivered", fmt.Sprintf("%+v", out)
		})
		tr.delivered = append(tr.delivered, time.Since(start))
	}
	return tr
}

// Case 3: no relay serves anyone any more (the public nodes restart
// without --relay, pub1 last; pub1 keeps its mailbox and its data).
// Messages still arrive, through the mailbox.
//
// Alice and bob restart too, on fresh ports: a connection hole-punched
// earlier outlives its relay (seen here: case 7's direct TCP connection
// carried case 3's messages) and would carry the messages. And r2 is
// symmetric again, so that no direct path is left at all: through two
// port-preserving NATs, two nodes that write at once dial each other's
// observed addresses at once and may open a direct TCP connection without
// any relay, which is not what this case is about.
func (s *scene) relaysDown(t *testing.T) {
	s.tb.nat(t, "r1", "preserve")
	s.randomNAT(t, "r2")
	for _, d := range append(s.pubs[1:], s.pubs[0]) {
		d.args = slices.DeleteFunc(d.args, func(a string) bool { return a == "--relay" })
		s.nw.restart(t, d, false)
	}
	s.nw.restart(t, s.alice, true)
	s.nw.restart(t, s.bob, true)
	cs := s.newCase("3 relays down")
	for i := range s.trials {
		tr := s.exchange(t, fmt.Sprintf("case 3.%d", i+1), watchNothing)
		cs.add(tr)
		if !arrived(t, tr) {
			continue
		}
		for _, v := range tr.via {
			if !strings.HasSuffix(v, " mailbox") {
				t.Errorf("with no relay, a message arrived %s, want via the mailbox", v)
			}
		}
	}
}

// Case 4: alice sends three messages while bob's daemon is stopped; bob
// starts again and gets each exactly once.
func (s *scene) bobOffline(t *testing.T) {
	nw, alice, bob := s.nw, s.alice, s.bob
	nw.stop(t, bob)
	nonce := randomHex(3)
	var ids, texts []string
	for i := range 3 {
		text := fmt.Sprintf("case 4 offline %d %s", i+1, nonce)
		ids = append(ids, nw.send(t, alice, "bob", text))
		texts = append(texts, text)
	}
	took := nw.poll(t, "alice's three messages stored at a mailbox", caseWait, []*daemon{alice}, func() (bool, string) {
		return allState(nw.messages(t, alice), ids, "out", "stored")
	})
	t.Logf("stored at a mailbox %v after sending", took.Round(100*time.Millisecond))

	nw.start(t, bob)
	took = nw.poll(t, "bob receives the three messages, alice sees them delivered", caseWait, []*daemon{alice, bob}, func() (bool, string) {
		in, s1 := allState(nw.messages(t, bob), ids, "in", "")
		out, s2 := allState(nw.messages(t, alice), ids, "out", "delivered")
		return in && out, "bob: " + s1 + "; alice: " + s2
	})
	t.Logf("received and delivered %v after bob started", took.Round(100*time.Millisecond))
	got := nw.messages(t, bob)
	for _, text := range texts {
		n := 0
		var via []string
		for _, m := range got {
			if m.Text == text {
				n++
				via = append(via, m.Via)
			}
		}
		if n != 1 {
			t.Errorf("bob has %q %d times (via %v), want once", text, n, via)
		}
	}
}

// allState reports whether every message of ids is in ms with direction
// dir and (unless state is "") state, and describes what is there.
func allState(ms []message, ids []string, dir, state string) (bool, string) {
	ok := true
	var seen []string
	for _, id := range ids {
		m, found := find(ms, id)
		switch {
		case !found:
			ok = false
			seen = append(seen, "missing")
		case m.Direction != dir || (state != "" && m.State != state):
			ok = false
			seen = append(seen, m.Direction+"/"+m.State)
		default:
			seen = append(seen, m.Direction+"/"+m.State+m.Via)
		}
	}
	return ok, strings.Join(seen, ", ")
}

// Case 5: bob restarts on a new port; alice's next message reaches him
// without bob writing first, and they have a direct connection again.
func (s *scene) bobNewPort(t *testing.T) {
	nw, alice, bob := s.nw, s.alice, s.bob
	s.tb.nat(t, "r1", "preserve")
	s.tb.nat(t, "r2", "preserve")
	nw.restart(t, bob, true)
	sent := time.Now()
	id := nw.send(t, alice, "bob", "case 5 to the new port "+randomHex(3))
	var via string
	took := nw.poll(t, "bob receives alice's message on his new port", caseWait, []*daemon{alice, bob}, func() (bool, string) {
		m, ok := find(nw.messages(t, bob), id)
		via = m.Via
		return ok && m.Direction == "in", fmt.Sprintf("found=%v %+v", ok, m)
	})
	t.Logf("arrived via %s %v after sending", via, took.Round(100*time.Millisecond))
	requireReport(t, alice, nw.status(t, alice))
	var addr string
	nw.poll(t, "a direct connection between alice and bob again", 3*caseWait/2, []*daemon{alice, bob}, func() (bool, string) {
		conns := nw.status(t, alice).connectionsTo(bob.peerID)
		for _, c := range conns {
			if !c.Relayed {
				addr = c.Addr
				return true, ""
			}
		}
		return false, fmt.Sprintf("alice's connections to bob: %+v", conns)
	})
	t.Logf("direct again at %s, %v after the send", addr, time.Since(sent).Round(100*time.Millisecond))
	if !strings.Contains(addr, "/ip4/"+r2WAN+"/") {
		t.Errorf("alice's direct connection to bob is on %s, want r2's WAN address %s", addr, r2WAN)
	}
}

// Case 6: carol, a new user in a third home, has only alice's invite and
// no bootstrap address; the invite must be enough to reach alice.
func (s *scene) carolFromInvite(t *testing.T) {
	nw, alice := s.nw, s.alice
	carol := nw.addDaemon(t, "carol", "carol")
	nw.start(t, carol)
	t.Cleanup(func() { nw.stop(t, carol) }) // it is not needed later
	invite := strings.TrimSpace(nw.sotto(t, "invite", "--data", alice.dir))
	nw.sotto(t, "contact", "add", "--data", carol.dir, "alice", invite)
	id := nw.send(t, carol, "alice", "case 6 hello from carol "+randomHex(3))
	var via string
	took := nw.poll(t, "alice receives carol's first message", caseWait, []*daemon{alice, carol}, func() (bool, string) {
		m, ok := find(nw.messages(t, alice), id)
		if ok {
			via = m.Via
			return m.Direction == "in", fmt.Sprintf("%+v", m)
		}
		c, _ := find(nw.messages(t, carol), id)
		st := nw.status(t, carol)
		return false, fmt.Sprintf("not at alice; carol's copy %+v; carol's connected peers %d", c, st.ConnectedPeers)
	})
	t.Logf("arrived via %s %v after sending", via, took.Round(100*time.Millisecond))
}

// Case 7: both routers drop UDP; alice and bob restart (so nothing rides
// on QUIC connections made before) and messages still flow, over TCP: at
// once (the mailbox), and through relays once both hold a reservation,
// which they must get over TCP alone.
func (s *scene) udpDropped(t *testing.T) {
	nw := s.nw
	for _, r := range []string{"r1", "r2"} {
		s.tb.udp(t, r, "drop")
	}
	t.Cleanup(func() {
		for _, r := range []string{"r1", "r2"} {
			if err := s.tb.run("udp", s.tb.prefix, r, "allow"); err != nil {
				t.Error(err)
			}
		}
	})
	nw.restart(t, s.alice, true)
	nw.restart(t, s.bob, true)
	first := time.Now()
	tr := s.exchange(t, "case 7.1", watchNothing)
	if !arrived(t, tr) {
		return
	}
	t.Logf("at once after the restarts: via %v, delivered after %v", tr.via, tr.delivered)
	// Over TCP alone, both must still become reachable through a relay;
	// then messages take it (or a direct connection that hole punching
	// over TCP made). A dial that found no path in 7.1 (no reservation
	// yet) is not tried again for p2p.DialFailMemory: wait that out, or
	// 7.2 goes to the mailboxes as well.
	s.waitReserved(t, s.alice, s.bob)
	time.Sleep(time.Until(first.Add(p2p.DialFailMemory)))
	tr = s.exchange(t, "case 7.2", watchNothing)
	if !arrived(t, tr) {
		return
	}
	t.Logf("with relays reserved: via %v, delivered after %v; alice's connections to bob: %+v",
		tr.via, tr.delivered, nw.status(t, s.alice).connectionsTo(s.bob.peerID))
	for _, v := range tr.via {
		if strings.HasSuffix(v, " mailbox") {
			t.Errorf("with relays reserved over TCP, a message went %s", v)
		}
	}
	for _, d := range []*daemon{s.alice, s.bob} {
		if st := nw.status(t, d); len(st.missing()) == 0 {
			for _, c := range st.Connections {
				if strings.Contains(c.Addr, "/udp/") {
					t.Errorf("%s has a connection over UDP while the routers drop UDP: %+v", d.name, c)
				}
			}
		}
	}
}

// Case 8: what the nodes report about their reachability. Alice and bob
// are private DHT clients, pub1 a public DHT server, and no private (10.x)
// address of theirs reaches the public nodes.
func (s *scene) reachability(t *testing.T) {
	nw := s.nw
	for _, d := range s.pubs {
		if st := nw.status(t, d); strings.Contains(st.raw, "/ip4/10.") {
			t.Errorf("%s's status shows a private address: %s", d.name, st.raw)
		}
	}
	want := []struct {
		d                  *daemon
		reachability, mode string
	}{
		{s.alice, "private", "client"},
		{s.bob, "private", "client"},
		{s.pubs[0], "public", "server"},
	}
	for _, w := range want {
		requireReport(t, w.d, nw.status(t, w.d))
	}
	took := nw.poll(t, "the reachability reports", caseWait, []*daemon{s.alice, s.bob, s.pubs[0]}, func() (bool, string) {
		ok := true
		var state []string
		for _, w := range want {
			st := nw.status(t, w.d)
			if st.Reachability != w.reachability || st.DHTMode != w.mode {
				ok = false
			}
			state = append(state, fmt.Sprintf("%s: reachability %q dht_mode %q relays %v (want %q, %q)",
				w.d.name, st.Reachability, st.DHTMode, st.Relays, w.reachability, w.mode))
		}
		return ok, strings.Join(state, "; ")
	})
	t.Logf("reports as expected after %v", took.Round(100*time.Millisecond))
}

// waitReserved waits until each of ds reports itself private with at
// least one relay reservation, what a relayed connection (and so hole
// punching) needs, and returns how long after the latest start of ds that
// was. A binary without the reachability report is not waited for (the
// exchange that follows reports it).
func (s *scene) waitReserved(t *testing.T, ds ...*daemon) time.Duration {
	t.Helper()
	nw := s.nw
	var latest time.Time
	for _, d := range ds {
		if len(nw.status(t, d).missing()) > 0 {
			return 0
		}
		if d.startedAt.After(latest) {
			latest = d.startedAt
		}
	}
	nw.poll(t, "private reachability and a relay reservation", caseWait, ds, func() (bool, string) {
		ok := true
		var state []string
		for _, d := range ds {
			st := nw.status(t, d)
			if st.Reachability != "private" || len(st.Relays) == 0 {
				ok = false
			}
			state = append(state, fmt.Sprintf("%s: reachability %q relays %v", d.name, st.Reachability, st.Relays))
		}
		return ok, strings.Join(state, "; ")
	})
	took := time.Since(latest)
	t.Logf("relays reserved %v after the latest start", took.Round(100*time.Millisecond))
	return took
}

// arrived reports whether both messages of tr arrived, failing the test
// if not.
func arrived(t *testing.T, tr trial) bool {
	t.Helper()
	if tr.arrived < tr.sent {
		t.Errorf("%d of %d messages arrived within %v: %s", tr.arrived, tr.sent, caseWait, tr.state)
		return false
	}
	return true
}

// requireReportSeen fails the test if the exchange could not watch alice's
// connections: the binary has no reachability report yet.
func requireReportSeen(t *testing.T, tr trial) {
	t.Helper()
	if !tr.report {
		t.Fatalf("alice's `sotto status --json` has no %s field: the reachability report (connections, reachability, relays, dht_mode) is not in this binary yet, so the connection between alice and bob cannot be checked; status: %s",
			strings.Join(tr.missing, ", "), tr.statusRaw)
	}
}
