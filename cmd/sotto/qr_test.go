package main

import (
	"strings"
	"testing"

	qrcode "github.com/skip2/go-qrcode"
)

// TestInviteQRModules reads the half-block drawing back into modules and
// compares them with the QR code of the upper-cased invite: each character
// cell is two modules, a block standing for light ones.
func TestInviteQRModules(t *testing.T) {
	inv := "sotto://" + strings.Repeat("abcdefghijklmnopqrstuvwxyz234567", 12)
	got, err := inviteQR(inv)
	if err != nil {
		t.Fatal(err)
	}
	q, err := qrcode.New(strings.ToUpper(inv), qrcode.Low)
	if err != nil {
		t.Fatal(err)
	}
	want := q.Bitmap() // true: dark module
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	if len(lines) != (len(want)+1)/2 {
		t.Fatalf("%d lines for %d module rows", len(lines), len(want))
	}
	for i, line := range lines {
		cells := []rune(line)
		if len(cells) != len(want[0]) {
			t.Fatalf("line %d is %d cells wide, want %d", i, len(cells), len(want[0]))
		}
		for x, r := range cells {
			top, bottom := true, true // dark
			switch r {
			case '█':
				top, bottom = false, false
			case '▀':
				top = false
			case '▄':
				bottom = false
			case ' ':
			default:
				t.Fatalf("line %d has %q", i, r)
			}
			if top != want[2*i][x] || (2*i+1 < len(want) && bottom != want[2*i+1][x]) {
				t.Fatalf("module (%d, %d..%d) drawn as %q", x, 2*i, 2*i+1, r)
			}
		}
	}
	// An invite of about the usual size fits a terminal of 100 columns.
	if w := len(want[0]); w > 100 {
		t.Errorf("QR code of a %d-character invite is %d columns wide", len(inv), w)
	}
}
