package ui

import (
	"fmt"
	"net/http"
	"strings"

	qrcode "github.com/skip2/go-qrcode"
)

// qrQuiet is the quiet zone around a QR code, in modules, as the standard
// asks.
const qrQuiet = 4

// inviteSVG draws invite as a QR code in SVG: one path of unit squares on
// a white square, dark modules black whatever the page's theme, since
// scanners want dark on light. The code carries the invite in upper case,
// which QR's alphanumeric mode stores in fewer modules; invites are
// case-insensitive.
func inviteSVG(invite string) ([]byte, error) {
	q, err := qrcode.New(strings.ToUpper(invite), qrcode.Low)
	if err != nil {
		return nil, fmt.Errorf("ui: drawing the QR code: %w", err)
	}
	q.DisableBorder = true
	bits := q.Bitmap()
	n := len(bits) + 2*qrQuiet
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" shape-rendering="crispEdges">`, n, n)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="#fff"/><path fill="#000" d="`, n, n)
	for y, row := range bits {
		for x, dark := range row {
			if dark {
				fmt.Fprintf(&b, "M%d %dh1v1h-1z", x+qrQuiet, y+qrQuiet)
			}
		}
	}
	b.WriteString(`"/></svg>`)
	return []byte(b.String()), nil
}

// handleInviteQR serves the node's invite as an SVG QR code.
func (s *Server) handleInviteQR(w http.ResponseWriter, r *http.Request) {
	inv, err := s.b.Invite(r.Context())
	if err != nil {
		refuse(w, r, http.StatusServiceUnavailable, "unavailable", "no invite: "+err.Error())
		return
	}
	svg, err := inviteSVG(inv)
	if err != nil {
		refuse(w, r, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	w.Header().Set("Content-Type", "image/svg+xml")
	w.Write(svg)
}
