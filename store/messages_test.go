package store

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

func addContacts(t testing.TB, db *DB, n int) {
	t.Helper()
	mustUpdate(t, db, func(tx *Tx) error {
		for i := 1; i <= n; i++ {
			if err := tx.AddContact(contact(fmt.Sprintf("c%03d", i), byte(i))); err != nil {
				return err
			}
		}
		return nil
	})
}

func TestAppendAndGetMessage(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 1)
	in := Message{
		ID: msgID(1), Contact: acct(1), Direction: Incoming, Type: 1,
		Body: []byte("hello"), SentAt: t0, ReceivedAt: t0.Add(time.Second), Via: ViaMailbox,
		State: StateQueued, // ignored for incoming
	}
	var stored Message
	mustUpdate(t, db, func(tx *Tx) error {
		var err error
		stored, err = tx.AppendMessage(in)
		return err
	})
	if stored.Seq != 1 || stored.GlobalSeq != 1 || stored.State != StateReceived {
		t.Errorf("appended %+v", stored)
	}
	mustView(t, db, func(tx *Tx) error {
		got, err := tx.GetMessage(in.ID)
		if err != nil {
			return err
		}
		if !reflect.DeepEqual(got, stored) {
			t.Errorf("GetMessage = %+v, want %+v", got, stored)
		}
		if _, err := tx.GetMessage(msgID(99)); !errors.Is(err, ErrNotFound) {
			t.Errorf("missing message: %v", err)
		}
		return nil
	})
	mustUpdate(t, db, func(tx *Tx) error {
		out, err := tx.AppendMessage(Message{ID: msgID(2), Contact: acct(1), Direction: Outgoing, Body: []byte("hi")})
		if err != nil {
			return err
		}
		if out.State != StateQueued || out.Seq != 2 || out.GlobalSeq != 2 {
			t.Errorf("outgoing %+v", out)
		}
		return nil
	})
}

