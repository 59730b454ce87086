package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sotto-im/sotto/api"
)

// Bounds of the metrics endpoint (--metrics-listen).
const (
	metricsReadHeaderTimeout = 10 * time.Second
	metricsReadTimeout       = 30 * time.Second
	metricsWriteTimeout      = 30 * time.Second
	metricsIdleTimeout       = 2 * time.Minute
	// metricsGatherTimeout bounds one scrape's collection (promhttp answers
	// 503 past it); metricsStatusTimeout bounds reading the node's status
	// within it.
	metricsGatherTimeout = 20 * time.Second
	metricsStatusTimeout = 10 * time.Second
	// metricsMaxScrapes caps concurrent scrapes; more get 503.
	metricsMaxScrapes = 4
	// metricsShutdownTimeout bounds how long stopping waits for scrapes
	// in progress.
	metricsShutdownTimeout = 5 * time.Second
)

// metricsPath is where the metrics are served.
const metricsPath = "/metrics"

// statusMetric is one of Sotto's metrics, a value of the node's status.
type statusMetric struct {
	desc *prometheus.Desc
	kind prometheus.ValueType
	// value returns the metric's value, or false when the node has none
	// (the mailbox gauges of a node that serves no mailbox).
	value func(api.Status) (float64, bool)
}

func always(f func(api.Status) float64) func(api.Status) (float64, bool) {
	return func(st api.Status) (float64, bool) { return f(st), true }
}

func mailboxHeld(f func(*api.MailboxStatus) float64) func(api.Status) (float64, bool) {
	return func(st api.Status) (float64, bool) {
		if st.Mailbox == nil {
			return 0, false
		}
		return f(st.Mailbox), true
	}
}

// statusMetrics are Sotto's own metrics. Counters count from the node's
// start (Prometheus handles their reset at a restart), except
// sotto_message_requests_dropped_total, which the store keeps.
var statusMetrics = []statusMetric{
	{prometheus.NewDesc("sotto_outbox_pending", "Outbox entries (messages and receipts) not yet delivered or given up.", nil, nil),
		prometheus.GaugeValue, always(func(st api.Status) float64 { return float64(st.OutboxPending) })},
	{prometheus.NewDesc("sotto_connected_peers", "Peers the node is connected to.", nil, nil),
		prometheus.GaugeValue, always(func(st api.Status) float64 { return float64(st.ConnectedPeers) })},
	{prometheus.NewDesc("sotto_message_requests", "Message requests (first messages from accounts that are not contacts) waiting for the user.", nil, nil),
		prometheus.GaugeValue, always(func(st api.Status) float64 { return float64(st.Requests) })},
	{prometheus.NewDesc("sotto_message_requests_dropped_total", "Message requests dropped, oldest first, over the node's limit.", nil, nil),
		prometheus.CounterValue, always(func(st api.Status) float64 { return float64(st.RequestsDropped) })},
	{prometheus.NewDesc("sotto_mailbox_envelopes", "Envelopes this node holds for others as a mailbox (absent if it serves no mailbox).", nil, nil),
		prometheus.GaugeValue, mailboxHeld(func(m *api.MailboxStatus) float64 { return float64(m.Envelopes) })},
	{prometheus.NewDesc("sotto_mailbox_bytes", "Bytes of the envelopes this node holds for others as a mailbox (absent if it serves no mailbox).", nil, nil),
		prometheus.GaugeValue, mailboxHeld(func(m *api.MailboxStatus) float64 { return float64(m.Bytes) })},
	{prometheus.NewDesc("sotto_mailbox_deposits_accepted_total", "Envelopes this node's mailbox newly stored, deposited or gossiped.", nil, nil),
		prometheus.CounterValue, always(func(st api.Status) float64 { return float64(st.DepositsAccepted) })},
	{prometheus.NewDesc("sotto_mailbox_envelopes_served_total", "Envelopes this node's mailbox returned to syncing clients.", nil, nil),
		prometheus.CounterValue, always(func(st api.Status) float64 { return float64(st.EnvelopesServed) })},
	{prometheus.NewDesc("sotto_mailbox_syncs_total", "Mailbox syncs this node ran as a client.", nil, nil),
		prometheus.CounterValue, always(func(st api.Status) float64 { return float64(st.SyncsRun) })},
	{prometheus.NewDesc("sotto_messages_sent_total", "Messages the user sent (queued for delivery).", nil, nil),
		prometheus.CounterValue, always(func(st api.Status) float64 { return float64(st.MessagesSent) })},
	{prometheus.NewDesc("sotto_messages_received_total", "Messages received and stored.", nil, nil),
		prometheus.CounterValue, always(func(st api.Status) float64 { return float64(st.MessagesReceived) })},
	{prometheus.NewDesc("sotto_envelopes_rejected_total", "Envelopes refused as malformed.", nil, nil),
		prometheus.CounterValue, always(func(st api.Status) float64 { return float64(st.EnvelopesRejected) })},
	{prometheus.NewDesc("sotto_relay_reopens_total", "Relayed connections to contacts closed and dialled again so that hole punching runs on them.", nil, nil),
		prometheus.CounterValue, always(func(st api.Status) float64 { return float64(st.RelayReopens) })},
}

// statusCollector is a prometheus.Collector of Sotto's metrics: it reads
// the node's status at each scrape.
type statusCollector struct {
	status func(context.Context) (api.Status, error)
}

func newStatusCollector(status func(context.Context) (api.Status, error)) *statusCollector {
	return &statusCollector{status: status}
}

// Describe implements prometheus.Collector.
func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range statusMetrics {
		ch <- m.desc
	}
}

// Collect implements prometheus.Collector. When the status cannot be
// read, the scrape reports the error (and the other collectors' metrics).
func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), metricsStatusTimeout)
	defer cancel()
	st, err := c.status(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(statusMetrics[0].desc, fmt.Errorf("reading the node's status: %w", err))
		return
	}
	for _, m := range statusMetrics {
		if v, ok := m.value(st); ok {
			ch <- prometheus.MustNewConstMetric(m.desc, m.kind, v)
		}
	}
}

// newMetricsRegistry returns the registry --metrics-listen serves: the Go
// runtime's and the process's metrics to start with; libp2p registers its
// own when the host starts, and Sotto's collector is added once the node
// runs.
func newMetricsRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// listenMetrics opens the listener of --metrics-listen. Any address is
// allowed: the metrics hold counts, not content, and an operator scrapes
// them from another machine.
func listenMetrics(addr string) (net.Listener, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, usagef("--metrics-listen %q is not HOST:PORT: %v", addr, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %s: cannot listen: %w", addr, err)
	}
	return ln, nil
}

// serveMetrics serves reg at metricsPath on ln until stop is called; stop
// waits for scrapes in progress (up to metricsShutdownTimeout) and for
// the server to end.
func serveMetrics(ln net.Listener, reg *prometheus.Registry, log *slog.Logger) (stop func()) {
	mux := http.NewServeMux()
	mux.Handle(metricsPath, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		// A failing collector costs its own metrics, not the others'.
		ErrorHandling:       promhttp.ContinueOnError,
		ErrorLog:            slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		Timeout:             metricsGatherTimeout,
		MaxRequestsInFlight: metricsMaxScrapes,
	}))
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: metricsReadHeaderTimeout,
		ReadTimeout:       metricsReadTimeout,
		WriteTimeout:      metricsWriteTimeout,
		IdleTimeout:       metricsIdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server stopped", "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), metricsShutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
		<-done
	}
}
