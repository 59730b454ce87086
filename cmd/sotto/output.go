package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"unicode"
)

// printJSON writes v as one line of JSON.
func printJSON(w io.Writer, v any) error {
	if err := json.NewEncoder(w).Encode(v); err != nil {
		return fmt.Errorf("writing output: %w", err)
	}
	return nil
}

// isTerminal reports whether w is a terminal, for output meant only for
// people (progress lines).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// clean makes text from other people safe to print on a terminal: control
// characters, which could move the cursor or change the terminal's state,
// become U+FFFD. Newlines and tabs are kept unless oneLine is set.
func clean(s string, oneLine bool) string {
	return strings.Map(func(r rune) rune {
		switch {
		case (r == '\n' || r == '\t') && !oneLine:
			return r
		case r == '\n' || r == '\t':
			return ' '
		case unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || unicode.Is(unicode.Bidi_Control, r):
			return '\uFFFD'
		}
		return r
	}, s)
}

// liveWriter writes lines to w and, when w is a terminal, one live
// progress line after them, which the next line or progress replaces.
// When w is not a terminal, progress is dropped, so that piped output holds
// only whole lines and no control characters. It is safe for concurrent
// use.
type liveWriter struct {
	mu   sync.Mutex
	w    io.Writer
	live bool // w is a terminal
	open bool // a progress line is on screen
}

// eraseLine returns the cursor to the start of the line and clears it.
const eraseLine = "\r\x1b[K"

func newLiveWriter(w io.Writer, live bool) *liveWriter {
	return &liveWriter{w: w, live: live}
}

// Write writes p below the progress line's place: an open progress line is
// erased first.
func (l *liveWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.eraseLocked()
	return l.w.Write(p)
}

// Progress shows text as the live progress line (on a terminal only); an
// empty text removes it.
func (l *liveWriter) Progress(text string) {
	if !l.live {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if text == "" {
		l.eraseLocked()
		return
	}
	io.WriteString(l.w, eraseLine+clean(text, true))
	l.open = true
}

// Beside returns a writer for another stream that shares w's screen
// (standard error next to standard output): each write first erases the
// progress line, so that the two do not mix on one line.
func (l *liveWriter) Beside(other io.Writer) io.Writer {
	if !l.live {
		return other
	}
	return besideWriter{l, other}
}

type besideWriter struct {
	l     *liveWriter
	other io.Writer
}

func (b besideWriter) Write(p []byte) (int, error) {
	b.l.mu.Lock()
	defer b.l.mu.Unlock()
	b.l.eraseLocked()
	return b.other.Write(p)
}

func (l *liveWriter) eraseLocked() {
	if l.open {
		io.WriteString(l.w, eraseLine)
		l.open = false
	}
}
