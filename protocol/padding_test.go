package protocol

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

func TestPaddedSize(t *testing.T) {
	for _, tc := range []struct{ n, want int }{
		{0, 160},
		{159, 160},
		{160, 256},
		{255, 256},
		{256, 512},
		{511, 512},
		{1023, 1024},
		{2047, 2048},
		{4095, 4096},
		{4096, 8192},
		{8191, 8192},
		{8192, 12288},
		{MaxPlaintextSize, MaxPaddedSize},
		{MaxPlaintextSize + 1, MaxPaddedSize + PadBlockSize}, // not a bucket
	} {
		if got := PaddedSize(tc.n); got != tc.want {
			t.Errorf("PaddedSize(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

func TestPadRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 100, 159, 160, 1000, 4095, 4096, 20000, MaxPlaintextSize} {
		p := bytes.Repeat([]byte{0xa5}, n)
		if n > 0 {
			p[n-1] = 0 // trailing zeros in the plaintext must survive
		}
		padded := Pad(p)
		if len(padded) != PaddedSize(n) {
			t.Fatalf("len(Pad(%d bytes)) = %d", n, len(padded))
		}
		if padded[n] != PadMarker {
			t.Fatalf("no marker after %d bytes", n)
		}
		got, err := Unpad(padded)
		if err != nil {
			t.Fatalf("Unpad(Pad(%d bytes)): %v", n, err)
		}
		if !bytes.Equal(got, p) {
			t.Fatalf("Unpad(Pad(%d bytes)) differs", n)
		}
	}
}

func TestUnpadRejects(t *testing.T) {
	valid := func(n int) []byte { return Pad(bytes.Repeat([]byte{'x'}, n)) }
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"not a bucket size", append(valid(10), 0)},
		{"short", valid(10)[:159]},
		{"beyond the largest bucket", Pad(make([]byte, MaxPlaintextSize+1))},
		{"all zero", make([]byte, 160)},
		{"no marker", bytes.Repeat([]byte{'x'}, 160)},
		{"wrong marker", func() []byte { b := valid(10); b[10] = 0x81; return b }()},
		{"marker 0x01", func() []byte { b := valid(10); b[10] = 0x01; return b }()},
		{"nonzero after marker", func() []byte { b := valid(10); b[20] = 1; return b }()},
		{"last byte neither zero nor marker", func() []byte { b := valid(10); b[159] = 0x01; return b }()},
		{"zero after data, no marker", func() []byte { b := valid(10); b[10] = 0; return b }()},
		{"bucket larger than needed", func() []byte { b := make([]byte, 256); b[0] = PadMarker; return b }()},
		{"bucket one step too large", func() []byte { b := make([]byte, 512); b[255] = PadMarker; return b }()},
		{"multiple-of-4096 bucket too large", func() []byte { b := make([]byte, 3*PadBlockSize); b[2*PadBlockSize-1] = PadMarker; return b }()},
		{"marker in a large bucket then junk", func() []byte { b := valid(5000); b[8191] = 0xff; return b }()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Unpad(tc.in); !errors.Is(err, ErrBadPadding) {
				t.Errorf("Unpad = %v, want ErrBadPadding", err)
			}
		})
	}
}

func TestUnpadAcceptsEveryBucket(t *testing.T) {
	sizes := append([]int(nil), smallBuckets[:]...)
	for s := 2 * PadBlockSize; s <= MaxPaddedSize; s += PadBlockSize {
		sizes = append(sizes, s)
	}
	for _, s := range sizes {
		// The shortest and the longest plaintext each bucket holds.
		short := 0
		if i := slices.Index(sizes, s); i > 0 {
			short = sizes[i-1]
		}
		b := make([]byte, s)
		b[short] = PadMarker
		if got, err := Unpad(b); err != nil || len(got) != short {
			t.Errorf("Unpad(%d bytes in %d bucket) = %d bytes, %v", short, s, len(got), err)
		}
		b[short], b[s-1] = 'x', PadMarker
		if got, err := Unpad(b); err != nil || len(got) != s-1 {
			t.Errorf("Unpad(full %d bucket) = %d bytes, %v", s, len(got), err)
		}
	}
}

func FuzzUnpad(f *testing.F) {
	f.Add([]byte{})
	f.Add(Pad(nil))
	f.Add(Pad([]byte("hello")))
	f.Add(Pad(bytes.Repeat([]byte{0x80}, 300)))
	f.Add(make([]byte, 160))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Unpad(b)
		if err != nil {
			return
		}
		if !bytes.Equal(Pad(p), b) {
			t.Fatalf("Pad(Unpad(x)) != x for %x", b)
		}
	})
}

func FuzzPad(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0x80, 0})
	f.Add(bytes.Repeat([]byte{0}, 159))
	f.Fuzz(func(t *testing.T, p []byte) {
		if len(p) > MaxPlaintextSize {
			return
		}
		got, err := Unpad(Pad(p))
		if err != nil || !bytes.Equal(got, p) {
			t.Fatalf("Unpad(Pad(x)) = %x, %v", got, err)
		}
	})
}
