package protocol

import (
	"crypto/subtle"
	"errors"
)

// Padding hides the length of a message from everyone who cannot decrypt
// it. The plaintext handed to the ratchet is padded to one of a fixed set of
// bucket sizes with ISO/IEC 7816-4 padding: one 0x80 byte, then zero bytes
// up to the bucket size. The padding is inside the AEAD, so it is
// authenticated, and Unpad checks it strictly.

const (
	// PadMarker is the byte that starts the padding.
	PadMarker = 0x80

	// MinPaddedSize is the smallest bucket. It holds a short text message
	// together with the inner message header.
	MinPaddedSize = 160

	// PadBlockSize is the step between buckets above the power-of-two
	// sizes: buckets larger than PadBlockSize are its multiples.
	PadBlockSize = 4096

	// MaxPaddedSize is the largest bucket (14 × 4096 bytes). It leaves room
	// within MaxEnvelopeSize for the ratchet and PQXDH overheads.
	MaxPaddedSize = 14 * PadBlockSize

	// MaxPlaintextSize is the longest input Pad accepts within the bucket
	// scheme: the largest bucket less the marker byte.
	MaxPlaintextSize = MaxPaddedSize - 1
)

// smallBuckets are the bucket sizes up to PadBlockSize.
var smallBuckets = [...]int{MinPaddedSize, 256, 512, 1024, 2048, PadBlockSize}

// ErrBadPadding is returned by Unpad for any input that Pad cannot have
// produced.
var ErrBadPadding = errors.New("protocol: bad padding")

// PaddedSize returns the bucket size Pad uses for a plaintext of n bytes:
// the smallest bucket of at least n+1 bytes. For n > MaxPlaintextSize it
// returns the next multiple of PadBlockSize, which is not a bucket: callers
// must refuse such plaintexts before padding them.
func PaddedSize(n int) int {
	need := n + 1
	for _, b := range smallBuckets {
		if need <= b {
			return b
		}
	}
	return (need + PadBlockSize - 1) / PadBlockSize * PadBlockSize
}

// isBucket reports whether n is one of the bucket sizes.
func isBucket(n int) bool {
	if n > MaxPaddedSize {
		return false
	}
	for _, b := range smallBuckets {
		if n == b {
			return true
		}
	}
	return n > PadBlockSize && n%PadBlockSize == 0
}

// Pad returns a new slice holding plaintext, the marker byte 0x80 and zero
// bytes up to PaddedSize(len(plaintext)). The plaintext must be at most
// MaxPlaintextSize bytes long; the session layer checks this and refuses
// longer messages, because Unpad rejects anything longer than
// MaxPaddedSize.
func Pad(plaintext []byte) []byte {
	out := make([]byte, PaddedSize(len(plaintext)))
	n := copy(out, plaintext)
	out[n] = PadMarker
	return out
}

// Unpad removes the padding added by Pad. It returns ErrBadPadding unless
// len(padded) is a bucket size, padded ends with 0x80 followed only by
// zero bytes, and that bucket is the smallest that holds the plaintext
// (so that Pad(Unpad(x)) == x). The returned slice aliases padded.
//
// The scan for the marker runs over the whole input without branching on
// its contents, so its timing depends only on the (public) bucket size and
// the plaintext length.
func Unpad(padded []byte) ([]byte, error) {
	if !isBucket(len(padded)) {
		return nil, ErrBadPadding
	}
	// Walk backwards: while still inside the zero run, a zero byte extends
	// it; the first non-zero byte must be the marker.
	inZeros := 1
	marker := -1
	ok := 1
	for i := len(padded) - 1; i >= 0; i-- {
		b := padded[i]
		isZero := subtle.ConstantTimeByteEq(b, 0)
		isMarker := subtle.ConstantTimeByteEq(b, PadMarker)
		// The byte that ends the zero run must be the marker.
		ending := inZeros & (isZero ^ 1)
		ok &= (ending & isMarker) | (ending ^ 1)
		marker = subtle.ConstantTimeSelect(ending, i, marker)
		inZeros &= isZero
	}
	if ok != 1 || marker < 0 {
		return nil, ErrBadPadding
	}
	// Pad always picks the smallest bucket that fits; any other bucket
	// would be a second encoding of the same plaintext.
	if PaddedSize(marker) != len(padded) {
		return nil, ErrBadPadding
	}
	return padded[:marker], nil
}
