package node

import (
	"runtime/debug"
	"testing"
)

// TestTuneGC: without GOGC in the environment the target becomes
// GCPercent; with it, the environment's choice stays.
func TestTuneGC(t *testing.T) {
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)

	t.Setenv("GOGC", "")
	if prev := TuneGC(); prev != 100 {
		t.Errorf("TuneGC returned %d, want the previous target 100", prev)
	}
	if cur := debug.SetGCPercent(100); cur != GCPercent {
		t.Errorf("target after TuneGC is %d, want %d", cur, GCPercent)
	}

	t.Setenv("GOGC", "100")
	if prev := TuneGC(); prev != 100 {
		t.Errorf("TuneGC with GOGC set returned %d", prev)
	}
	if cur := debug.SetGCPercent(orig); cur != 100 {
		t.Errorf("TuneGC changed the target to %d although GOGC is set", cur)
	}
}