func TestAppendMessageErrors(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 2)
	mustUpdate(t, db, func(tx *Tx) error {
		_, err := tx.AppendMessage(Message{ID: msgID(1), Contact: acct(1), Direction: Incoming})
		return err
	})
	tests := []struct {
		name string
		m    Message
		want error
	}{
		{"dup incoming", Message{ID: msgID(1), Contact: acct(1), Direction: Incoming}, ErrDuplicate},
		{"dup id outgoing", Message{ID: msgID(1), Contact: acct(1), Direction: Outgoing}, ErrDuplicate},
		{"id used by other contact", Message{ID: msgID(1), Contact: acct(2), Direction: Incoming}, ErrDuplicate},
		{"unknown contact", Message{ID: msgID(5), Contact: acct(50), Direction: Incoming}, ErrUnknownContact},
		{"big body", Message{ID: msgID(6), Contact: acct(1), Direction: Outgoing, Body: make([]byte, MaxBodySize+1)}, ErrTooLarge},
		{"no direction", Message{ID: msgID(7), Contact: acct(1)}, nil},
		{"outgoing received", Message{ID: msgID(8), Contact: acct(1), Direction: Outgoing, State: StateReceived}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := db.Update(func(tx *Tx) error { _, err := tx.AppendMessage(tt.m); return err })
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
	// Nothing but the first message was stored, and the counters did not move.
	mustView(t, db, func(tx *Tx) error {
		all, _ := tx.ListMessages(nil, 0, 0)
		if len(all) != 1 {
			t.Errorf("%d messages stored", len(all))
		}
		if seen, _ := tx.Seen(acct(2), msgID(1)); seen {
			t.Errorf("failed append left a dedup mark")
		}
		return nil
	})
	if err := db.Check(); err != nil {
		t.Error(err)
	}
}

func TestMarkSeen(t *testing.T) {
	db, _ := openTest(t)
	mustUpdate(t, db, func(tx *Tx) error {
		if already, err := tx.MarkSeen(acct(1), msgID(1)); already || err != nil {
			t.Errorf("first: %v %v", already, err)
		}
		if already, _ := tx.MarkSeen(acct(1), msgID(1)); !already {
			t.Errorf("second mark not reported")
		}
		if already, _ := tx.MarkSeen(acct(2), msgID(1)); already {
			t.Errorf("dedup is not per contact")
		}
		return nil
	})
}

func TestListMessagesPaging(t *testing.T) {
	db, _ := openTest(t)
	const contacts, perContact = 3, 25
	addContacts(t, db, contacts)
	// Interleave contacts: global order differs from per-contact order.
	var order [][16]byte
	mustUpdate(t, db, func(tx *Tx) error {
		n := uint64(0)
		for i := 0; i < perContact; i++ {
			for c := contacts; c >= 1; c-- {
				n++
				dir := Incoming
				if n%2 == 0 {
					dir = Outgoing
				}
				if _, err := tx.AppendMessage(Message{ID: msgID(n), Contact: acct(byte(c)), Direction: dir, Body: []byte{byte(n)}}); err != nil {
					return err
				}
				order = append(order, msgID(n))
			}
		}
		return nil
	})
	mustView(t, db, func(tx *Tx) error {
		for c := 1; c <= contacts; c++ {
			a := acct(byte(c))
			var got []Message
			after := uint64(0)
			for {
				page, err := tx.ListMessages(&a, after, 7)
				if err != nil {
					return err
				}
				if len(page) == 0 {
					break
				}
				if len(page) > 7 {
					t.Fatalf("page of %d", len(page))
				}
				got = append(got, page...)
				after = page[len(page)-1].Seq
			}
			if len(got) != perContact {
				t.Fatalf("contact %d: %d messages", c, len(got))
			}
			for i, m := range got {
				if m.Seq != uint64(i+1) || m.Contact != a {
					t.Errorf("contact %d #%d: seq %d", c, i, m.Seq)
				}
			}
		}
		var all []Message
		after := uint64(0)
		for {
			page, err := tx.ListMessages(nil, after, 10)
			if err != nil {
				return err
			}
			if len(page) == 0 {
				break
			}
			all = append(all, page...)
			after = page[len(page)-1].GlobalSeq
		}
		if len(all) != len(order) {
			t.Fatalf("global: %d messages, want %d", len(all), len(order))
		}
		for i, m := range all {
			if m.ID != order[i] || m.GlobalSeq != uint64(i+1) {
				t.Fatalf("global #%d: %x, want %x", i, m.ID, order[i])
			}
		}
		if page, _ := tx.ListMessages(nil, ^uint64(0), 10); len(page) != 0 {
			t.Errorf("after max seq: %d", len(page))
		}
		unknown := acct(200)
		if page, err := tx.ListMessages(&unknown, 0, 10); len(page) != 0 || err != nil {
			t.Errorf("unknown conversation: %d %v", len(page), err)
		}
		if page, _ := tx.ListMessages(nil, 0, 0); len(page) != min(DefaultPageSize, len(order)) {
			t.Errorf("default limit gave %d", len(page))
		}
		return nil
	})
	if err := db.Check(); err != nil {
		t.Error(err)
	}
}

func TestListMessagesCapsLimit(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 1)
	mustUpdate(t, db, func(tx *Tx) error {
		for i := range uint64(MaxPageSize + 5) {
			if _, err := tx.AppendMessage(Message{ID: msgID(i), Contact: acct(1), Direction: Outgoing}); err != nil {
				return err
			}
		}
		return nil
	})
	mustView(t, db, func(tx *Tx) error {
		page, err := tx.ListMessages(nil, 0, 1<<30)
		if err != nil || len(page) != MaxPageSize {
			t.Errorf("got %d, want MaxPageSize", len(page))
		}
		return err
	})
}

