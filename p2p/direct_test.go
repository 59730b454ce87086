package p2p

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/internal/testkit"
)

func TestAckStatusMapping(t *testing.T) {
	tests := []struct {
		recvErr error
		status  AckStatus
		sendErr error
	}{
		{nil, AckOK, nil},
		{ErrDuplicateEnvelope, AckDuplicate, nil},
		{fmt.Errorf("store: %w", ErrDuplicateEnvelope), AckDuplicate, nil},
		{ErrMalformedEnvelope, AckRejected, ErrRejected},
		{fmt.Errorf("protocol: bad version: %w", ErrMalformedEnvelope), AckRejected, ErrRejected},
		{errors.New("disk full"), AckTryLater, ErrTryLater},
		{context.DeadlineExceeded, AckTryLater, ErrTryLater},
	}
	for _, tt := range tests {
		st := ackStatusOf(tt.recvErr)
		if st != tt.status {
			t.Errorf("ackStatusOf(%v) = %v, want %v", tt.recvErr, st, tt.status)
		}
		if err := errOfAck(st); !errors.Is(err, tt.sendErr) || (tt.sendErr == nil) != (err == nil) {
			t.Errorf("errOfAck(%v) = %v, want %v", st, err, tt.sendErr)
		}
	}
	if err := errOfAck(AckStatus(200)); !errors.Is(err, ErrBadAck) {
		t.Errorf("errOfAck(200) = %v, want ErrBadAck", err)
	}
}

// directPair is a sender host and a receiver host, connected.
func directPair(t testing.TB, rcv Receiver, rOpts ...Option) (snd, dst *Host) {
	t.Helper()
	dst = newTestHost(t, append([]Option{WithNAT(false), WithReceiver(rcv)}, rOpts...)...)
	snd = newTestHost(t, WithNAT(false))
	ctx := testkit.Context(t, 20*time.Second)
	if err := snd.Connect(ctx, dst.AddrInfo()); err != nil {
		t.Fatal(err)
	}
	return snd, dst
}

func TestDirectPipelinedStatuses(t *testing.T) {
	// The receiver's answer depends on the envelope; many sends in flight
	// at once must each get the answer to their own envelope.
	rcv := &memReceiver{status: func(env []byte) error {
		switch env[0] % 4 {
		case 1:
			return ErrDuplicateEnvelope
		case 2:
			return ErrMalformedEnvelope
		case 3:
			return errors.New("busy")
		}
		return nil
	}}
	snd, dst := directPair(t, rcv)
	ctx := testkit.Context(t, 30*time.Second)
	const n = 400
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = snd.Sender().Send(ctx, dst.ID(), []byte{byte(i), byte(i >> 8)})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		var want error
		switch i % 4 {
		case 2:
			want = ErrRejected
		case 3:
			want = ErrTryLater
		}
		if (want == nil) != (err == nil) || !errors.Is(err, want) {
			t.Fatalf("send %d: %v, want %v", i, err, want)
		}
	}
	if got := rcv.count(); got != n/4 {
		t.Fatalf("receiver stored %d, want %d", got, n/4)
	}
}

func TestDirectInFlightCap(t *testing.T) {
	// With at most 2 envelopes in flight and a receiver that blocks, no
	// more than 2 envelopes are ever unacked on the stream, and all go
	// through once the receiver proceeds.
	release := make(chan struct{})
	rcv := ReceiverFunc(func(ctx context.Context, _ peer.ID, env []byte) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	dst := newTestHost(t, WithNAT(false), WithReceiver(rcv))
	snd := newTestHost(t, WithNAT(false), WithMaxInFlight(2))
	ctx := testkit.Context(t, 30*time.Second)
	if err := snd.Connect(ctx, dst.AddrInfo()); err != nil {
		t.Fatal(err)
	}
	const n = 6
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- snd.Sender().Send(ctx, dst.ID(), []byte{byte(i)}) }()
	}
	testkit.WaitFor(t, ctx, func() bool {
		o := snd.Sender().current(dst.ID())
		return o != nil && o.queued() == 2
	})
	close(release)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if hw := snd.Sender().current(dst.ID()).highWater(); hw != 2 {
		t.Fatalf("in-flight high water %d, want 2", hw)
	}
}

