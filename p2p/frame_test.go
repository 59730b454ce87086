package p2p

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		payload []byte
		wantErr error
	}{
		{"one byte", []byte{1}, nil},
		{"max", bytes.Repeat([]byte{2}, MaxFrameSize), nil},
		{"empty", nil, ErrFrameSize},
		{"too large", make([]byte, MaxFrameSize+1), ErrFrameSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := WriteFrame(&buf, tt.payload, MaxFrameSize)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || buf.Len() != 0 {
					t.Fatalf("WriteFrame = %v (%d bytes written), want %v", err, buf.Len(), tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := ReadFrame(&buf, MaxFrameSize)
			if err != nil || !bytes.Equal(got, tt.payload) {
				t.Fatalf("ReadFrame = %d bytes, %v", len(got), err)
			}
		})
	}
}

func TestReadFrameRejects(t *testing.T) {
	hdr := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty stream", nil, io.EOF},
		{"short header", []byte{0, 0}, io.ErrUnexpectedEOF},
		{"zero length", hdr(0), ErrFrameSize},
		{"oversized", hdr(MaxFrameSize + 1), ErrFrameSize},
		{"huge", hdr(0xffffffff), ErrFrameSize},
		{"truncated body", append(hdr(10), 1, 2, 3), io.ErrUnexpectedEOF},
		{"header only", hdr(10), io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ReadFrame(bytes.NewReader(tt.in), MaxFrameSize); !errors.Is(err, tt.want) {
				t.Fatalf("ReadFrame = %v, want %v", err, tt.want)
			}
		})
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0x42})
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2})
	f.Add([]byte{0, 2, 0, 1, 9})
	f.Add([]byte{0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 1, 7})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		for {
			off := len(in) - r.Len()
			p, err := ReadFrame(r, MaxFrameSize)
			if err != nil {
				return
			}
			if len(p) == 0 || len(p) > MaxFrameSize {
				t.Fatalf("accepted a frame of %d bytes", len(p))
			}
			// The accepted frame re-encodes to exactly the bytes consumed.
			var buf bytes.Buffer
			if err := WriteFrame(&buf, p, MaxFrameSize); err != nil {
				t.Fatal(err)
			}
			if end := len(in) - r.Len(); !bytes.Equal(buf.Bytes(), in[off:end]) {
				t.Fatal("frame does not re-encode to its input")
			}
		}
	})
}

func TestAppendFrameMatchesWriteFrame(t *testing.T) {
	for _, payload := range [][]byte{{7}, bytes.Repeat([]byte{3}, 1000)} {
		var buf bytes.Buffer
		if err := WriteFrame(&buf, payload, 1000); err != nil {
			t.Fatal(err)
		}
		got, err := AppendFrame([]byte("x"), payload, 1000)
		if err != nil || !bytes.Equal(got, append([]byte("x"), buf.Bytes()...)) {
			t.Fatalf("AppendFrame = %x, %v; want x then %x", got, err, buf.Bytes())
		}
	}
	if got, err := AppendFrame([]byte("x"), make([]byte, 1001), 1000); !errors.Is(err, ErrFrameSize) || string(got) != "x" {
		t.Fatalf("AppendFrame over max = %q, %v; want the input unchanged and ErrFrameSize", got, err)
	}
}