func TestMessageStateMonotone(t *testing.T) {
	type step struct {
		to      MessageState
		opts    []StateOption
		want    MessageState
		changed bool
	}
	tests := []struct {
		name  string
		steps []step
		via   Via
		count int
	}{
		{"direct", []step{{StateSent, []StateOption{WithVia(ViaDirect)}, StateSent, true}, {StateDelivered, nil, StateDelivered, true}}, ViaDirect, 0},
		{"mailbox then receipt", []step{
			{StateStored, []StateOption{WithVia(ViaMailbox), WithStoredAt(2)}, StateStored, true},
			{StateStored, []StateOption{WithStoredAt(3)}, StateStored, true},
			{StateStored, []StateOption{WithStoredAt(1)}, StateStored, false}, // count never drops
			{StateDelivered, nil, StateDelivered, true},
		}, ViaMailbox, 3},
		{"late ack after receipt", []step{
			{StateDelivered, nil, StateDelivered, true},
			{StateStored, []StateOption{WithStoredAt(5)}, StateDelivered, false},
			{StateSent, nil, StateDelivered, false},
			{StateQueued, nil, StateDelivered, false},
			{StateFailed, nil, StateDelivered, false},
			{StateDelivered, nil, StateDelivered, false},
		}, ViaUnknown, 0},
		{"sent does not fall back", []step{
			{StateSent, nil, StateSent, true},
			{StateStored, []StateOption{WithStoredAt(2)}, StateSent, false},
			{StateFailed, nil, StateSent, false},
			{StateQueued, nil, StateSent, false},
		}, ViaUnknown, 0},
		{"fail and retry", []step{
			{StateFailed, nil, StateFailed, true},
			{StateQueued, nil, StateQueued, true},
			{StateSent, nil, StateSent, true},
		}, ViaUnknown, 0},
		{"queued again only after failure", []step{{StateQueued, nil, StateQueued, false}}, ViaUnknown, 0},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, _ := openTest(t)
			addContacts(t, db, 1)
			id := msgID(uint64(i))
			mustUpdate(t, db, func(tx *Tx) error {
				_, err := tx.AppendMessage(Message{ID: id, Contact: acct(1), Direction: Outgoing})
				return err
			})
			for j, s := range tt.steps {
				mustUpdate(t, db, func(tx *Tx) error {
					m, changed, err := tx.SetMessageState(id, s.to, s.opts...)
					if err != nil {
						return err
					}
					if m.State != s.want || changed != s.changed {
						t.Errorf("step %d (%v): state %v changed %v, want %v %v", j, s.to, m.State, changed, s.want, s.changed)
					}
					return nil
				})
			}
			mustView(t, db, func(tx *Tx) error {
				m, err := tx.GetMessage(id)
				if err != nil {
					return err
				}
				if last := tt.steps[len(tt.steps)-1].want; m.State != last || m.Via != tt.via || m.StoredAt != tt.count {
					t.Errorf("final %v via %v stored at %d; want %v %v %d", m.State, m.Via, m.StoredAt, last, tt.via, tt.count)
				}
				return nil
			})
		})
	}
}

func TestSetMessageStateErrors(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 1)
	mustUpdate(t, db, func(tx *Tx) error {
		_, err := tx.AppendMessage(Message{ID: msgID(1), Contact: acct(1), Direction: Incoming})
		if err != nil {
			return err
		}
		_, err = tx.AppendMessage(Message{ID: msgID(2), Contact: acct(1), Direction: Outgoing})
		return err
	})
	mustUpdate(t, db, func(tx *Tx) error {
		if _, _, err := tx.SetMessageState(msgID(1), StateDelivered); err == nil {
			t.Error("incoming message state changed")
		}
		if _, _, err := tx.SetMessageState(msgID(9), StateDelivered); !errors.Is(err, ErrNotFound) {
			t.Errorf("unknown message: %v", err)
		}
		if _, _, err := tx.SetMessageState(msgID(2), StateReceived); err == nil {
			t.Error("outgoing message set to received")
		}
		if _, _, err := tx.SetMessageState(msgID(2), StateStored, WithStoredAt(-1)); err == nil {
			t.Error("negative mailbox count accepted")
		}
		return nil
	})
}

