package node

import (
	"os"
	"runtime/debug"
)

// GCPercent is the garbage collector target (Go's GOGC) a node process
// runs with. A busy node allocates quickly while its live heap is small
// (about 5 MiB), so with Go's default of 100 it collects some 65 times a
// second, and the collections compete for the CPU with the writer that
// commits messages. At 300 the heap may grow to four times the live data
// before a collection instead of twice: about 10 MiB more, and durable
// throughput about a third higher (docs/BENCHMARKS.md).
const GCPercent = 300

// TuneGC sets the process's garbage collector target to GCPercent unless
// the GOGC environment variable sets one, and returns the previous
// target. The sotto command calls it at start; a program embedding nodes
// may call it, or choose its own setting.
func TuneGC() (previous int) {
	if os.Getenv("GOGC") != "" {
		p := debug.SetGCPercent(-1)
		debug.SetGCPercent(p)
		return p
	}
	return debug.SetGCPercent(GCPercent)
}
