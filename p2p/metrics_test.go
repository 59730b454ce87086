package p2p

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestPrometheusRegisterer checks that with metrics on, libp2p's metrics
// (the resource manager's among them) go to the registry given, and that
// without WithMetrics(true) nothing does.
func TestPrometheusRegisterer(t *testing.T) {
	reg := prometheus.NewRegistry()
	newTestHost(t, WithNAT(false), WithMetrics(true), WithPrometheusRegisterer(reg))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var rcmgr, other int
	for _, mf := range mfs {
		switch name := mf.GetName(); {
		case strings.HasPrefix(name, "libp2p_rcmgr_"):
			rcmgr++
		case strings.HasPrefix(name, "libp2p_"):
			other++
		}
	}
	if rcmgr == 0 || other == 0 {
		t.Errorf("registry holds %d resource manager and %d other libp2p metric families, want some of each", rcmgr, other)
	}

	off := prometheus.NewRegistry()
	newTestHost(t, WithNAT(false), WithPrometheusRegisterer(off))
	if mfs, err := off.Gather(); err != nil || len(mfs) != 0 {
		t.Errorf("with metrics off, the registry holds %d metric families (%v)", len(mfs), err)
	}
}
