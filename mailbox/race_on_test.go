//go:build race

package mailbox

// raceEnabled: the race detector slows the heavy tests down; they do less.
const raceEnabled = true
