package mailbox

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/sotto-im/sotto/p2p"
	"github.com/sotto-im/sotto/protocol"
)

// Version 2 client limits (protocol/SPEC.md, "Bounds on a hostile
// mailbox").
const (
	// MaxSyncBytes bounds what one sync round reads from one mailbox.
	MaxSyncBytes = 4 << 20
	// minPageCharge is what a page costs the budget at least, so that a
	// mailbox answering with tiny pages and "more" gets at most
	// MaxSyncBytes / minPageCharge round trips a round.
	minPageCharge = 16 << 10
)

// ErrSyncBudget says a sync round stopped at MaxSyncBytes with more left at
// the mailbox; the rest waits for the next round.
var ErrSyncBudget = errors.New("mailbox: sync round stopped at its byte budget")

// Client2 speaks Protocol2 from one libp2p host. A user gives it a host of
// a fresh identity per sync round or deposit batch, so that mailboxes
// cannot tie its requests to the device's published peer ID or to each
// other across rounds.
type Client2 struct {
	h         host.Host
	ctx       context.Context
	opTimeout time.Duration
}

// NewClient2 returns a client that sends from h until ctx ends.
func NewClient2(ctx context.Context, h host.Host) *Client2 {
	return &Client2{h: h, ctx: ctx, opTimeout: DefaultOpTimeout}
}

func (c *Client2) roundTrip(ctx context.Context, mbx peer.AddrInfo, req []byte) (Status, []byte, error) {
	if len(mbx.Addrs) > 0 {
		c.h.Peerstore().AddAddrs(mbx.ID, mbx.Addrs, time.Hour)
	}
	return exchange(ctx, c.ctx, c.h, mbx.ID, Protocol2, req, MaxRequestSize2, c.opTimeout)
}

// Register registers regs (at most MaxRegistrations) at mbx. It returns
// how many the mailbox accepted and the stamp difficulty it requires of
// intro deposits.
func (c *Client2) Register(ctx context.Context, mbx peer.AddrInfo, regs []Registration) (accepted, stampBits int, err error) {
	if len(regs) == 0 || len(regs) > MaxRegistrations {
		return 0, 0, fmt.Errorf("mailbox: register of %d tags (1..%d)", len(regs), MaxRegistrations)
	}
	_, body, err := c.roundTrip(ctx, mbx, appendRegisterRequest(nil, regs))
	if err != nil {
		return 0, 0, err
	}
	if len(body) != 3 {
		return 0, 0, fmt.Errorf("%w: register response of %d bytes", ErrBadMessage, len(body)+respHeader)
	}
	accepted, stampBits = int(binary.BigEndian.Uint16(body)), int(body[2])
	if accepted > len(regs) || stampBits > protocol.MaxStampBits {
		return 0, 0, fmt.Errorf("%w: register response: %d of %d accepted, %d stamp bits", ErrBadMessage, accepted, len(regs), stampBits)
	}
	return accepted, stampBits, nil
}

// Push hands a deposit (protocol.SealPairDeposit or
// protocol.MintIntroDeposit) to mbx: nil if the mailbox stored it or held
// it already, else a *Error (Rejected with its reason, Full, Throttled) or
// a transport error.
func (c *Client2) Push(ctx context.Context, mbx peer.AddrInfo, deposit []byte) error {
	if len(deposit) == 0 || len(deposit) > protocol.MaxDepositSize {
		return fmt.Errorf("%w: deposit of %d bytes", p2p.ErrFrameSize, len(deposit))
	}
	_, body, err := c.roundTrip(ctx, mbx, appendPushRequest(nil, deposit))
	if err == nil && len(body) != 0 {
		err = fmt.Errorf("%w: push response of %d bytes", ErrBadMessage, len(body)+respHeader)
	}
	return err
}

// Query asks mbx for the envelopes under tags (those registered there)
// after cursor, at most limit.
func (c *Client2) Query(ctx context.Context, mbx peer.AddrInfo, tags [][32]byte, cursor []byte, limit int) (QueryResult, error) {
	return query(tags, cursor, limit, opQuery2, c.sender(ctx, mbx))
}

// Sync reads the envelopes under tags at mbx from cursor, page after page,
// until the mailbox has no more or another page (at most MaxResponseSize)
// could take the bytes read past maxBytes (MaxSyncBytes if <= 0 or
// larger; one page is always read); then it returns what it read, the
// cursor to resume from, and ErrSyncBudget if the mailbox still said
// "more". Each page counts at least minPageCharge. A hostile mailbox
// therefore costs a round at most max(maxBytes, MaxResponseSize) of
// envelopes and maxBytes / minPageCharge round trips.
func (c *Client2) Sync(ctx context.Context, mbx peer.AddrInfo, tags [][32]byte, cursor []byte, maxBytes int) ([][]byte, []byte, error) {
	out, cursor, _, err := c.sync(ctx, mbx, tags, cursor, maxBytes)
	return out, cursor, err
}

