package nattest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Addresses of the testbed, as testbed.sh sets them up. The public side is
// 192.0.0.128/25: never routed on the internet, yet public to go-multiaddr
// (TestTestbedAddresses checks both with manet).
const (
	pub1IP  = "192.0.0.129"
	pub2IP  = "192.0.0.130"
	pub3IP  = "192.0.0.131"
	pub4IP  = "192.0.0.132"
	r1WAN   = "192.0.0.141"
	r2WAN   = "192.0.0.142"
	r3WAN   = "192.0.0.143"
	aliceIP = "10.1.0.2"
	bobIP   = "10.2.0.2"
	carolIP = "10.3.0.2"
)

// The testbed's namespaces are named prefixFamily + 4 hex digits + role
// (testbed.sh's roles, and "chk" for the requirement probe).
const prefixFamily = "st"

var familyNamespace = regexp.MustCompile(`^(` + prefixFamily + `[0-9a-f]{4})(net|pub[0-9]|r[0-9]|alice|bob|carol|chk)$`)

// lockPath serialises testbeds on one machine: under the lock, every
// namespace of the family that is not this run's is a leftover of a run
// that crashed.
const lockPath = "/run/sotto-nattest.lock"

// Bounds of the testbed's own operations.
const (
	scriptTimeout = 30 * time.Second // one testbed.sh or ip command
	lockWait      = 3 * time.Minute  // another run's testbed to go away
)

// TestTestbedAddresses checks that the public addresses testbed.sh gives
// are public to go-multiaddr (else AutoNAT, AutoRelay and hole punching
// never engage) and that the script sets them up, and that the home
// addresses are private.
func TestTestbedAddresses(t *testing.T) {
	script, err := os.ReadFile("testbed.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ip     string
		public bool
	}{
		{pub1IP, true}, {pub2IP, true}, {pub3IP, true}, {pub4IP, true},
		{r1WAN, true}, {r2WAN, true}, {r3WAN, true},
		{aliceIP, false}, {bobIP, false}, {carolIP, false},
	} {
		a := ma.StringCast("/ip4/" + c.ip + "/tcp/4001")
		if got := manet.IsPublicAddr(a); got != c.public {
			t.Errorf("manet.IsPublicAddr(%s) = %v, want %v", a, got, c.public)
		}
		if !c.public && !manet.IsPrivateAddr(a) {
			t.Errorf("manet.IsPrivateAddr(%s) = false, want true", a)
		}
		if c.public && !regexp.MustCompile(`\s`+regexp.QuoteMeta(c.ip)+`\s`).Match(script) {
			t.Errorf("testbed.sh does not set up %s", c.ip)
		}
	}
}

// testbed is one running testbed: its prefix and the script.
type testbed struct {
	prefix string
	script string
}

// need reports a missing requirement: a skip, or a failure under CI
// (SOTTO_CI=1), where the testbed must run.
func need(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("SOTTO_CI") == "1" {
		t.Fatalf("%s (SOTTO_CI=1: the NAT testbed must run in CI)", msg)
	}
	t.Skip(msg)
}

// checkRequirements skips (or, under CI, fails) unless the machine can
// build a testbed: Linux, root, ip netns and nft.
func checkRequirements(t *testing.T) {
	t.Helper()
	ci := os.Getenv("SOTTO_CI") == "1"
	if testing.Short() && !ci {
		t.Skip("-short: the NAT testbed builds network namespaces and runs ten daemons")
	}
	if runtime.GOOS != "linux" {
		need(t, "the NAT testbed needs Linux network namespaces, not %s", runtime.GOOS)
	}
	if os.Geteuid() != 0 {
		need(t, "the NAT testbed needs root to create network namespaces")
	}
	for _, tool := range []string{"ip", "nft", "tc", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			need(t, "the NAT testbed needs %s on PATH (apt-get install nftables iproute2)", tool)
		}
	}
}