func TestDirectNoReceiver(t *testing.T) {
	dst := newTestHost(t, WithNAT(false))
	snd := newTestHost(t, WithNAT(false))
	ctx := testkit.Context(t, 20*time.Second)
	if err := snd.Connect(ctx, dst.AddrInfo()); err != nil {
		t.Fatal(err)
	}
	if err := snd.Sender().Send(ctx, dst.ID(), []byte("x")); err == nil {
		t.Fatal("Send to a host without a receiver succeeded")
	}
}

func TestDirectSendValidates(t *testing.T) {
	snd, dst := directPair(t, &memReceiver{})
	ctx := testkit.Context(t, 20*time.Second)
	for _, env := range [][]byte{nil, make([]byte, MaxFrameSize+1)} {
		if err := snd.Sender().Send(ctx, dst.ID(), env); !errors.Is(err, ErrFrameSize) {
			t.Fatalf("Send(%d bytes) = %v, want ErrFrameSize", len(env), err)
		}
	}
}

func TestDirectReopensAfterIdleClose(t *testing.T) {
	// The receiver closes idle streams; the sender notices and opens a new
	// stream for the next envelope.
	rcv := &memReceiver{}
	snd, dst := directPair(t, rcv, WithDirectTimeouts(200*time.Millisecond, time.Second))
	ctx := testkit.Context(t, 20*time.Second)
	if err := snd.Sender().Send(ctx, dst.ID(), []byte("one")); err != nil {
		t.Fatal(err)
	}
	first := snd.Sender().current(dst.ID())
	select {
	case <-first.done:
	case <-ctx.Done():
		t.Fatal("idle stream never closed")
	}
	if err := snd.Sender().Send(ctx, dst.ID(), []byte("two")); err != nil {
		t.Fatalf("Send after idle close: %v", err)
	}
	if rcv.count() != 2 {
		t.Fatalf("received %d", rcv.count())
	}
}

// hostileCase opens a raw direct stream and misbehaves on it.
type hostileCase struct {
	name string
	act  func(s network.Stream) error
}

func TestDirectHostilePeers(t *testing.T) {
	const idle = 300 * time.Millisecond
	// hostileBound is far above the node's timeouts, so a loaded machine
	// does not fail the test, and far below the test's own limit.
	const hostileBound = 20 * idle
	rcv := &memReceiver{}
	dst := newTestHost(t, WithNAT(false), WithReceiver(rcv),
		WithDirectTimeouts(idle, idle), WithMaxInboundStreamsPerPeer(2))
	legit := newTestHost(t, WithNAT(false))
	hostile := newTestHost(t, WithNAT(false))
	ctx := testkit.Context(t, 60*time.Second)
	for _, h := range []*Host{legit, hostile} {
		if err := h.Connect(ctx, dst.AddrInfo()); err != nil {
			t.Fatal(err)
		}
	}

	// The legitimate peer sends throughout.
	stop := make(chan struct{})
	var sent atomic.Int64
	legitDone := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				legitDone <- nil
				return
			default:
			}
			if err := legit.Sender().Send(ctx, dst.ID(), []byte(fmt.Sprintf("legit %d", i))); err != nil {
				legitDone <- fmt.Errorf("legit send %d: %w", i, err)
				return
			}
			sent.Add(1)
		}
	}()

	hdr := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	cases := []hostileCase{
		{"garbage", func(s network.Stream) error {
			_, err := s.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			return err
		}},
		{"oversized length", func(s network.Stream) error {
			_, err := s.Write(hdr(MaxFrameSize + 1))
			return err
		}},
		{"max uint32 length", func(s network.Stream) error {
			_, err := s.Write(hdr(0xffffffff))
			return err
		}},
		{"zero length", func(s network.Stream) error {
			_, err := s.Write(hdr(0))
			return err
		}},
		{"truncated then close", func(s network.Stream) error {
			if _, err := s.Write(append(hdr(100), 1, 2, 3)); err != nil {
				return err
			}
			return s.CloseWrite()
		}},
		{"truncated then silent", func(s network.Stream) error {
			_, err := s.Write(append(hdr(100), 1, 2, 3))
			return err
		}},
		{"half a header then silent", func(s network.Stream) error {
			_, err := s.Write([]byte{0, 0})
			return err
		}},
		{"silent", func(s network.Stream) error { return nil }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := hostile.LibP2P().NewStream(ctx, dst.ID(), DirectProtocol)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Reset()
			if err := tc.act(s); err != nil {
				t.Fatalf("hostile write: %v", err)
			}
			// The node must end the stream without an ack, within its
			// timeouts.
			s.SetReadDeadline(time.Now().Add(hostileBound))
			b, err := io.ReadAll(bufio.NewReader(s))
			if len(b) != 0 {
				t.Fatalf("node answered %x to a hostile stream", b)
			}
			if errors.Is(err, osDeadline) {
				t.Fatal("node kept the hostile stream open past its timeouts")
			}
		})
	}

	close(stop)
	if err := <-legitDone; err != nil {
		t.Fatal(err)
	}
	if sent.Load() == 0 {
		t.Fatal("legitimate peer sent nothing while hostile streams ran")
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	for i, from := range rcv.from {
		if from != legit.ID() {
			t.Fatalf("envelope %d stored from %s, not the legitimate peer", i, from)
		}
	}
	if int64(len(rcv.got)) != sent.Load() {
		t.Fatalf("stored %d envelopes, legitimate peer had %d acked", len(rcv.got), sent.Load())
	}
	t.Logf("legitimate peer: %d envelopes acked while hostile streams ran", sent.Load())
}

