//go:build race

package node

// raceEnabled: the race detector slows the heavy tests down; they do less.
const raceEnabled = true
