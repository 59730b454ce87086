package p2p

import "github.com/prometheus/client_golang/prometheus"

// Registerer is where a host's metrics are registered: a Prometheus
// registry.
type Registerer = prometheus.Registerer

// WithPrometheusRegisterer has libp2p register its metrics (host, swarm,
// transports, resource manager, NAT traversal, relay service) with reg
// instead of Prometheus's default registry, so that a program serves them
// from a registry of its own. It applies only with WithMetrics(true), and
// not with WithLibp2pHost; nil means the default registry.
func WithPrometheusRegisterer(reg prometheus.Registerer) Option {
	return func(c *config) error {
		c.registerer = reg
		return nil
	}
}