// newTestbed takes the machine's testbed lock, removes leftovers of
// crashed runs, checks that namespaces and nftables work, and brings a
// fresh testbed up. Cleanup (registered here, so it runs after the
// daemons' cleanups registered later) removes it.
func newTestbed(t *testing.T) *testbed {
	t.Helper()
	script, err := filepath.Abs("testbed.sh")
	if err != nil {
		t.Fatal(err)
	}
	tb := &testbed{prefix: prefixFamily + randomHex(2), script: script}
	lockTestbeds(t)
	tb.removeLeftovers(t)
	tb.probe(t)

	t.Cleanup(func() {
		if err := tb.run("down", tb.prefix); err != nil {
			t.Errorf("testbed down: %v", err)
		}
		if left := tb.namespaces(); len(left) > 0 {
			t.Errorf("namespaces left after testbed down: %v", left)
		}
	})
	if err := tb.run("up", tb.prefix); err != nil {
		t.Fatalf("testbed up: %v", err)
	}
	t.Logf("testbed %s is up: %v", tb.prefix, tb.namespaces())
	return tb
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// lockTestbeds holds the machine-wide testbed lock until the test ends.
func lockTestbeds(t *testing.T) {
	t.Helper()
	path := lockPath
	if _, err := os.Stat(filepath.Dir(path)); err != nil {
		path = filepath.Join(os.TempDir(), filepath.Base(lockPath))
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		need(t, "testbed lock %s: %v", path, err)
	}
	deadline := time.Now().Add(lockWait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			t.Fatalf("testbed lock %s: %v (another NAT testbed runs on this machine)", path, err)
		}
		time.Sleep(time.Second) // another run holds the lock; it has no event to wait on
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}

// removeLeftovers removes the namespaces of earlier runs that crashed
// before their cleanup (the lock guarantees no other run owns them).
func (tb *testbed) removeLeftovers(t *testing.T) {
	t.Helper()
	stale := map[string]bool{}
	for _, ns := range listNamespaces() {
		if m := familyNamespace.FindStringSubmatch(ns); m != nil && m[1] != tb.prefix {
			stale[m[1]] = true
		}
	}
	for p := range stale {
		t.Logf("removing the leftover testbed %s of an earlier run", p)
		if err := tb.run("down", p); err != nil {
			t.Fatalf("removing leftover testbed %s: %v", p, err)
		}
	}
}

// probe checks that this machine can create a namespace and load an
// nftables table in it.
func (tb *testbed) probe(t *testing.T) {
	t.Helper()
	ns := tb.prefix + "chk"
	defer command(context.Background(), scriptTimeout, "ip", "netns", "del", ns)
	if out, err := command(context.Background(), scriptTimeout, "ip", "netns", "add", ns); err != nil {
		need(t, "ip netns does not work here: %v: %s", err, out)
	}
	if out, err := command(context.Background(), scriptTimeout, "ip", "netns", "exec", ns, "nft", "add", "table", "ip", "probe"); err != nil {
		need(t, "nftables does not work in a network namespace here: %v: %s", err, out)
	}
}

// run runs testbed.sh with args.
func (tb *testbed) run(args ...string) error {
	out, err := command(context.Background(), scriptTimeout, tb.script, args...)
	if err != nil {
		return fmt.Errorf("testbed.sh %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out))
	}
	return nil
}

// nat sets router's NAT mode: "preserve" or "random".
func (tb *testbed) nat(t *testing.T, router, mode string) {
	t.Helper()
	if err := tb.run("nat", tb.prefix, router, mode); err != nil {
		t.Fatal(err)
	}
}

// udp makes router drop ("drop") or forward ("allow") UDP.
func (tb *testbed) udp(t *testing.T, router, mode string) {
	t.Helper()
	if err := tb.run("udp", tb.prefix, router, mode); err != nil {
		t.Fatal(err)
	}
}

// ns is the full name of the testbed's namespace for role.
func (tb *testbed) ns(role string) string { return tb.prefix + role }

// namespaces lists this testbed's namespaces.
func (tb *testbed) namespaces() []string {
	var mine []string
	for _, ns := range listNamespaces() {
		if strings.HasPrefix(ns, tb.prefix) {
			mine = append(mine, ns)
		}
	}
	slices.Sort(mine)
	return mine
}

func listNamespaces() []string {
	out, err := command(context.Background(), scriptTimeout, "ip", "netns", "list")
	if err != nil {
		return nil
	}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

// command runs name with args, bounded by timeout and ctx, and returns
// its combined output.
func command(ctx context.Context, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", err, ctx.Err())
	}
	return string(out), err
}

// qdisc is the root queueing discipline of dev in the testbed's
// namespace ns, as tc shows it.
func (tb *testbed) qdisc(t *testing.T, ns, dev string) string {
	t.Helper()
	out, err := command(context.Background(), scriptTimeout, "ip", "netns", "exec", tb.prefix+ns, "tc", "qdisc", "show", "dev", dev)
	if err != nil {
		t.Fatalf("tc qdisc show in %s: %v: %s", ns, err, out)
	}
	return out
}

// TestTestbedSlowLink: testbed.sh slow shapes both directions of a home
// host's link (the host's eth0 and its router's lan) to the rate asked,
// and heal takes both away; a host that is not behind a home router is
// refused.
func TestTestbedSlowLink(t *testing.T) {
	checkRequirements(t)
	tb := newTestbed(t)
	if err := tb.run("slow", tb.prefix, "bob", "64"); err != nil {
		t.Fatal(err)
	}
	for _, at := range [][2]string{{"bob", "eth0"}, {"r2", "lan"}} {
		if q := tb.qdisc(t, at[0], at[1]); !strings.Contains(q, "tbf") || !strings.Contains(q, "rate 64Kbit") {
			t.Fatalf("%s %s after slow: %q, want a 64 kbit/s token bucket", at[0], at[1], q)
		}
	}
	if q := tb.qdisc(t, "alice", "eth0"); strings.Contains(q, "tbf") {
		t.Fatalf("slow on bob shaped alice's link too: %q", q)
	}
	if err := tb.run("heal", tb.prefix, "bob"); err != nil {
		t.Fatal(err)
	}
	for _, at := range [][2]string{{"bob", "eth0"}, {"r2", "lan"}} {
		if q := tb.qdisc(t, at[0], at[1]); strings.Contains(q, "tbf") {
			t.Fatalf("%s %s after heal: %q, still shaped", at[0], at[1], q)
		}
	}
	if err := tb.run("slow", tb.prefix, "pub2", "64"); err == nil {
		t.Fatal("slow on a public node, which has no home router, was accepted")
	}
}
