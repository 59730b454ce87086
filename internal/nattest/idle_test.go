package nattest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestNATIdle measures, under SOTTO_NAT_IDLE=DURATION (10m for the
// record), what a NATed node (alice behind r1, holding a relay
// reservation, with bob as a contact) and the public node (pub1:
// bootstrap, relay and mailbox) cost while nobody sends anything: the CPU
// seconds of each process and the bytes in and out of its namespace's
// interfaces. Without SOTTO_NAT_IDLE it skips: it is a measurement, not a
// check.
//
//	SOTTO_NAT_IDLE=10m go test ./internal/nattest/ -run TestNATIdle -v -count=1 -timeout 30m
func TestNATIdle(t *testing.T) {
	v := os.Getenv("SOTTO_NAT_IDLE")
	if v == "" {
		t.Skip("a measurement: set SOTTO_NAT_IDLE=10m to run it")
	}
	idle, err := time.ParseDuration(v)
	if err != nil || idle <= 0 {
		t.Fatalf("SOTTO_NAT_IDLE=%q: want a duration such as 10m", v)
	}
	checkRequirements(t)
	s := newScene(t, testBudget+idle, 1, t.TempDir())
	tb, ctx := s.tb, s.nw.ctx
	s.setUp(t)
	tb.nat(t, "r1", "preserve")
	tb.nat(t, "r2", "preserve")
	s.waitReserved(t, s.alice, s.bob)
	// Start-up (bootstrap, AutoNAT, the first sync rounds) is not idle.
	select {
	case <-time.After(30 * time.Second):
	case <-ctx.Done():
		t.Fatal("the test's time ran out before the idle period")
	}
	who := []*daemon{s.alice, s.pubs[0]}
	before := make([]usage, len(who))
	for i, d := range who {
		before[i] = measure(t, tb, d)
	}
	select {
	case <-time.After(idle):
	case <-ctx.Done():
		t.Fatal("the test's time ran out during the idle period")
	}
	var rows []string
	for i, d := range who {
		u := measure(t, tb, d).minus(before[i])
		rows = append(rows, fmt.Sprintf("| %s | %.2f s | %.3f %% | %d B (%.0f B/s) | %d B (%.0f B/s) |",
			d.name, u.cpu.Seconds(), 100*u.cpu.Seconds()/idle.Seconds(),
			u.rx, float64(u.rx)/idle.Seconds(), u.tx, float64(u.tx)/idle.Seconds()))
	}
	s.nw.checkRunning(t, append(s.pubs, s.alice, s.bob)...)
	t.Logf("idle for %v:\n| node | CPU | of one core | received | sent |\n|---|---|---|---|---|\n%s", idle, strings.Join(rows, "\n"))
}

// usage is a process's CPU time and its namespace's interface bytes.
type usage struct {
	cpu    time.Duration
	rx, tx uint64
}

func (u usage) minus(v usage) usage { return usage{u.cpu - v.cpu, u.rx - v.rx, u.tx - v.tx} }

// clockTick is the unit of /proc/PID/stat's CPU times (USER_HZ, 100 on
// Linux's supported architectures).
const clockTick = 10 * time.Millisecond

// measure reads d's CPU time (user + system, /proc/PID/stat) and the bytes
// its namespace's interfaces received and sent, loopback left out.
func measure(t *testing.T, tb *testbed, d *daemon) usage {
	t.Helper()
	if !d.running() {
		t.Fatalf("%s is not running", d.name)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command name, which is in parentheses: state
	// is field 3, utime field 14, stime field 15.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(f) < 13 {
		t.Fatalf("%s: /proc stat of %d fields", d.name, len(f))
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("%s: /proc stat: %v %v", d.name, err1, err2)
	}
	u := usage{cpu: time.Duration(utime+stime) * clockTick}
	out, err := command(context.Background(), scriptTimeout, "ip", "-n", tb.ns(d.ns), "-s", "-j", "link", "show")
	if err != nil {
		t.Fatalf("%s: ip link: %v", d.name, err)
	}
	var links []struct {
		Name  string `json:"ifname"`
		Stats struct {
			RX struct{ Bytes uint64 } `json:"rx"`
			TX struct{ Bytes uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		t.Fatalf("%s: ip -j link: %v", d.name, err)
	}
	for _, l := range links {
		if l.Name != "lo" {
			u.rx += l.Stats.RX.Bytes
			u.tx += l.Stats.TX.Bytes
		}
	}
	return u
}
