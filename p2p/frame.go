package p2p

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Every Sotto stream protocol (direct delivery, the mailbox protocol)
// carries length-prefixed frames: a 4-byte big-endian length n, then n
// bytes, with 1 <= n <= a maximum that each protocol and direction sets.

// FrameHeaderSize is the length prefix of a frame.
const FrameHeaderSize = 4

// ErrFrameSize is a frame length outside 1..max, on reading or writing.
var ErrFrameSize = errors.New("p2p: frame length out of range")

// AppendFrame appends payload as one frame to dst, so that an unbuffered
// stream gets the frame in one write.
func AppendFrame(dst, payload []byte, max int) ([]byte, error) {
	if len(payload) == 0 || len(payload) > max {
		return dst, fmt.Errorf("%w: %d (max %d)", ErrFrameSize, len(payload), max)
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	return append(dst, payload...), nil
}

// WriteFrame writes payload as one frame: the prefix, then the payload, in
// two writes (w is a buffered writer on every hot path).
func WriteFrame(w io.Writer, payload []byte, max int) error {
	if len(payload) == 0 || len(payload) > max {
		return fmt.Errorf("%w: %d (max %d)", ErrFrameSize, len(payload), max)
	}
	var hdr [FrameHeaderSize]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(payload)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// ReadFrameLen reads a frame's length prefix and checks it against max.
func ReadFrameLen(r io.Reader, max int) (int, error) {
	var hdr [FrameHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > uint32(max) {
		return 0, fmt.Errorf("%w: %d (max %d)", ErrFrameSize, n, max)
	}
	return int(n), nil
}

// ReadFrame reads one frame of at most max bytes. A stream that ends inside
// a frame yields io.ErrUnexpectedEOF; one that ends between frames, io.EOF.
func ReadFrame(r io.Reader, max int) ([]byte, error) {
	n, err := ReadFrameLen(r, max)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf, nil
}
