package p2p

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// DirectProtocol is the stream protocol of direct delivery. The initiator
// writes envelope frames; the responder answers each, in order, with an ack
// frame sent only after the envelope is durably stored.
//
// Frame: a 4-byte big-endian length n (1 <= n <= MaxFrameSize), then n
// bytes. An envelope frame carries the envelope; an ack frame carries one
// status byte (AckStatus).
const DirectProtocol protocol.ID = "/sotto/msg/1.0.0"

// Limits of the direct protocol.
const (
	// MaxFrameSize bounds one frame's payload; a length prefix above it is
	// a protocol violation and resets the stream.
	MaxFrameSize = 128 << 10
	// ackFrameSize is the payload size of an ack frame.
	ackFrameSize = 1
	// receiveTimeout bounds one Receiver.Receive call; on timeout the
	// envelope is acked AckTryLater.
	receiveTimeout = 30 * time.Second
	// sendAttempts: Send retries once on a fresh stream when the stream
	// fails under a live connection (the responder dedups, so a resend is
	// safe).
	sendAttempts = 2
	// DirectDialTimeout bounds a dial to a peer's known addresses, and
	// RouteTimeout the DHT lookup of fresh ones after that fails.
	DirectDialTimeout = 5 * time.Second
	RouteTimeout      = 10 * time.Second
	// DialFailMemory is how long a peer no dial reached is not dialled
	// again for a send.
	DialFailMemory = 30 * time.Second
)

// AckStatus is the responder's answer to one envelope.
type AckStatus uint8

// Ack statuses. AckOK and AckDuplicate both mean the envelope is stored.
const (
	AckOK        AckStatus = 0 // stored durably
	AckDuplicate AckStatus = 1 // already stored before; counts as stored
	AckRejected  AckStatus = 2 // malformed or unacceptable; do not retry
	AckTryLater  AckStatus = 3 // not stored now (busy, storage error); retry
)

func (s AckStatus) String() string {
	switch s {
	case AckOK:
		return "ok"
	case AckDuplicate:
		return "duplicate"
	case AckRejected:
		return "rejected"
	case AckTryLater:
		return "try-later"
	}
	return fmt.Sprintf("AckStatus(%d)", uint8(s))
}

// Errors of the direct protocol. A Receiver returns ErrDuplicateEnvelope or
// ErrMalformedEnvelope (wrapped or not) to choose the ack status; any other
// error is acked AckTryLater. Send returns ErrRejected and ErrTryLater for
// the corresponding acks.
var (
	ErrDuplicateEnvelope = errors.New("p2p: envelope already stored")
	ErrMalformedEnvelope = errors.New("p2p: envelope malformed")
	ErrRejected          = errors.New("p2p: recipient rejected the envelope (do not retry)")
	ErrTryLater          = errors.New("p2p: recipient could not store the envelope now (retry later)")
	ErrBadAck            = errors.New("p2p: malformed ack")
	ErrStreamFailed      = errors.New("p2p: direct stream failed")
	// ErrStreamReplaced is why a stream this side reset because a better
	// connection to the peer came (a new one after the peer restarted, a
	// direct one after hole punching): the peer is there, and what was
	// in flight is to be sent again at once. It comes wrapped in
	// ErrStreamFailed.
	ErrStreamReplaced = errors.New("p2p: stream replaced by a newer connection")
)

// Receiver takes inbound envelopes. Receive returns only after the envelope
// (and everything it changes) is durably committed; its return value
// becomes the ack. Receive calls may run concurrently, also for envelopes from one stream (up
// to the inbound pipeline depth, so that a store can commit several in one
// transaction); acks still go back in the order the envelopes came. The
// envelope slice is the Receiver's to keep.
type Receiver interface {
	Receive(ctx context.Context, from peer.ID, envelope []byte) error
}

// OrderedReceiver is a Receiver that takes envelopes in frame order: the
// stream's reader calls Enqueue synchronously for each frame, in the order
// the frames arrived, and the returned channel yields the Receive result
// once the envelope is committed. Enqueue must not block for long (it is
// backpressure on the stream); ctx bounds the whole receive.
type OrderedReceiver interface {
	Receiver
	Enqueue(ctx context.Context, from peer.ID, envelope []byte) <-chan error
}

