package keys

import (
	"bytes"
	"crypto/sha512"
	"fmt"
	"math/big"
	"regexp"
	"sort"
	"strings"
	"testing"
)

func TestSafetyNumberKnownAnswer(t *testing.T) {
	a := AccountPublic(bytes.Repeat([]byte{0x11}, 32))
	b := AccountPublic(bytes.Repeat([]byte{0x22}, 32))
	const want = "43517 59148 82464 73139 84423 46507 71947 38955 38500 06369 90293 50861"
	if got := SafetyNumber(a, b); got != want {
		t.Errorf("SafetyNumber = %q, want %q", got, want)
	}
	if got := referenceSafetyNumber(a, b); got != want {
		t.Errorf("reference construction = %q, want %q", got, want)
	}
}

// referenceSafetyNumber follows the doc comment of SafetyNumber literally,
// independently of the implementation.
func referenceSafetyNumber(a, b AccountPublic) string {
	half := func(k AccountPublic) string {
		h := sha512.Sum512(append(append([]byte{0x00, 0x01}, "sotto/v1/safety-number"...), k[:]...))
		for i := 0; i < 5200; i++ {
			h = sha512.Sum512(append(h[:], k[:]...))
		}
		var s string
		for i := 0; i < 6; i++ {
			n := new(big.Int).SetBytes(h[5*i : 5*i+5])
			s += fmt.Sprintf("%05d", new(big.Int).Mod(n, big.NewInt(100000)))
		}
		return s
	}
	halves := []string{half(a), half(b)}
	sort.Strings(halves)
	all := halves[0] + halves[1]
	var groups []string
	for i := 0; i < 60; i += 5 {
		groups = append(groups, all[i:i+5])
	}
	return strings.Join(groups, " ")
}

func TestSafetyNumberProperties(t *testing.T) {
	format := regexp.MustCompile(`^[0-9]{5}( [0-9]{5}){11}$`)
	a := testAccount(t, "safety-a").Public()
	b := testAccount(t, "safety-b").Public()
	c := testAccount(t, "safety-c").Public()
	ab, ba := SafetyNumber(a, b), SafetyNumber(b, a)
	if ab != ba {
		t.Fatalf("order matters: %q vs %q", ab, ba)
	}
	if !format.MatchString(ab) || len(strings.ReplaceAll(ab, " ", "")) != SafetyNumberDigits {
		t.Fatalf("bad format %q", ab)
	}
	if SafetyNumber(a, c) == ab || SafetyNumber(c, b) == ab {
		t.Fatal("changing one key kept the number")
	}
	// Each key contributes one half: the number with a third party shares
	// exactly the half that belongs to the common key.
	ac := SafetyNumber(a, c)
	ha := safetyDigits(a)
	if !strings.Contains(strings.ReplaceAll(ab, " ", ""), ha) || !strings.Contains(strings.ReplaceAll(ac, " ", ""), ha) {
		t.Fatal("a's half missing")
	}
	if got := referenceSafetyNumber(a, c); got != ac {
		t.Fatalf("reference %q, implementation %q", got, ac)
	}
	// A key with itself (notes to self) still works.
	if !format.MatchString(SafetyNumber(a, a)) {
		t.Fatal("self number malformed")
	}
}

func BenchmarkSafetyNumber(b *testing.B) {
	x := AccountPublic{1}
	y := AccountPublic{2}
	for b.Loop() {
		SafetyNumber(x, y)
	}
}
