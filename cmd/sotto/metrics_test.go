package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sotto-im/sotto/api"
)

// TestMetricsCollector checks the values Sotto's collector reads from the
// node's status, that the mailbox gauges are absent on a node that serves
// no mailbox, that the metrics follow Prometheus's naming rules, and that
// a status that cannot be read fails the scrape of Sotto's metrics.
func TestMetricsCollector(t *testing.T) {
	st := api.Status{
		PeerID: "12D3KooWtest", ConnectedPeers: 7, OutboxPending: 3,
		Requests: 2, RequestsDropped: 5,
		DepositsAccepted: 11, EnvelopesServed: 13, SyncsRun: 17, MessagesSent: 19, MessagesReceived: 23, EnvelopesRejected: 37,
		RelayReopens: 41,
	}
	calls := 0
	c := newStatusCollector(func(context.Context) (api.Status, error) {
		calls++
		return st, nil
	})
	const common = `
# HELP sotto_connected_peers Peers the node is connected to.
# TYPE sotto_connected_peers gauge
sotto_connected_peers 7
# HELP sotto_envelopes_rejected_total Envelopes refused as malformed.
# TYPE sotto_envelopes_rejected_total counter
sotto_envelopes_rejected_total 37
# HELP sotto_mailbox_deposits_accepted_total Envelopes this node's mailbox newly stored, deposited or gossiped.
# TYPE sotto_mailbox_deposits_accepted_total counter
sotto_mailbox_deposits_accepted_total 11
# HELP sotto_mailbox_envelopes_served_total Envelopes this node's mailbox returned to syncing clients.
# TYPE sotto_mailbox_envelopes_served_total counter
sotto_mailbox_envelopes_served_total 13
# HELP sotto_mailbox_syncs_total Mailbox syncs this node ran as a client.
# TYPE sotto_mailbox_syncs_total counter
sotto_mailbox_syncs_total 17
# HELP sotto_message_requests Message requests (first messages from accounts that are not contacts) waiting for the user.
# TYPE sotto_message_requests gauge
sotto_message_requests 2
# HELP sotto_message_requests_dropped_total Message requests dropped, oldest first, over the node's limit.
# TYPE sotto_message_requests_dropped_total counter
sotto_message_requests_dropped_total 5
# HELP sotto_messages_received_total Messages received and stored.
# TYPE sotto_messages_received_total counter
sotto_messages_received_total 23
# HELP sotto_messages_sent_total Messages the user sent (queued for delivery).
# TYPE sotto_messages_sent_total counter
sotto_messages_sent_total 19
# HELP sotto_outbox_pending Outbox entries (messages and receipts) not yet delivered or given up.
# TYPE sotto_outbox_pending gauge
sotto_outbox_pending 3
# HELP sotto_relay_reopens_total Relayed connections to contacts closed and dialled again so that hole punching runs on them.
# TYPE sotto_relay_reopens_total counter
sotto_relay_reopens_total 41
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(common)); err != nil {
		t.Errorf("node without a mailbox:\n%v", err)
	}

	st.Mailbox = &api.MailboxStatus{Envelopes: 29, Bytes: 31 << 20}
	withMailbox := common + `
# HELP sotto_mailbox_bytes Bytes of the envelopes this node holds for others as a mailbox (absent if it serves no mailbox).
# TYPE sotto_mailbox_bytes gauge
sotto_mailbox_bytes 3.2505856e+07
# HELP sotto_mailbox_envelopes Envelopes this node holds for others as a mailbox (absent if it serves no mailbox).
# TYPE sotto_mailbox_envelopes gauge
sotto_mailbox_envelopes 29
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(withMailbox)); err != nil {
		t.Errorf("mailbox node:\n%v", err)
	}
	if n := testutil.CollectAndCount(c); n != len(statusMetrics) {
		t.Errorf("a mailbox node has %d metrics, want all %d", n, len(statusMetrics))
	}
	if calls == 0 {
		t.Error("the collector never read the status")
	}

	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}

	// The status is read at each scrape, not once.
	st.OutboxPending = 4
	const outbox = `
# HELP sotto_outbox_pending Outbox entries (messages and receipts) not yet delivered or given up.
# TYPE sotto_outbox_pending gauge
sotto_outbox_pending 4
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(outbox), "sotto_outbox_pending"); err != nil {
		t.Errorf("after the status changed:\n%v", err)
	}

	broken := newStatusCollector(func(context.Context) (api.Status, error) {
		return api.Status{}, errors.New("store closed")
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(broken)
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), "store closed") {
		t.Errorf("gathering with a failing status: %v, want the status error", err)
	}
}

// TestMetricsListen runs the real binary with --metrics-listen, scrapes
// /metrics, and checks that libp2p's and Sotto's metrics are there and
// that sotto_outbox_pending counts a message to a contact whose node is
// not running. It also checks the errors of a bad or busy address.
func TestMetricsListen(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a node")
	}
	e := newE2E(t)
	e.sotto("init", "--data", e.dir("alice"), "--name", "alice")
	e.sotto("init", "--data", e.dir("bob"), "--name", "bob") // never runs

	_, err := e.try("run", "--data", e.dir("alice"), "--metrics-listen", "nonsense")
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitUsage || !strings.Contains(err.Error(), "--metrics-listen") {
		t.Errorf("run --metrics-listen nonsense: %v, want a usage error naming the flag", err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.try("run", "--data", e.dir("alice"), "--listen", "/ip4/127.0.0.1/tcp/0", "--metrics-listen", busy.Addr().String())
	busy.Close()
	if !errors.As(err, &exit) || exit.ExitCode() != exitFailure || !strings.Contains(err.Error(), "--metrics-listen "+busy.Addr().String()) {
		t.Errorf("run --metrics-listen on a busy port: %v, want a failure naming the flag and the address", err)
	}

	alice := e.start("alice", "--metrics-listen", "127.0.0.1:0")
	url := strings.TrimPrefix(alice.startupLine("metrics: http://127.0.0.1:"), "metrics: ")
	if !strings.HasSuffix(url, "/metrics") {
		t.Fatalf("metrics line %q does not end in /metrics", url)
	}

	m := scrapeMetrics(t, url)
	libp2p := 0
	for name := range m {
		if strings.HasPrefix(name, "libp2p_") {
			libp2p++
		}
	}
	if libp2p == 0 {
		t.Errorf("no libp2p_ metrics in the scrape: %v", m)
	}
	for _, name := range []string{
		"sotto_outbox_pending", "sotto_connected_peers", "sotto_message_requests",
		"sotto_mailbox_deposits_accepted_total", "sotto_mailbox_envelopes_served_total", "sotto_mailbox_syncs_total",
		"sotto_messages_sent_total", "sotto_messages_received_total", "sotto_envelopes_rejected_total",
		"sotto_relay_reopens_total",
	} {
		if _, ok := m[name]; !ok {
			t.Errorf("no %s in the scrape", name)
		}
	}
	if _, ok := m["sotto_mailbox_envelopes"]; ok {
		t.Error("sotto_mailbox_envelopes on a node that serves no mailbox")
	}
	if m["sotto_outbox_pending"] != "0" || m["sotto_messages_sent_total"] != "0" {
		t.Errorf("before sending: outbox %q, sent %q; want 0, 0", m["sotto_outbox_pending"], m["sotto_messages_sent_total"])
	}

	bobInvite := strings.TrimSpace(e.sotto("invite", "--data", e.dir("bob")))
	e.sotto("contact", "add", "--data", e.dir("alice"), "bob", bobInvite)
	e.sotto("send", "--data", e.dir("alice"), "bob", "are you there?")
	// The send went through the running node: both values are there at
	// the next scrape. Bob's node never runs, so the message stays.
	m = scrapeMetrics(t, url)
	if m["sotto_outbox_pending"] != "1" || m["sotto_messages_sent_total"] != "1" {
		t.Errorf("after sending to an offline contact: outbox %q, sent %q; want 1, 1", m["sotto_outbox_pending"], m["sotto_messages_sent_total"])
	}

	// The endpoint stops with the node.
	alice.stop()
	client := &http.Client{Timeout: 5 * time.Second}
	if resp, err := client.Get(url); err == nil {
		resp.Body.Close()
		t.Errorf("GET %s answered %s after the node stopped", url, resp.Status)
	}
}

// scrapeMetrics fetches url and returns the value of each sample, keyed
// by its name with labels as written.
func scrapeMetrics(t *testing.T, url string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e2eCommandTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	out := make(map[string]string)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("GET %s: malformed line %q", url, line)
		}
		out[line[:i]] = line[i+1:]
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