// relayedKey marks the context of envelopes that came through a relay.
type relayedKey struct{}

// CameRelayed reports whether the envelope a Receive or Enqueue call is
// given came over a relayed connection (still Noise-authenticated end to
// end: from is who sent it).
func CameRelayed(ctx context.Context) bool { return ctx.Value(relayedKey{}) != nil }

// Relayed reports whether the sender's stream to p runs through a relay
// (false when there is none).
func (snd *Sender) Relayed(p peer.ID) bool {
	slot := snd.slotOf(p)
	if slot == nil {
		return false
	}
	slot.mu.Lock()
	defer slot.mu.Unlock()
	return slot.os != nil && slot.os.relayed
}

// ReceiverFunc adapts a function to Receiver.
type ReceiverFunc func(ctx context.Context, from peer.ID, envelope []byte) error

// Receive calls f.
func (f ReceiverFunc) Receive(ctx context.Context, from peer.ID, envelope []byte) error {
	return f(ctx, from, envelope)
}

// ackStatusOf maps a Receiver's result to the ack status.
func ackStatusOf(err error) AckStatus {
	switch {
	case err == nil:
		return AckOK
	case errors.Is(err, ErrDuplicateEnvelope):
		return AckDuplicate
	case errors.Is(err, ErrMalformedEnvelope):
		return AckRejected
	default:
		return AckTryLater
	}
}

// errOfAck maps an ack status to Send's result.
func errOfAck(s AckStatus) error {
	switch s {
	case AckOK, AckDuplicate:
		return nil
	case AckRejected:
		return ErrRejected
	case AckTryLater:
		return ErrTryLater
	}
	return fmt.Errorf("%w: unknown status %d", ErrBadAck, uint8(s))
}

// readAck reads one ack frame.
func readAck(r io.Reader) (AckStatus, error) {
	b, err := ReadFrame(r, ackFrameSize)
	if err != nil {
		return 0, err
	}
	return AckStatus(b[0]), nil
}

// acquireInbound counts an inbound direct stream from p, refusing it over
// the per-peer cap.
func (n *Host) acquireInbound(p peer.ID) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed || n.inbound[p] >= n.cfg.maxInboundPerPeer {
		return false
	}
	n.inbound[p]++
	n.wg.Add(1)
	return true
}

func (n *Host) releaseInbound(p peer.ID) {
	n.mu.Lock()
	if n.inbound[p]--; n.inbound[p] <= 0 {
		delete(n.inbound, p)
	}
	n.mu.Unlock()
	n.wg.Done()
}

// handleDirect serves one inbound direct stream.
func (n *Host) handleDirect(s network.Stream) {
	p := s.Conn().RemotePeer()
	if !n.acquireInbound(p) {
		n.cfg.logger.Debug("direct stream refused: too many from peer", "peer", p)
		s.Reset()
		return
	}
	defer n.releaseInbound(p)
	if err := n.serveDirect(s, p); err != nil {
		n.cfg.logger.Debug("direct stream reset", "peer", p, "err", err)
		return
	}
	s.Close()
}

// inbound is the state of one inbound direct stream. A reader goroutine
// reads frames and starts a Receive for each, up to the pipeline depth at
// once (so a store can commit several envelopes in one transaction); the
// serving goroutine writes the acks in frame order.
type inbound struct {
	n *Host
	s network.Stream
	p peer.ID

	mu      sync.Mutex
	pending int  // envelopes read and not yet acked
	inFrame bool // the reader is inside a frame (frame deadline applies)
}

// setIdle arms the idle deadline if nothing is pending: while acks are
// owed the peer may rightly wait for them instead of sending.
func (in *inbound) setIdle() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.inFrame = false
	if in.pending > 0 {
		return in.s.SetReadDeadline(time.Time{})
	}
	return in.s.SetReadDeadline(time.Now().Add(in.n.cfg.readIdleTimeout))
}

