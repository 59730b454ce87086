package main

import (
	"fmt"
	"strings"

	qrcode "github.com/skip2/go-qrcode"
)

// inviteQR draws an invite as a QR code of half-block characters, two
// modules per character cell, light modules drawn as blocks so that the
// code reads on a dark terminal. The code carries the invite in upper
// case, which QR's alphanumeric mode stores in fewer modules; invites are
// case-insensitive.
func inviteQR(invite string) (string, error) {
	q, err := qrcode.New(strings.ToUpper(invite), qrcode.Low)
	if err != nil {
		return "", fmt.Errorf("drawing the QR code: %w", err)
	}
	return q.ToSmallString(false), nil
}