func TestDirectInboundCapPerPeer(t *testing.T) {
	// Default (long) idle timeout: streams held silent stay open for the
	// whole test, so only the cap can end the third one.
	rcv := &memReceiver{}
	dst := newTestHost(t, WithNAT(false), WithReceiver(rcv), WithMaxInboundStreamsPerPeer(2))
	hostile := newTestHost(t, WithNAT(false))
	legit := newTestHost(t, WithNAT(false))
	ctx := testkit.Context(t, 30*time.Second)
	for _, h := range []*Host{legit, hostile} {
		if err := h.Connect(ctx, dst.AddrInfo()); err != nil {
			t.Fatal(err)
		}
	}
	open := func() network.Stream {
		s, err := hostile.LibP2P().NewStream(ctx, dst.ID(), DirectProtocol)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Reset() })
		// Half a header forces negotiation and holds the handler.
		if _, err := s.Write([]byte{0, 0}); err != nil {
			t.Fatal(err)
		}
		return s
	}
	open()
	open()
	testkit.WaitFor(t, ctx, func() bool { return dst.inboundCount(hostile.ID()) == 2 })

	third := open()
	third.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(third)
	if len(b) != 0 || err == nil {
		t.Fatalf("over-cap stream: read %x, %v; want a reset", b, err)
	}
	if errors.Is(err, osDeadline) {
		t.Fatal("over-cap stream was left open")
	}
	if got := dst.inboundCount(hostile.ID()); got != 2 {
		t.Fatalf("hostile peer holds %d streams, want 2", got)
	}
	// The cap is per peer: another peer is served.
	if err := legit.Sender().Send(ctx, dst.ID(), []byte("hello")); err != nil {
		t.Fatalf("legitimate send while hostile peer is at its cap: %v", err)
	}
}

func TestDirectInboundPipeline(t *testing.T) {
	// depth 1: Receive calls never overlap. depth 4: four run at once
	// (what lets a store commit them together), acks still in order.
	for _, depth := range []int{1, 4} {
		t.Run(fmt.Sprint("depth ", depth), func(t *testing.T) {
			var running, most atomic.Int32
			release := make(chan struct{})
			rcv := ReceiverFunc(func(ctx context.Context, _ peer.ID, env []byte) error {
				now := running.Add(1)
				defer running.Add(-1)
				for {
					m := most.Load()
					if now <= m || most.CompareAndSwap(m, now) {
						break
					}
				}
				select {
				case <-release:
				case <-ctx.Done():
					return ctx.Err()
				}
				if env[0]%2 == 1 {
					return ErrMalformedEnvelope
				}
				return nil
			})
			snd, dst := directPair(t, rcv, WithInboundPipeline(depth))
			ctx := testkit.Context(t, 30*time.Second)
			const n = 12
			errs := make([]chan error, n)
			for i := range n {
				errs[i] = make(chan error, 1)
				go func() { errs[i] <- snd.Sender().Send(ctx, dst.ID(), []byte{byte(i)}) }()
			}
			testkit.WaitFor(t, ctx, func() bool { return running.Load() == int32(depth) })
			close(release)
			for i := range n {
				err := <-errs[i]
				if i%2 == 1 && !errors.Is(err, ErrRejected) || i%2 == 0 && err != nil {
					t.Fatalf("send %d: %v", i, err)
				}
			}
			if got := most.Load(); got != int32(depth) {
				t.Fatalf("at most %d Receive calls ran at once, want %d", got, depth)
			}
		})
	}
}