func (in *inbound) startFrame() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.inFrame = true
	return in.s.SetReadDeadline(time.Now().Add(in.n.cfg.frameTimeout))
}

func (in *inbound) endFrame() {
	in.mu.Lock()
	in.pending++
	in.mu.Unlock()
}

// acked notes one ack written; the last one owed re-arms the idle deadline
// unless the reader is inside a frame.
func (in *inbound) acked() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.pending--
	if in.pending == 0 && !in.inFrame {
		in.s.SetReadDeadline(time.Now().Add(in.n.cfg.readIdleTimeout))
	}
}

// receipt is one envelope's Receive result, in frame order.
type receipt struct {
	res  chan error
	size int // memory reserved for the envelope
}

// serveDirect serves s until the initiator closes its side (nil) or
// anything goes wrong (error, s reset). Either way every goroutine it
// started has ended when it returns.
func (n *Host) serveDirect(s network.Stream, p peer.ID) (err error) {
	in := &inbound{n: n, s: s, p: p}
	ctx, cancel := context.WithCancel(n.ctx)
	if c := s.Conn(); c.Stat().Limited || IsRelayed(c.RemoteMultiaddr()) {
		ctx = context.WithValue(ctx, relayedKey{}, true)
	}
	receipts := make(chan receipt, n.cfg.inboundPipeline)
	slots := make(chan struct{}, n.cfg.inboundPipeline) // Receive calls running
	readErr := make(chan error, 1)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		if err != nil {
			s.Reset()
		}
		wg.Wait()
		for r := range receipts { // drain what the reader left behind
			<-r.res
			s.Scope().ReleaseMemory(r.size)
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(receipts)
		readErr <- in.readLoop(ctx, &wg, slots, receipts)
	}()

	bw := bufio.NewWriter(s)
	for r := range receipts {
		var rerr error
		select {
		case rerr = <-r.res:
		case <-n.ctx.Done():
			return ErrClosed
		}
		<-slots
		s.Scope().ReleaseMemory(r.size)
		if n.ctx.Err() != nil {
			return ErrClosed // never ack what a shutdown interrupted
		}
		st := ackStatusOf(rerr)
		if rerr != nil && st != AckDuplicate {
			n.cfg.logger.Debug("direct envelope not stored", "peer", p, "status", st, "err", rerr)
		}
		// Acks are tiny: they collect in bw and go out in one write once
		// no further result is ready.
		if bw.Available() < FrameHeaderSize+ackFrameSize {
			if err := n.flushAcks(s, bw); err != nil {
				return err
			}
		}
		if err := WriteFrame(bw, []byte{byte(st)}, ackFrameSize); err != nil {
			return err
		}
		if len(receipts) == 0 {
			if err := n.flushAcks(s, bw); err != nil {
				return err
			}
		}
		in.acked()
	}
	if err := <-readErr; err != nil {
		return err
	}
	return n.flushAcks(s, bw)
}

