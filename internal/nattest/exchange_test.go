package nattest

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"
)

// watch says what an exchange watches in alice's connections besides the
// messages.
type watch int

const (
	watchNothing watch = iota
	// watchDirect: until alice has a direct connection to bob.
	watchDirect
	// watchRelayed: for stayRelayed after delivery, that no direct
	// connection to bob appears.
	watchRelayed
)

// trial is one exchange: alice writes to bob and bob to alice at once.
type trial struct {
	sent, arrived int
	via           []string        // per arrived message: "alice→bob direct"
	delivered     []time.Duration // send → "delivered" at the sender (the receipt is back)
	state         string          // what the last poll saw
	// reserved: from the latest start of alice or bob until both held a
	// relay reservation (cases 1 and 2, when the binary reports relays).
	reserved time.Duration

	// From alice's connections to bob, when the binary reports them.
	report     bool
	missing    []string // the report's fields the status lacked
	statusRaw  string
	sawRelayed bool
	direct     bool
	directAddr string
	// toDirect: from the sends, which open the relayed connection between
	// alice and bob, to the first poll that sees a direct one. (A relayed
	// connection lives less than a poll before hole punching replaces it,
	// so the polls cannot time it from the relayed connection itself.)
	toDirect time.Duration
	conns    string // alice's last connections to bob
}

// exchange sends a message each way between alice and bob and polls both
// message lists (and, per w, alice's connections) until both messages are
// delivered and what w watches is settled, or caseWait passes. It fails
// the test only if a daemon exits; callers judge the trial.
func (s *scene) exchange(t *testing.T, label string, w watch) trial {
	t.Helper()
	nw, alice, bob := s.nw, s.alice, s.bob
	nonce := randomHex(3)
	tr := trial{sent: 2, report: w != watchNothing}
	start := time.Now()
	legs := []struct {
		from, to *daemon
		name     string
		id       string
		sentAt   time.Time
		arrived  bool
		done     bool
	}{
		{from: alice, to: bob, name: "alice→bob"},
		{from: bob, to: alice, name: "bob→alice"},
	}
	for i := range legs {
		l := &legs[i]
		l.sentAt = time.Now()
		l.id = nw.send(t, l.from, l.to.name, fmt.Sprintf("%s %s %s", label, l.name, nonce))
	}
	var directAt, deliveredAt time.Time
	nw.until(t, caseWait, []*daemon{alice, bob}, func() (bool, string) {
		lists := map[*daemon][]message{alice: nw.messages(t, alice), bob: nw.messages(t, bob)}
		var state []string
		all := true
		for i := range legs {
			l := &legs[i]
			if m, ok := find(lists[l.to], l.id); ok && m.Direction == "in" && !l.arrived {
				l.arrived = true
				tr.arrived++
				tr.via = append(tr.via, l.name+" "+m.Via)
			}
			out, _ := find(lists[l.from], l.id)
			if out.State == "delivered" && !l.done {
				l.done = true
				tr.delivered = append(tr.delivered, time.Since(l.sentAt))
			}
			all = all && l.arrived && l.done
			state = append(state, fmt.Sprintf("%s: arrived=%v sender's state %q", l.name, l.arrived, out.State))
		}
		if tr.report {
			st := nw.status(t, alice)
			if tr.missing = st.missing(); len(tr.missing) > 0 {
				tr.report, tr.statusRaw = false, st.raw
			} else {
				now := time.Now()
				for _, c := range st.connectionsTo(bob.peerID) {
					if c.Relayed {
						tr.sawRelayed = true
					}
					if !c.Relayed && directAt.IsZero() {
						directAt = now
						tr.direct, tr.directAddr = true, c.Addr
					}
				}
				tr.conns = fmt.Sprintf("%+v", st.connectionsTo(bob.peerID))
				state = append(state, "alice's connections to bob: "+tr.conns)
			}
		}
		tr.state = strings.Join(state, "; ")
		if !all {
			return false, tr.state
		}
		if deliveredAt.IsZero() {
			deliveredAt = time.Now()
		}
		switch {
		case !tr.report:
			return true, tr.state
		case w == watchDirect:
			return tr.direct, tr.state
		case w == watchRelayed:
			return tr.direct || time.Since(deliveredAt) >= stayRelayed, tr.state
		}
		return true, tr.state
	})
	if tr.direct {
		tr.toDirect = directAt.Sub(start)
	}
	return tr
}

// caseStats collects the trials of one case.
type caseStats struct {
	name   string
	trials []trial
}

func (s *scene) newCase(name string) *caseStats {
	cs := &caseStats{name: name}
	s.stats = append(s.stats, cs)
	return cs
}

func (cs *caseStats) add(tr trial) { cs.trials = append(cs.trials, tr) }

// table renders the trials per case: delivery rate, the path each message
// arrived by (the first copy to arrive: a message waits
// node.DefaultMailboxAfter for a stream before it also goes to the
// mailboxes, so a slow relay loses to the mailbox), hole-punch success,
// send→delivered p50 and max, send→direct p50 and max, and how long
// after a start both relay reservations were held. Times are
// as precise as the polling (pollEvery plus a command's run time).
func table(stats []*caseStats) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
	fmt.Fprintln(w, "case\ttrials\tdelivered\tvia direct/relay/mailbox\thole punched\tsend→delivered p50\tmax\tsend→direct p50\tmax\tstart→reserved p50\tmax")
	for _, cs := range stats {
		var sent, arrived, direct, reported int
		var delivered, toDirect, reserved []time.Duration
		via := map[string]int{}
		for _, tr := range cs.trials {
			for _, v := range tr.via {
				via[v[strings.LastIndexByte(v, ' ')+1:]]++
			}
			if tr.reserved > 0 {
				reserved = append(reserved, tr.reserved)
			}
			sent += tr.sent
			arrived += tr.arrived
			delivered = append(delivered, tr.delivered...)
			if tr.report {
				reported++
			}
			if tr.direct {
				direct++
				toDirect = append(toDirect, tr.toDirect)
			}
		}
		punched := "n/a"
		if reported > 0 {
			punched = fmt.Sprintf("%d/%d", direct, reported)
		}
		fmt.Fprintf(w, "%s\t%d\t%d/%d (%.0f%%)\t%d/%d/%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cs.name, len(cs.trials),
			arrived, sent, 100*float64(arrived)/float64(max(sent, 1)), via["direct"], via["relay"], via["mailbox"], punched,
			quantile(delivered, 0.5), quantile(delivered, 1), quantile(toDirect, 0.5), quantile(toDirect, 1),
			quantile(reserved, 0.5), quantile(reserved, 1))
	}
	w.Flush()
	return b.String()
}

// quantile returns the q-quantile (nearest rank) of ds, "-" if empty.
func quantile(ds []time.Duration, q float64) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	i = min(max(i, 0), len(s)-1)
	return s[i].Round(10 * time.Millisecond).String()
}