// TestConfirmDelivery: a receipt moves the contact's outgoing message to
// delivered and removes its outbox entry; it leaves alone an incoming
// message, another contact's message and a message that is gone, and a
// second receipt changes nothing.
func TestConfirmDelivery(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 2)
	mustUpdate(t, db, func(tx *Tx) error {
		for _, m := range []Message{
			{ID: msgID(1), Contact: acct(1), Direction: Outgoing, State: StateSent},
			{ID: msgID(2), Contact: acct(2), Direction: Outgoing, State: StateSent},
			{ID: msgID(3), Contact: acct(1), Direction: Incoming, State: StateReceived},
		} {
			if _, err := tx.AppendMessage(m); err != nil {
				return err
			}
			if m.Direction == Outgoing {
				if err := tx.PutOutbox(OutboxEntry{MsgID: m.ID, Contact: m.Contact, Kind: OutboxMessage, Envelope: []byte{1}, Created: t0, NextAttempt: t0}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	mustUpdate(t, db, func(tx *Tx) error {
		m, changed, err := tx.ConfirmDelivery(acct(1), msgID(1))
		if err != nil || !changed || m.State != StateDelivered || m.ID != msgID(1) {
			t.Errorf("receipt for the contact's message: %+v, %v, %v", m, changed, err)
		}
		if _, changed, err := tx.ConfirmDelivery(acct(1), msgID(1)); err != nil || changed {
			t.Errorf("second receipt: %v, %v", changed, err)
		}
		for _, id := range []uint64{2, 3, 9} { // other contact's, incoming, unknown
			if _, changed, err := tx.ConfirmDelivery(acct(1), msgID(id)); err != nil || changed {
				t.Errorf("receipt for message %d: %v, %v", id, changed, err)
			}
		}
		return nil
	})
	mustView(t, db, func(tx *Tx) error {
		if _, err := tx.GetOutbox(msgID(1)); !errors.Is(err, ErrNotFound) {
			t.Errorf("delivered message still in the outbox: %v", err)
		}
		if e, err := tx.GetOutbox(msgID(2)); err != nil || e.MsgID != msgID(2) {
			t.Errorf("other contact's outbox entry: %v", err)
		}
		for id, want := range map[uint64]MessageState{2: StateSent, 3: StateReceived} {
			if m, err := tx.GetMessage(msgID(id)); err != nil || m.State != want {
				t.Errorf("message %d: %v, %v", id, m.State, err)
			}
		}
		return nil
	})
	checkDB(t, db)
}

// TestReceiveIsOneTransaction checks the property the node relies on: the
// session update, the message, its dedup mark and the receipt to send
// commit together or not at all.
func TestReceiveIsOneTransaction(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 1)
	a := acct(1)
	mustUpdate(t, db, func(tx *Tx) error { return tx.PutSession(a, []byte("state-0")) })
	receive := func(fail bool) error {
		return db.Update(func(tx *Tx) error {
			if err := tx.PutSession(a, []byte("state-1")); err != nil {
				return err
			}
			if _, err := tx.AppendMessage(Message{ID: msgID(1), Contact: a, Direction: Incoming, Body: []byte("x")}); err != nil {
				return err
			}
			if err := tx.PutOutbox(OutboxEntry{MsgID: msgID(1000), Contact: a, Envelope: []byte("receipt"), Kind: OutboxReceipt, NextAttempt: t0}); err != nil {
				return err
			}
			if fail {
				return errors.New("disk full")
			}
			return nil
		})
	}
	if err := receive(true); err == nil {
		t.Fatal("failing receive succeeded")
	}
	mustView(t, db, func(tx *Tx) error {
		s, _ := tx.GetSession(a)
		seen, _ := tx.Seen(a, msgID(1))
		n, _ := tx.PendingCount()
		_, err := tx.GetMessage(msgID(1))
		if string(s) != "state-0" || seen || n != 0 || !errors.Is(err, ErrNotFound) {
			t.Errorf("partial commit: session %q seen %v outbox %d msg %v", s, seen, n, err)
		}
		return nil
	})
	if err := receive(false); err != nil {
		t.Fatal(err)
	}
	// Redelivery of the same envelope is a duplicate and changes nothing.
	if err := receive(false); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("redelivery: %v", err)
	}
	mustView(t, db, func(tx *Tx) error {
		s, _ := tx.GetSession(a)
		n, _ := tx.PendingCount()
		msgs, _ := tx.ListMessages(&a, 0, 0)
		if string(s) != "state-1" || n != 1 || len(msgs) != 1 {
			t.Errorf("after receive: session %q outbox %d messages %d", s, n, len(msgs))
		}
		return nil
	})
}

func TestBatchConcurrentAppends(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 2)
	const writers, each = 16, 10
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			for i := range each {
				id := msgID(uint64(w*each + i))
				errs <- db.Batch(func(tx *Tx) error {
					_, err := tx.AppendMessage(Message{ID: id, Contact: acct(byte(w%2 + 1)), Direction: Incoming})
					return err
				})
			}
		}()
	}
	for range writers * each {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// A failing call does not sink the others in its batch.
	dupErrs := make(chan error, 2)
	for _, id := range []uint64{0, 1000} {
		go func() {
			dupErrs <- db.Batch(func(tx *Tx) error {
				_, err := tx.AppendMessage(Message{ID: msgID(id), Contact: acct(1), Direction: Incoming})
				return err
			})
		}()
	}
	var dups, oks int
	for range 2 {
		err := <-dupErrs
		switch {
		case errors.Is(err, ErrDuplicate):
			dups++
		case err == nil:
			oks++
		default:
			t.Fatal(err)
		}
	}
	if dups != 1 || oks != 1 {
		t.Errorf("duplicates %d, successes %d; want 1 and 1", dups, oks)
	}
	mustView(t, db, func(tx *Tx) error {
		all, err := tx.ListMessages(nil, 0, MaxPageSize)
		if len(all) != writers*each+1 {
			t.Errorf("%d messages, want %d", len(all), writers*each+1)
		}
		return err
	})
	if err := db.Check(); err != nil {
		t.Error(err)
	}
}