// readLoop reads frames and starts their Receive calls until the stream
// ends (nil on a clean end between frames) or fails.
func (in *inbound) readLoop(ctx context.Context, wg *sync.WaitGroup, slots chan<- struct{}, receipts chan<- receipt) error {
	n := in.n
	br := bufio.NewReaderSize(in.s, FrameHeaderSize+MaxFrameSize)
	for {
		if br.Buffered() == 0 {
			if err := in.setIdle(); err != nil {
				return err
			}
			if _, err := br.Peek(1); err != nil {
				if err == io.EOF {
					return nil
				}
				return err
			}
		}
		if err := in.startFrame(); err != nil {
			return err
		}
		size, err := ReadFrameLen(br, MaxFrameSize)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if err := in.s.Scope().ReserveMemory(size, network.ReservationPriorityMedium); err != nil {
			return err
		}
		env := make([]byte, size)
		if _, err := io.ReadFull(br, env); err != nil {
			in.s.Scope().ReleaseMemory(size)
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		in.endFrame()
		select {
		case slots <- struct{}{}: // blocks at the pipeline depth: backpressure
		case <-ctx.Done():
			in.s.Scope().ReleaseMemory(size)
			return ctx.Err()
		}
		r := receipt{res: make(chan error, 1), size: size}
		receipts <- r // never blocks: a receipt per slot
		wg.Add(1)
		rctx, cancel := context.WithTimeout(ctx, receiveTimeout)
		if or, ok := n.cfg.receiver.(OrderedReceiver); ok {
			// Handed over here, in frame order; only the wait is concurrent.
			ch := or.Enqueue(rctx, in.p, env)
			go func() {
				defer wg.Done()
				defer cancel()
				select {
				case err := <-ch:
					r.res <- err
				case <-rctx.Done():
					r.res <- rctx.Err()
				}
			}()
			continue
		}
		go func() {
			defer wg.Done()
			defer cancel()
			r.res <- n.cfg.receiver.Receive(rctx, in.p, env)
		}()
	}
}

// flushAcks writes the buffered acks under a write deadline.
func (n *Host) flushAcks(s network.Stream, bw *bufio.Writer) error {
	if bw.Buffered() == 0 {
		return nil
	}
	if err := s.SetWriteDeadline(time.Now().Add(n.cfg.frameTimeout)); err != nil {
		return err
	}
	return bw.Flush()
}

// Sender sends envelopes over the direct protocol. It keeps one stream per
// peer and pipelines: many envelopes may be in flight on a stream, and acks
// come back in order. Safe for concurrent use.
type Sender struct {
	n *Host

	mu     sync.Mutex
	closed bool
	peers  map[peer.ID]*peerSlot
	// failed remembers peers no dial reached, until when sends to them
	// fail at once (the caller has other paths: mailboxes).
	failed map[peer.ID]time.Time
}

// peerSlot serialises opening the stream to one peer.
type peerSlot struct {
	mu sync.Mutex
	os *outStream
}

func newSender(n *Host) *Sender {
	return &Sender{n: n, peers: make(map[peer.ID]*peerSlot), failed: make(map[peer.ID]time.Time)}
}

// Send writes env to p and waits for p's ack. It returns nil once p has
// durably stored env (acked OK or duplicate), ErrRejected if p refused it
// for good, ErrTryLater if p could not store it now, or a transport error.
// After an error other than ErrRejected the envelope may or may not have
// been stored; resending is safe because the recipient deduplicates.
func (snd *Sender) Send(ctx context.Context, p peer.ID, env []byte) error {
	if len(env) == 0 || len(env) > MaxFrameSize {
		return fmt.Errorf("%w: envelope of %d bytes", ErrFrameSize, len(env))
	}
	var err error
	for range sendAttempts {
		var os *outStream
		os, err = snd.stream(ctx, p)
		if err != nil {
			return err
		}
		err = os.send(ctx, env)
		if !errors.Is(err, ErrStreamFailed) || ctx.Err() != nil {
			return err
		}
		// A stream can fail under a live connection (the recipient closed
		// it as idle just as we wrote): retry on a fresh one. If the
		// connection is gone too, the peer is: report that at once rather
		// than redial.
		if c := snd.n.h.Network().Connectedness(p); c != network.Connected && c != network.Limited {
			return err
		}
	}
	return err
}

// SendBatch writes envs to p in order on one stream, pipelined, and waits
// for every ack. The result for envs[i] is errs[i], with Send's meanings.
// Frames leave in slice order, so a recipient that processes frames in
// order sees them in that order.
func (snd *Sender) SendBatch(ctx context.Context, p peer.ID, envs [][]byte) []error {
	errs := make([]error, len(envs))
	for i, env := range envs {
		if len(env) == 0 || len(env) > MaxFrameSize {
			errs[i] = fmt.Errorf("%w: envelope of %d bytes", ErrFrameSize, len(env))
		}
	}
	os, err := snd.stream(ctx, p)
	if err != nil {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return errs
	}
	reqs := make([]*sendReq, len(envs))
	for i, env := range envs {
		if errs[i] != nil {
			continue
		}
		r := &sendReq{env: env, res: make(chan error, 1)}
		select {
		case os.reqs <- r:
			reqs[i] = r
		case <-os.done:
			errs[i] = fmt.Errorf("%w: %w", ErrStreamFailed, os.err)
		case <-ctx.Done():
			errs[i] = ctx.Err()
		}
	}
	for i, r := range reqs {
		if r == nil {
			continue
		}
		select {
		case errs[i] = <-r.res:
		case <-ctx.Done():
			errs[i] = ctx.Err()
		}
	}
	return errs
}

// stream returns the live stream to p, opening one if needed.
func (snd *Sender) stream(ctx context.Context, p peer.ID) (*outStream, error) {
	snd.mu.Lock()
	if snd.closed {
		snd.mu.Unlock()
		return nil, ErrClosed
	}
	slot := snd.peers[p]
	if slot == nil {
		slot = &peerSlot{}
		snd.peers[p] = slot
	}
	snd.mu.Unlock()

	slot.mu.Lock()
	defer slot.mu.Unlock()
	n := snd.n
	if slot.os != nil && !slot.os.failed() {
		// A stream over a relay moves to the direct connection once hole
		// punching made one; what was in flight is sent again (the
		// recipient deduplicates).
		if !slot.os.relayed || !n.HasDirect(p) {
			return slot.os, nil
		}
		slot.os.fail(fmt.Errorf("%w: moving to the direct connection", ErrStreamReplaced))
	}
	slot.os = nil
	if err := snd.connect(ctx, p); err != nil {
		return nil, err
	}
	// A relayed connection is limited; messages may use it until a direct
	// one exists.
	s, err := n.h.NewStream(network.WithAllowLimitedConn(ctx, "sotto direct"), p, DirectProtocol)
	if err != nil {
		return nil, fmt.Errorf("p2p: open direct stream to %s: %w", p, err)
	}
	os := newOutStream(n, s)
	snd.mu.Lock()
	if snd.closed {
		snd.mu.Unlock()
		s.Reset()
		return nil, ErrClosed
	}
	snd.mu.Unlock()
	if !n.goFunc(os.writeLoop) {
		os.fail(ErrClosed)
		return nil, ErrClosed
	}
	if !n.goFunc(os.readLoop) {
		os.fail(ErrClosed)
		return nil, ErrClosed
	}
	slot.os = os
	return os, nil
}

// slotOf is p's slot, nil if nothing was ever sent to p.
func (snd *Sender) slotOf(p peer.ID) *peerSlot {
	snd.mu.Lock()
	defer snd.mu.Unlock()
	return snd.peers[p]
}

// busy reports whether messages to p are in flight on the stream to p
// (written, not yet acknowledged) or a stream to p is being opened.
func (snd *Sender) busy(p peer.ID) bool {
	slot := snd.slotOf(p)
	if slot == nil {
		return false
	}
	if !slot.mu.TryLock() { // a stream is being opened
		return true
	}
	os := slot.os
	slot.mu.Unlock()
	if os == nil || os.failed() {
		return false
	}
	os.mu.Lock()
	defer os.mu.Unlock()
	return len(os.queue) > 0
}

// Reach makes sure a connection to p is open, as a send to p would
// (connect), for protocols that ride on connections made for other
// reasons: a gossip topic meets a subscriber only over a connection.
func (snd *Sender) Reach(ctx context.Context, p peer.ID) error {
	return snd.connect(ctx, p)
}

// connect makes sure a connection to p is open: the addresses known
// first, then fresh ones from peer routing (the DHT), each attempt
// bounded. The DHT is asked only when no address is known or p is
// protected (a contact, a mailbox): a stranger whose stored addresses fail
// is not worth a walk per send. When neither works the failure is remembered for
// DialFailMemory, and sends to p fail at once with ErrNoDirectPath in that
// time unless p connects meanwhile (Forget, or p dials us).
func (snd *Sender) connect(ctx context.Context, p peer.ID) error {
	n := snd.n
	if c := n.h.Network().Connectedness(p); c == network.Connected || c == network.Limited {
		return nil
	}
	snd.mu.Lock()
	until, failed := snd.failed[p]
	if failed && !n.cfg.now().Before(until) {
		delete(snd.failed, p)
		failed = false
	}
	snd.mu.Unlock()
	if failed {
		return fmt.Errorf("%w: %s: no dial reached it lately; next try after %s", ErrNoDirectPath, p, until.Format(time.TimeOnly))
	}
	var dialErr error
	if len(n.h.Peerstore().Addrs(p)) > 0 {
		dctx, cancel := context.WithTimeout(ctx, DirectDialTimeout)
		dialErr = n.h.Connect(dctx, peer.AddrInfo{ID: p})
		cancel()
		if dialErr == nil {
			return nil
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// The addresses known are stale (p moved, restarted on another port)
	// or there are none: ask the DHT.
	routeErr := errors.New("not looked up")
	if dialErr == nil || n.IsProtected(p, "") {
		rctx, cancel := context.WithTimeout(ctx, RouteTimeout)
		_, routeErr = n.FindPeer(rctx, p)
		cancel()
		if routeErr == nil {
			return nil
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	snd.mu.Lock()
	snd.failed[p] = n.cfg.now().Add(DialFailMemory)
	snd.mu.Unlock()
	return fmt.Errorf("%w: %s: %w", ErrNoDirectPath, p, errors.Join(dialErr, routeErr))
}

// Forget drops what the sender remembers of failed dials to p (p is known
// to be back).
func (snd *Sender) Forget(p peer.ID) {
	snd.mu.Lock()
	delete(snd.failed, p)
	snd.mu.Unlock()
	snd.n.ClearBackoff(p)
}

// ResetStale fails the outbound stream to p if it runs over another
// connection than conn. A new connection from a peer usually means it
// restarted: a stream on the old connection may wait out its idle timeout
// before it notices (a QUIC connection to a killed process is never told).
// What was in flight on it is sent again; the recipient deduplicates.
func (snd *Sender) ResetStale(p peer.ID, conn network.Conn) {
	slot := snd.slotOf(p)
	if slot == nil {
		return
	}
	slot.mu.Lock()
	defer slot.mu.Unlock()
	if slot.os != nil && !slot.os.failed() && slot.os.s.Conn() != conn {
		slot.os.fail(fmt.Errorf("%w: the peer connected again", ErrStreamReplaced))
		slot.os = nil
	}
}

// close resets every stream; the loops exit and the host's wait sees them.
func (snd *Sender) close() {
	snd.mu.Lock()
	snd.closed = true
	slots := snd.peers
	snd.peers = nil
	snd.mu.Unlock()
	for _, slot := range slots {
		slot.mu.Lock()
		if slot.os != nil {
			slot.os.fail(ErrClosed)
		}
		slot.mu.Unlock()
	}
}

// sendReq is one envelope on its way; res receives its outcome once.
type sendReq struct {
	env []byte
	res chan error
}

// outStream is one pipelined outbound stream: a writer loop writes frames
// in submission order, a reader loop matches acks to them first in, first
// out.
type outStream struct {
	n       *Host
	s       network.Stream
	relayed bool          // over a limited (relayed) connection
	reqs    chan *sendReq // unbuffered: a request belongs to the caller or the writer
	slots   chan struct{} // in-flight cap

	mu    sync.Mutex
	queue []*sendReq // written (or being written), not yet acked
	hiQ   int        // most requests ever queued at once

	done chan struct{}
	once sync.Once
	err  error
}

func newOutStream(n *Host, s network.Stream) *outStream {
	return &outStream{
		n:       n,
		s:       s,
		relayed: s.Conn().Stat().Limited || IsRelayed(s.Conn().RemoteMultiaddr()),
		reqs:    make(chan *sendReq),
		slots:   make(chan struct{}, n.cfg.maxInFlight),
		done:    make(chan struct{}),
	}
}

func (o *outStream) failed() bool {
	select {
	case <-o.done:
		return true
	default:
		return false
	}
}

// fail ends the stream: it resets it and fails every unacked request.
func (o *outStream) fail(err error) {
	o.once.Do(func() {
		o.err = err
		close(o.done)
		o.s.Reset()
		o.mu.Lock()
		q := o.queue
		o.queue = nil
		o.mu.Unlock()
		for _, r := range q {
			r.res <- fmt.Errorf("%w: %w", ErrStreamFailed, err)
		}
	})
}

func (o *outStream) send(ctx context.Context, env []byte) error {
	r := &sendReq{env: env, res: make(chan error, 1)}
	select {
	case o.reqs <- r:
	case <-o.done:
		return fmt.Errorf("%w: %w", ErrStreamFailed, o.err)
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.res:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (o *outStream) writeLoop() {
	bw := bufio.NewWriter(o.s)
	for {
		var r *sendReq
		select {
		case r = <-o.reqs:
		case <-o.done:
			return
		case <-o.n.ctx.Done():
			o.fail(ErrClosed)
			return
		}
		// One write deadline covers the batch: frames collect in bw and
		// reach the stream when it fills or at the flush below.
		if err := o.s.SetWriteDeadline(time.Now().Add(o.n.cfg.frameTimeout)); err != nil {
			r.res <- fmt.Errorf("%w: %w", ErrStreamFailed, err)
			o.fail(err)
			return
		}
		for r != nil {
			if err := o.write(bw, r); err != nil {
				o.fail(err)
				return
			}
			select {
			case r = <-o.reqs:
			default:
				r = nil
			}
		}
		if err := o.flush(bw); err != nil {
			o.fail(err)
			return
		}
	}
}

func (o *outStream) flush(bw *bufio.Writer) error {
	if bw.Buffered() == 0 {
		return nil
	}
	if err := o.s.SetWriteDeadline(time.Now().Add(o.n.cfg.frameTimeout)); err != nil {
		return err
	}
	return bw.Flush()
}

// write queues r for its ack, then writes its frame (buffered).
func (o *outStream) write(bw *bufio.Writer, r *sendReq) error {
	select {
	case o.slots <- struct{}{}:
	default:
		// At the in-flight cap: push out what is buffered so acks can
		// come back, then wait for a slot.
		if err := o.flush(bw); err != nil {
			r.res <- fmt.Errorf("%w: %w", ErrStreamFailed, err)
			return err
		}
		select {
		case o.slots <- struct{}{}:
		case <-o.done:
			r.res <- fmt.Errorf("%w: %w", ErrStreamFailed, o.err)
			return o.err
		}
		// The wait may have outlasted the batch's write deadline.
		if err := o.s.SetWriteDeadline(time.Now().Add(o.n.cfg.frameTimeout)); err != nil {
			<-o.slots
			r.res <- fmt.Errorf("%w: %w", ErrStreamFailed, err)
			return err
		}
	}
	o.mu.Lock()
	if o.failed() {
		o.mu.Unlock()
		r.res <- fmt.Errorf("%w: %w", ErrStreamFailed, o.err)
		return o.err
	}
	o.queue = append(o.queue, r)
	o.hiQ = max(o.hiQ, len(o.queue))
	if len(o.queue) == 1 {
		// The reader was idle: from now on an ack is due.
		o.s.SetReadDeadline(time.Now().Add(o.n.cfg.readIdleTimeout))
	}
	o.mu.Unlock()
	return WriteFrame(bw, r.env, MaxFrameSize)
}

func (o *outStream) readLoop() {
	br := bufio.NewReader(o.s)
	for {
		st, err := readAck(br)
		if err != nil {
			o.fail(err)
			return
		}
		o.mu.Lock()
		if len(o.queue) == 0 {
			o.mu.Unlock()
			o.fail(fmt.Errorf("%w: ack with nothing in flight", ErrBadAck))
			return
		}
		r := o.queue[0]
		o.queue[0] = nil
		o.queue = o.queue[1:]
		if len(o.queue) > 0 {
			// The next ack is due; if it is already buffered, the
			// deadline is renewed after it.
			if br.Buffered() < FrameHeaderSize+ackFrameSize {
				o.s.SetReadDeadline(time.Now().Add(o.n.cfg.readIdleTimeout))
			}
		} else {
			o.s.SetReadDeadline(time.Time{})
		}
		o.mu.Unlock()
		<-o.slots
		r.res <- errOfAck(st)
	}
}
