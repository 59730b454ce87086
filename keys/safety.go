package keys

import (
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"strings"
)

// Safety number parameters.
const (
	// SafetyNumberVersion is mixed into every per-key fingerprint, so a
	// future construction yields visibly different numbers.
	SafetyNumberVersion = 1
	// SafetyNumberIterations is the number of SHA-512 iterations per key,
	// as in Signal's numeric fingerprint; it makes searching for a key with
	// a chosen half of the number expensive.
	SafetyNumberIterations = 5200
	// SafetyNumberDigits is the length of a safety number in digits.
	SafetyNumberDigits = 60

	safetyNumberLabel = "sotto/v1/safety-number"
)

// SafetyNumber returns the 60-digit number two users compare to check that
// each holds the other's real account key. It is the same whichever order
// the keys are given in, and is shown as 12 groups of 5 digits separated
// by spaces.
//
// Construction. For each key k:
//
//	h = SHA-512(uint16be(1) || "sotto/v1/safety-number" || k)
//	repeat 5200 times: h = SHA-512(h || k)
//
// The first 30 bytes of h are split into six 5-byte big-endian integers,
// each reduced mod 100000 and written as 5 decimal digits with leading
// zeros, giving 30 digits per key. The two 30-digit strings are sorted
// and concatenated, and the result is grouped in fives.
func SafetyNumber(a, b AccountPublic) string {
	da, db := safetyDigits(a), safetyDigits(b)
	if db < da {
		da, db = db, da
	}
	all := da + db
	var sb strings.Builder
	for i := 0; i < len(all); i += 5 {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(all[i : i+5])
	}
	return sb.String()
}

// safetyDigits returns the 30-digit half of a safety number for one key.
func safetyDigits(k AccountPublic) string {
	h := sha512.New()
	var v [2]byte
	binary.BigEndian.PutUint16(v[:], SafetyNumberVersion)
	h.Write(v[:])
	h.Write([]byte(safetyNumberLabel))
	h.Write(k[:])
	sum := h.Sum(nil)
	for range SafetyNumberIterations {
		h.Reset()
		h.Write(sum)
		h.Write(k[:])
		sum = h.Sum(sum[:0])
	}
	var sb strings.Builder
	for i := 0; i < 30; i += 5 {
		c := uint64(sum[i])<<32 | uint64(sum[i+1])<<24 | uint64(sum[i+2])<<16 | uint64(sum[i+3])<<8 | uint64(sum[i+4])
		fmt.Fprintf(&sb, "%05d", c%100000)
	}
	return sb.String()
}