func TestLastSeq(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 2)
	a, b := acct(1), acct(2)
	mustView(t, db, func(tx *Tx) error {
		if n, err := tx.LastSeq(nil); n != 0 || err != nil {
			t.Errorf("empty: %d %v", n, err)
		}
		return nil
	})
	mustUpdate(t, db, func(tx *Tx) error {
		for i := range uint64(5) {
			c := a
			if i == 4 {
				c = b
			}
			if _, err := tx.AppendMessage(Message{ID: msgID(i), Contact: c, Direction: Outgoing}); err != nil {
				return err
			}
		}
		return nil
	})
	mustView(t, db, func(tx *Tx) error {
		la, _ := tx.LastSeq(&a)
		lb, _ := tx.LastSeq(&b)
		lg, _ := tx.LastSeq(nil)
		if la != 4 || lb != 1 || lg != 5 {
			t.Errorf("LastSeq a=%d b=%d global=%d", la, lb, lg)
		}
		// The newest two of a's conversation.
		page, err := tx.ListMessages(&a, la-2, 0)
		if err != nil || len(page) != 2 || page[1].Seq != 4 {
			t.Errorf("newest page %v %v", page, err)
		}
		return nil
	})
}

func TestEnumStrings(t *testing.T) {
	tests := []struct {
		got, want string
	}{
		{Incoming.String(), "in"}, {Outgoing.String(), "out"}, {Direction(9).String(), "direction(9)"},
		{StateQueued.String(), "queued"}, {StateSent.String(), "sent"}, {StateStored.String(), "stored"},
		{StateDelivered.String(), "delivered"}, {StateFailed.String(), "failed"}, {StateReceived.String(), "received"},
		{MessageState(0).String(), "state(0)"},
		{ViaUnknown.String(), "unknown"}, {ViaDirect.String(), "direct"}, {ViaMailbox.String(), "mailbox"}, {Via(7).String(), "via(7)"},
		{OutboxMessage.String(), "message"}, {OutboxReceipt.String(), "receipt"}, {OutboxKind(0).String(), "outbox-kind(0)"},
		{PrekeySignedDH.String(), "signed-dh"}, {PrekeyOneTimeDH.String(), "one-time-dh"}, {PrekeyLastResort.String(), "last-resort-kem"},
		{PrekeyOneTimeKEM.String(), "one-time-kem"}, {PrekeyKind(0).String(), "prekey-kind(0)"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestMessageState(t *testing.T) {
	db, _ := openTest(t)
	addContacts(t, db, 1)
	mustUpdate(t, db, func(tx *Tx) error {
		if _, err := tx.AppendMessage(Message{ID: msgID(1), Contact: acct(1), Direction: Outgoing, Body: make([]byte, 300)}); err != nil {
			return err
		}
		if _, err := tx.AppendMessage(Message{ID: msgID(2), Contact: acct(1), Direction: Incoming, Body: []byte("x")}); err != nil {
			return err
		}
		_, _, err := tx.SetMessageState(msgID(1), StateStored, WithStoredAt(2))
		return err
	})
	mustView(t, db, func(tx *Tx) error {
		for id, want := range map[[16]byte]MessageState{msgID(1): StateStored, msgID(2): StateReceived} {
			st, err := tx.MessageState(id)
			m, _ := tx.GetMessage(id)
			if err != nil || st != want || st != m.State {
				t.Errorf("MessageState(%x) = %v, %v; want %v", id, st, err, want)
			}
		}
		if _, err := tx.MessageState(msgID(9)); !errors.Is(err, ErrNotFound) {
			t.Errorf("missing message: %v", err)
		}
		return nil
	})
}

// A message's session-reset mark reads back; a record without the flags
// byte (written before it existed) reads as unmarked; an unknown flag is
// reported corrupt.
func TestMessageSessionResetFlag(t *testing.T) {
	m := Message{ID: msgID(1), Contact: acct(2), Direction: Incoming, Type: 1, Body: []byte("hi"), State: StateReceived, SessionReset: true}
	b, err := m.marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := unmarshalMessage(b)
	if err != nil || !got.SessionReset {
		t.Fatalf("marked message read back as %+v, %v", got, err)
	}
	old, err := unmarshalMessage(b[:len(b)-1])
	if err != nil || old.SessionReset || string(old.Body) != "hi" {
		t.Fatalf("a record without flags: %+v, %v", old, err)
	}
	bad := append(b[:len(b)-1:len(b)-1], 0x80)
	if _, err := unmarshalMessage(bad); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("unknown flags: %v, want ErrCorrupt", err)
	}
}
