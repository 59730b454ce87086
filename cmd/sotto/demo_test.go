package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestDemo runs the whole demonstration network, as `sotto demo` does.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts seven nodes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := runDemo(ctx, false, &out); err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{
		"every step succeeded",
		"safety number, the same on both sides",
		"stored at",
		"holds 3 envelopes",
		`"Bring the blue notebook."`,
		"message request",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q:\n%s", want, text)
		}
	}
}
