package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
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