// sync is Sync that also reports what it charged against maxBytes: the
// bytes of each page, and at least minPageCharge per page.
func (c *Client2) sync(ctx context.Context, mbx peer.AddrInfo, tags [][32]byte, cursor []byte, maxBytes int) ([][]byte, []byte, int, error) {
	if maxBytes <= 0 || maxBytes > MaxSyncBytes {
		maxBytes = MaxSyncBytes
	}
	var out [][]byte
	read := 0
	for {
		res, err := c.Query(ctx, mbx, tags, cursor, 0)
		if err != nil {
			return out, cursor, read, err
		}
		page := 0
		for _, env := range res.Envelopes {
			page += len(env)
		}
		read += max(page, minPageCharge)
		out = append(out, res.Envelopes...)
		cursor = res.Cursor
		switch {
		case !res.More || len(res.Envelopes) == 0:
			return out, cursor, read, nil
		case read+MaxResponseSize > maxBytes:
			// The next page could pass the budget.
			return out, cursor, read, ErrSyncBudget
		}
	}
}

// Delete reveals delete tokens for envelopes under tag at mbx and returns
// how many envelopes it deleted.
func (c *Client2) Delete(ctx context.Context, mbx peer.AddrInfo, tag [32]byte, tokens [][32]byte) (int, error) {
	return deleteTokens(tag, tokens, opDelete2, c.sender(ctx, mbx))
}

// sender sends one request to mbx and returns the body of an OK response.
func (c *Client2) sender(ctx context.Context, mbx peer.AddrInfo) func(req []byte) ([]byte, error) {
	return func(req []byte) ([]byte, error) {
		_, body, err := c.roundTrip(ctx, mbx, req)
		return body, err
	}
}

// FilterStream is an open FILTER: the mailbox pushes every envelope it
// stores under the filter's tags until the stream ends.
type FilterStream struct {
	st   network.Stream
	done chan struct{}
	err  error
	mu   sync.Mutex // serialises writes (SetTags)
}

// Filter opens a filter on tags at mbx and calls fn, from one goroutine,
// for every envelope pushed, until ctx ends, the client's context ends or
// the mailbox closes the stream (it does when the client falls
// FilterBacklog pushes behind: query then).
func (c *Client2) Filter(ctx context.Context, mbx peer.AddrInfo, tags [][32]byte, fn func(env []byte)) (*FilterStream, error) {
	if len(tags) == 0 || len(tags) > MaxFilterTags {
		return nil, fmt.Errorf("mailbox: filter of %d tags (1..%d)", len(tags), MaxFilterTags)
	}
	if len(mbx.Addrs) > 0 {
		c.h.Peerstore().AddAddrs(mbx.ID, mbx.Addrs, time.Hour)
	}
	octx, cancel := context.WithTimeout(ctx, c.opTimeout)
	defer cancel()
	st, err := c.h.NewStream(octx, mbx.ID, Protocol2)
	if err != nil {
		return nil, fmt.Errorf("mailbox: open filter stream to %s: %w", mbx.ID, err)
	}
	st.SetDeadline(time.Now().Add(c.opTimeout))
	if err := p2p.WriteFrame(st, appendFilterRequest(nil, tags), MaxRequestSize2); err != nil {
		st.Reset()
		return nil, err
	}
	resp, err := p2p.ReadFrame(st, MaxResponseSize)
	if err == nil {
		_, _, err = parseResponse(resp)
	}
	if err != nil {
		st.Reset()
		return nil, err
	}
	st.SetDeadline(time.Time{})
	f := &FilterStream{st: st, done: make(chan struct{})}
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	stopOwner := context.AfterFunc(c.ctx, func() { st.Reset() })
	go func() {
		defer close(f.done)
		defer stop()
		defer stopOwner()
		for {
			frame, err := p2p.ReadFrame(st, MaxPushFrame)
			if err != nil {
				f.err = err
				st.Reset()
				return
			}
			if len(frame) > 0 && frame[0] != opPushed {
				// The answer to a SetTags. Throttled keeps the tags
				// the filter had; anything else wrong ends it.
				var me *Error
				if _, _, err := parseResponse(frame); err != nil && !(errors.As(err, &me) && me.Status == StatusThrottled) {
					f.err = err
					st.Reset()
					return
				}
				continue
			}
			env, err := parsePushed(frame)
			if err != nil {
				f.err = err
				st.Reset()
				return
			}
			fn(env)
		}
	}()
	return f, nil
}

// SetTags replaces the filter's tags.
func (f *FilterStream) SetTags(tags [][32]byte) error {
	if len(tags) == 0 || len(tags) > MaxFilterTags {
		return fmt.Errorf("mailbox: filter of %d tags (1..%d)", len(tags), MaxFilterTags)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return p2p.WriteFrame(f.st, appendFilterRequest(nil, tags), MaxRequestSize2)
}

// Done is closed when the filter has ended; Err then says why.
func (f *FilterStream) Done() <-chan struct{} { return f.done }

// Err is why the filter ended (valid after Done is closed).
func (f *FilterStream) Err() error { return f.err }

// Close ends the filter.
func (f *FilterStream) Close() {
	f.st.Reset()
	<-f.done
}
