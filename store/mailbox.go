package store

import (
	"bytes"
	"container/heap"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sotto-im/sotto/protocol"
)

// The mailbox holds sealed envelopes for other people while they are
// offline: a node that serves as a gossip mailbox stores what it receives
// (over gossip or directly) here, serves it to whoever asks for its tags,
// and deletes an envelope when someone reveals its delete token or when it
// expires. The store sees envelopes only as the public outer fields the
// protocol defines (tag, expiry, delete hash) plus opaque ciphertext.
//
// Buckets and key layouts (integers big endian):
//
//	mbx_env      seq(8) -> record: v1 || uvarint len || envelope
//	mbx_hash     SHA-256(envelope)(32) -> seq(8)        content dedup
//	mbx_tag      tag(32) || seq(8) -> 0x01              query by tag, arrival order
//	mbx_exp      expiry seconds(8) || seq(8) -> 0x01     TTL sweep
//	mbx_del      tag(32) || delete hash(32) || seq(8) -> 0x01
//	mbx_tagstat  tag(32) -> count(8) || bytes(8)        per-tag quota
//	mbx_meta     "totals" -> count(8) || bytes(8)       total cap
//	mbx_v1       seq(8) -> 0x01                        version 1 envelopes
//	mbx_meta     "v1totals" -> count(8) || bytes(8)     their part of the totals
//
// seq is the arrival sequence (mbx_env's bucket sequence), so mbx_env in
// key order is oldest first, which is the eviction order under the total
// cap. Query cursors are arrival sequences too, so they stay valid across
// restarts and new deposits always sort after an old cursor.
//
// Version 2 registrations, and the deposit path that checks them and never
// evicts, are in mailbox_reg.go; their envelopes live in these buckets.
// mbx_v1 names the envelopes MailboxPut stored (version 1, no credential),
// oldest first: a version 2 deposit evicts them, and only them, to make
// room under the total cap (protocol/SPEC.md, "Registration").

var (
	bucketMbxEnv     = []byte("mbx_env")
	bucketMbxHash    = []byte("mbx_hash")
	bucketMbxTag     = []byte("mbx_tag")
	bucketMbxExp     = []byte("mbx_exp")
	bucketMbxDel     = []byte("mbx_del")
	bucketMbxTagStat = []byte("mbx_tagstat")
	bucketMbxMeta    = []byte("mbx_meta")
	bucketMbxV1      = []byte("mbx_v1")

	keyMbxTotals   = []byte("totals")
	keyMbxV1Totals = []byte("v1totals")
)

// createMailboxBuckets is the schema migration that adds the mailbox.
func createMailboxBuckets(tx *bolt.Tx) error {
	for _, name := range [][]byte{
		bucketMbxEnv, bucketMbxHash, bucketMbxTag, bucketMbxExp,
		bucketMbxDel, bucketMbxTagStat, bucketMbxMeta,
	} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	return nil
}

// indexMailboxV1 is the schema migration that adds the index of version 1
// envelopes. Before it, the mailbox told them apart by their tags: an
// envelope under a registered tag was never evicted. It indexes every
// envelope whose tag holds no registration, so that what was protected
// stays protected.
func indexMailboxV1(tx *bolt.Tx) error {
	v1, err := tx.CreateBucketIfNotExists(bucketMbxV1)
	if err != nil {
		return err
	}
	env, reg, meta := tx.Bucket(bucketMbxEnv), tx.Bucket(bucketMbxReg), tx.Bucket(bucketMbxMeta)
	if env == nil || reg == nil || meta == nil {
		return fmt.Errorf("%w: mailbox buckets are missing", ErrCorrupt)
	}
	var n, b int64
	err = env.ForEach(func(k, v []byte) error {
		raw, err := unmarshalMailboxRecord(v)
		if err != nil {
			return err
		}
		tag := envelopeFields(raw).tag
		if reg.Get(tag[:]) != nil {
			return nil
		}
		n, b = n+1, b+int64(len(raw))
		return v1.Put(bytes.Clone(k), present)
	})
	if err != nil {
		return err
	}
	return meta.Put(keyMbxV1Totals, counts(n, b))
}

// Mailbox limits. A zero field of MailboxLimits means the default.
const (
	// DefaultMailboxTagEnvelopes and DefaultMailboxTagBytes are the
	// per-tag quota: what one recipient's tag for one epoch may hold.
	DefaultMailboxTagEnvelopes = 1000
	DefaultMailboxTagBytes     = 8 << 20

	// DefaultMailboxEnvelopes and DefaultMailboxBytes are the total cap.
	// Past it, the oldest envelopes are evicted to make room.
	DefaultMailboxEnvelopes = 2_000_000
	DefaultMailboxBytes     = 2 << 30

	// DefaultMailboxPage and MaxMailboxPage bound the envelopes one query
	// returns; MaxMailboxPageBytes bounds their total size.
	DefaultMailboxPage  = 100
	MaxMailboxPage      = 1000
	MaxMailboxPageBytes = 4 << 20

	// MaxMailboxQueryTags bounds the tags of one query.
	MaxMailboxQueryTags = 1024

	// MaxMailboxSweep bounds the envelopes and registrations one
	// MailboxSweep call removes, so that a sweep after a long downtime
	// does not build one huge transaction. Call it again while it returns
	// this many.
	MaxMailboxSweep = 10_000

	// MailboxCursorSize is the length of a query cursor.
	MailboxCursorSize = 1 + 8

	// mailboxCursorV1 is the first byte of a cursor.
	mailboxCursorV1 = 1
)

// Offsets of the outer fields in an envelope (protocol/SPEC.md, Envelope).
const (
	envOffTag    = 1
	envOffExpiry = envOffTag + protocol.TagSize
	envOffDelete = envOffExpiry + 8
)

// Mailbox errors.
var (
	// ErrMailboxTagFull means the envelope's tag already holds its quota
	// of envelopes or bytes. Other tags are unaffected.
	ErrMailboxTagFull = errors.New("store: mailbox quota for this tag is exhausted")

	// ErrMailboxFull means the envelope cannot fit even after evicting
	// every older envelope (it is larger than the total cap), or, from
	// MailboxPutRegistered, which evicts only version 1 envelopes, that
	// the envelopes of version 2 deposits leave no room: the sender should
	// try another mailbox.
	ErrMailboxFull = errors.New("store: mailbox is full")

	// ErrMailboxInvalid means the envelope failed protocol validation
	// (malformed, expired, or expiring too far in the future). The
	// protocol's error is wrapped too.
	ErrMailboxInvalid = errors.New("store: invalid envelope for the mailbox")

	// ErrMailboxNeedsCredential means a version 1 deposit names a tag
	// registered for version 2 deposits, which need a credential.
	ErrMailboxNeedsCredential = errors.New("store: the tag is registered for version 2 deposits; deposit with a credential")

	// ErrBadCursor means a query cursor is not one MailboxQuery returned.
	ErrBadCursor = errors.New("store: malformed mailbox cursor")
)

// MailboxLimits are a mailbox's quotas. Zero fields take the defaults.
type MailboxLimits struct {
	TagEnvelopes   int64 // envelopes per tag (version 1, MailboxPut)
	TagBytes       int64 // bytes per tag (version 1, MailboxPut)
	TotalEnvelopes int64 // envelopes in the whole mailbox
	TotalBytes     int64 // bytes in the whole mailbox

	// Version 2 quotas (MailboxPutRegistered), per registered tag by the
	// kind of its registration.
	PairEnvelopes  int64 // envelopes per pairwise registration
	PairBytes      int64 // bytes per pairwise registration
	IntroEnvelopes int64 // envelopes per intro registration
	IntroBytes     int64 // bytes per intro registration
}

// WithDefaults returns l with zero fields set to the defaults.
func (l MailboxLimits) WithDefaults() MailboxLimits {
	def := func(v *int64, d int64) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.TagEnvelopes, DefaultMailboxTagEnvelopes)
	def(&l.TagBytes, DefaultMailboxTagBytes)
	def(&l.TotalEnvelopes, DefaultMailboxEnvelopes)
	def(&l.TotalBytes, DefaultMailboxBytes)
	def(&l.PairEnvelopes, DefaultMailboxPairEnvelopes)
	def(&l.PairBytes, DefaultMailboxPairBytes)
	def(&l.IntroEnvelopes, DefaultMailboxIntroEnvelopes)
	def(&l.IntroBytes, DefaultMailboxIntroBytes)
	return l
}

// MailboxEntry is one stored envelope.
type MailboxEntry struct {
	Seq      uint64   // arrival sequence
	Tag      [32]byte // the envelope's tag
	Expiry   time.Time
	Envelope []byte // the envelope as deposited
}

// MailboxPage is one page of a query.
type MailboxPage struct {
	Entries []MailboxEntry
	// Cursor resumes the query after the last entry (or where the query
	// started if the page is empty). It is never nil.
	Cursor []byte
	// More reports whether the page was cut short by its limits, so that
	// another query with Cursor may return more.
	More bool
}

// MailboxPut stores an envelope in the mailbox. It parses and validates env
// at now (failing with ErrMailboxInvalid); it reports stored == false, and
// changes nothing, if the same envelope bytes are already stored. It fails
// with ErrMailboxTagFull if the envelope's tag is over its quota, with
// ErrMailboxNeedsCredential if the tag holds a version 2 registration, and
// evicts the oldest envelopes of the mailbox while the total cap would be
// exceeded (ErrMailboxFull if even an empty mailbox could not hold it, or
// if the oldest envelope was stored under a registered tag by
// MailboxPutRegistered: those are never evicted).
func (tx *Tx) MailboxPut(env []byte, now time.Time, lim MailboxLimits) (stored bool, err error) {
	lim = lim.WithDefaults()
	e, err := protocol.ParseEnvelope(env)
	if err == nil {
		err = e.Validate(now)
	}
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrMailboxInvalid, err)
	}
	m, err := tx.mailboxBuckets(true)
	if err != nil {
		return false, err
	}
	// A registered tag takes only version 2 deposits, with a credential.
	// (A store still at the schema before registrations has none.)
	if b := tx.tx.Bucket(bucketMbxReg); b != nil {
		if _, held, err := (&registrations{reg: tx.wrap(bucketMbxReg, b)}).get(e.Tag); err != nil {
			return false, err
		} else if held {
			return false, ErrMailboxNeedsCredential
		}
	}
	hash := sha256.Sum256(env)
	if m.hash.Get(hash[:]) != nil {
		return false, nil
	}
	size := int64(len(env))
	if size > lim.TotalBytes || lim.TotalEnvelopes < 1 {
		return false, ErrMailboxFull
	}
	tc, tb, err := readCounts(m.tagstat.Get(e.Tag[:]), "mailbox tag stats")
	if err != nil {
		return false, err
	}
	if tc+1 > lim.TagEnvelopes || tb+size > lim.TagBytes {
		return false, ErrMailboxTagFull
	}
	// Make room under the total cap, oldest first.
	for {
		n, b, err := readCounts(m.meta.Get(keyMbxTotals), "mailbox totals")
		if err != nil {
			return false, err
		}
		if n+1 <= lim.TotalEnvelopes && b+size <= lim.TotalBytes {
			break
		}
		k, v := m.env.Cursor().First()
		if k == nil {
			return false, fmt.Errorf("%w: totals say %d envelopes but none are stored", ErrCorrupt, n)
		}
		// An envelope a version 2 deposit put under a registered tag was
		// acknowledged with the promise that it stays: refuse rather
		// than evict it.
		old, err := unmarshalMailboxRecord(v)
		if err != nil {
			return false, err
		}
		if r, err := tx.regBuckets(false); err != nil {
			return false, err
		} else if _, held, err := r.get(envelopeFields(old).tag); err != nil {
			return false, err
		} else if held {
			return false, ErrMailboxFull
		}
		if err := m.remove(binary.BigEndian.Uint64(k)); err != nil {
			return false, err
		}
	}
	// Eviction may have emptied the tag's own count; read it again.
	tc, tb, err = readCounts(m.tagstat.Get(e.Tag[:]), "mailbox tag stats")
	if err != nil {
		return false, err
	}
	if err := m.insert(env, e, hash, tc, tb, true); err != nil {
		return false, err
	}
	return true, nil
}

// insert stores env, whose parsed form is e and whose SHA-256 is hash,
// under the next arrival sequence with its index entries, given that its
// tag holds tc envelopes of tb bytes, and updates the counts; v1 marks it
// a version 1 envelope, which a version 2 deposit may evict. The caller
// has checked the quotas.
func (m *mailbox) insert(env []byte, e *protocol.Envelope, hash [32]byte, tc, tb int64, v1 bool) error {
	seq, err := m.env.NextSequence()
	if err != nil {
		return err
	}
	size := int64(len(env))
	sk := be64(seq)
	enc := newEncoder(len(env) + 4)
	enc.bytes(env)
	for _, put := range []struct {
		b    *recordBucket
		k, v []byte
	}{
		{m.env, sk, enc.b},
		{m.hash, hash[:], sk},
		{m.tag, concat(e.Tag[:], sk), present},
		{m.exp, concat(be64(uint64(e.Expiry.Unix())), sk), present},
		{m.del, concat(e.Tag[:], e.DeleteHash[:], sk), present},
		{m.tagstat, e.Tag[:], counts(tc+1, tb+size)},
	} {
		if err := put.b.Put(put.k, put.v); err != nil {
			return err
		}
	}
	if v1 && m.v1 != nil {
		if err := m.v1.Put(sk, present); err != nil {
			return err
		}
		if err := m.addCounts(keyMbxV1Totals, 1, size); err != nil {
			return err
		}
	}
	return m.addTotals(1, size)
}

// MailboxQuery returns, in arrival order, the envelopes stored under any of
// tags that arrived after cursor (nil or empty: from the start) and do not
// expire at or before now. The page holds at most limit envelopes
// (DefaultMailboxPage if limit <= 0, at most MaxMailboxPage) and at most
// maxBytes of envelopes (MaxMailboxPageBytes if maxBytes <= 0 or larger),
// but always at least one envelope if one is due.
func (tx *Tx) MailboxQuery(tags [][32]byte, cursor []byte, limit, maxBytes int, now time.Time) (MailboxPage, error) {
	if len(tags) > MaxMailboxQueryTags {
		return MailboxPage{}, fmt.Errorf("store: mailbox query of %d tags, the limit is %d", len(tags), MaxMailboxQueryTags)
	}
	if limit <= 0 {
		limit = DefaultMailboxPage
	}
	limit = min(limit, MaxMailboxPage)
	if maxBytes <= 0 || maxBytes > MaxMailboxPageBytes {
		maxBytes = MaxMailboxPageBytes
	}
	after, err := ParseMailboxCursor(cursor)
	if err != nil {
		return MailboxPage{}, err
	}
	m, err := tx.mailboxBuckets(false)
	if err != nil {
		return MailboxPage{}, err
	}
	page := MailboxPage{Cursor: MailboxCursor(after)}

	// Merge the tags' index ranges by sequence number.
	h := make(tagHeap, 0, len(tags))
	seen := make(map[[32]byte]bool, len(tags))
	for _, tag := range tags {
		if seen[tag] {
			continue
		}
		seen[tag] = true
		tc := &tagCursor{c: m.tag.Cursor(), tag: tag}
		if tc.seek(after) {
			h = append(h, tc)
		}
	}
	heap.Init(&h)
	nowSec := now.Unix()
	size := 0
	for h.Len() > 0 {
		tc := h[0]
		seq := tc.seq
		v := m.env.Get(be64(seq))
		if v == nil {
			return MailboxPage{}, fmt.Errorf("%w: mailbox index names missing envelope %d", ErrCorrupt, seq)
		}
		env, err := unmarshalMailboxRecord(v)
		if err != nil {
			return MailboxPage{}, err
		}
		hdr := envelopeFields(env)
		if hdr.expiry > nowSec {
			if len(page.Entries) >= limit || (len(page.Entries) > 0 && size+len(env) > maxBytes) {
				page.More = true
				break
			}
			size += len(env)
			page.Entries = append(page.Entries, MailboxEntry{
				Seq:      seq,
				Tag:      hdr.tag,
				Expiry:   time.Unix(hdr.expiry, 0).UTC(),
				Envelope: env,
			})
		}
		page.Cursor = MailboxCursor(seq)
		if tc.next() {
			heap.Fix(&h, 0)
		} else {
			heap.Pop(&h)
		}
	}
	return page, nil
}

// MailboxDelete deletes the envelopes under tag whose delete hash is the
// hash of token, comparing in constant time with the protocol's check. It
// returns how many it deleted, and an error wrapping ErrNotFound if none (a
// wrong token and an envelope already gone look the same).
func (tx *Tx) MailboxDelete(tag [32]byte, token [32]byte) (int, error) {
	m, err := tx.mailboxBuckets(true)
	if err != nil {
		return 0, err
	}
	want := protocol.HashDeleteToken(token)
	prefix := concat(tag[:], want[:])
	var seqs []uint64
	c := m.del.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if len(k) != len(prefix)+8 {
			return 0, fmt.Errorf("%w: mailbox delete index key of %d bytes", ErrCorrupt, len(k))
		}
		seqs = append(seqs, binary.BigEndian.Uint64(k[len(prefix):]))
	}
	n := 0
	for _, seq := range seqs {
		v := m.env.Get(be64(seq))
		if v == nil {
			return n, fmt.Errorf("%w: mailbox delete index names missing envelope %d", ErrCorrupt, seq)
		}
		env, err := unmarshalMailboxRecord(v)
		if err != nil {
			return n, err
		}
		hdr := envelopeFields(env)
		e := protocol.Envelope{DeleteHash: hdr.deleteHash}
		if hdr.tag != tag || !e.CheckDeleteToken(token) {
			continue
		}
		if err := m.remove(seq); err != nil {
			return n, err
		}
		n++
	}
	if n == 0 {
		return 0, fmt.Errorf("%w: no envelope under this tag has that delete token", ErrNotFound)
	}
	return n, nil
}

// MailboxSweep deletes envelopes that expire at or before now, then
// version 2 registrations that expire at or before now (see
// MailboxRegister), at most MaxMailboxSweep of them together, and returns
// how many it deleted. The envelopes held under a registration that
// expires stay until their own expiry or a delete token.
func (tx *Tx) MailboxSweep(now time.Time) (int, error) {
	m, err := tx.mailboxBuckets(true)
	if err != nil {
		return 0, err
	}
	limit := be64(uint64(max(now.Unix(), 0)))
	var seqs []uint64
	c := m.exp.Cursor()
	for k, _ := c.First(); k != nil && len(seqs) < MaxMailboxSweep; k, _ = c.Next() {
		if len(k) != 16 {
			return 0, fmt.Errorf("%w: mailbox expiry key of %d bytes", ErrCorrupt, len(k))
		}
		if bytes.Compare(k[:8], limit) > 0 {
			break
		}
		seqs = append(seqs, binary.BigEndian.Uint64(k[8:]))
	}
	for _, seq := range seqs {
		if err := m.remove(seq); err != nil {
			return 0, err
		}
	}
	regs, err := tx.sweepRegistrations(now, MaxMailboxSweep-len(seqs))
	if err != nil {
		return 0, err
	}
	return len(seqs) + regs, nil
}

// MailboxStats returns how many envelopes the mailbox holds and their
// total size.
func (tx *Tx) MailboxStats() (envelopes, bytes int64, err error) {
	m, err := tx.mailboxBuckets(false)
	if err != nil {
		return 0, 0, err
	}
	return readCounts(m.meta.Get(keyMbxTotals), "mailbox totals")
}

// MailboxTagStats returns how many envelopes tag holds and their total size.
func (tx *Tx) MailboxTagStats(tag [32]byte) (envelopes, bytes int64, err error) {
	m, err := tx.mailboxBuckets(false)
	if err != nil {
		return 0, 0, err
	}
	return readCounts(m.tagstat.Get(tag[:]), "mailbox tag stats")
}

// MailboxCursor encodes seq as a query cursor.
func MailboxCursor(seq uint64) []byte {
	return append([]byte{mailboxCursorV1}, be64(seq)...)
}

// ParseMailboxCursor decodes a query cursor; nil or empty is the start.
func ParseMailboxCursor(c []byte) (uint64, error) {
	if len(c) == 0 {
		return 0, nil
	}
	if len(c) != MailboxCursorSize || c[0] != mailboxCursorV1 {
		return 0, ErrBadCursor
	}
	return binary.BigEndian.Uint64(c[1:]), nil
}

// mailbox is the set of mailbox buckets of one transaction. v1 is nil in
// a store at a schema before the index of version 1 envelopes (tests
// only: Open migrates).
type mailbox struct {
	env, hash, tag, exp, del, tagstat, meta, v1 *recordBucket
}

func (tx *Tx) mailboxBuckets(write bool) (*mailbox, error) {
	get := tx.bucket
	if write {
		get = tx.wbucket
	}
	var m mailbox
	for _, b := range []struct {
		dst  **recordBucket
		name []byte
	}{
		{&m.env, bucketMbxEnv}, {&m.hash, bucketMbxHash}, {&m.tag, bucketMbxTag},
		{&m.exp, bucketMbxExp}, {&m.del, bucketMbxDel}, {&m.tagstat, bucketMbxTagStat},
		{&m.meta, bucketMbxMeta},
	} {
		bk, err := get(b.name)
		if err != nil {
			return nil, err
		}
		*b.dst = bk
	}
	if b := tx.tx.Bucket(bucketMbxV1); b != nil { // nil before the schema has it
		m.v1 = tx.wrap(bucketMbxV1, b)
	}
	return &m, nil
}

// remove deletes envelope seq with its index entries and updates the counts.
func (m *mailbox) remove(seq uint64) error {
	sk := be64(seq)
	v := m.env.Get(sk)
	if v == nil {
		return fmt.Errorf("%w: mailbox envelope %d is missing", ErrCorrupt, seq)
	}
	env, err := unmarshalMailboxRecord(v)
	if err != nil {
		return err
	}
	hdr := envelopeFields(env)
	hash := sha256.Sum256(env)
	size := int64(len(env))
	for _, d := range []struct {
		b *recordBucket
		k []byte
	}{
		{m.env, sk},
		{m.hash, hash[:]},
		{m.tag, concat(hdr.tag[:], sk)},
		{m.exp, concat(be64(uint64(hdr.expiry)), sk)},
		{m.del, concat(hdr.tag[:], hdr.deleteHash[:], sk)},
	} {
		if err := d.b.Delete(d.k); err != nil {
			return err
		}
	}
	tc, tb, err := readCounts(m.tagstat.Get(hdr.tag[:]), "mailbox tag stats")
	if err != nil {
		return err
	}
	if tc <= 1 {
		err = m.tagstat.Delete(hdr.tag[:])
	} else {
		err = m.tagstat.Put(hdr.tag[:], counts(tc-1, max(tb-size, 0)))
	}
	if err != nil {
		return err
	}
	if m.v1 != nil && m.v1.Get(sk) != nil {
		if err := m.v1.Delete(sk); err != nil {
			return err
		}
		if err := m.addCounts(keyMbxV1Totals, -1, -size); err != nil {
			return err
		}
	}
	return m.addTotals(-1, -size)
}

func (m *mailbox) addTotals(dn, db int64) error { return m.addCounts(keyMbxTotals, dn, db) }

// addCounts adds to the count(8) || bytes(8) value of key in mbx_meta.
func (m *mailbox) addCounts(key []byte, dn, db int64) error {
	n, b, err := readCounts(m.meta.Get(key), "mailbox totals")
	if err != nil {
		return err
	}
	return m.meta.Put(key, counts(max(n+dn, 0), max(b+db, 0)))
}

// evictV1 evicts version 1 envelopes, oldest first, until n envelopes and
// b bytes are freed (either may be zero or negative: nothing to free), and
// fails with ErrMailboxFull, evicting nothing, if all of them together
// would not free that much.
func (m *mailbox) evictV1(n, b int64) error {
	if n <= 0 && b <= 0 {
		return nil
	}
	vn, vb, err := readCounts(m.meta.Get(keyMbxV1Totals), "mailbox version 1 totals")
	if err != nil {
		return err
	}
	if m.v1 == nil || vn < n || vb < b {
		return ErrMailboxFull
	}
	for n > 0 || b > 0 {
		k, _ := m.v1.Cursor().First()
		if k == nil {
			return fmt.Errorf("%w: version 1 totals say %d envelopes but none are indexed", ErrCorrupt, vn)
		}
		if len(k) != 8 {
			return fmt.Errorf("%w: mailbox version 1 index key of %d bytes", ErrCorrupt, len(k))
		}
		v := m.env.Get(k)
		if v == nil {
			return fmt.Errorf("%w: mailbox version 1 index names missing envelope %x", ErrCorrupt, k)
		}
		env, err := unmarshalMailboxRecord(v)
		if err != nil {
			return err
		}
		if err := m.remove(binary.BigEndian.Uint64(k)); err != nil {
			return err
		}
		n, b = n-1, b-int64(len(env))
	}
	return nil
}

func counts(n, b int64) []byte {
	return binary.BigEndian.AppendUint64(be64(uint64(n)), uint64(b))
}

// readCounts decodes a count(8) || bytes(8) value; nil is zero.
func readCounts(v []byte, what string) (int64, int64, error) {
	if v == nil {
		return 0, 0, nil
	}
	if len(v) != 16 {
		return 0, 0, fmt.Errorf("%w: %s value of %d bytes", ErrCorrupt, what, len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), int64(binary.BigEndian.Uint64(v[8:])), nil
}

// unmarshalMailboxRecord decodes an mbx_env record into a fresh copy of the
// envelope, which MailboxPut validated when it was stored.
func unmarshalMailboxRecord(v []byte) ([]byte, error) {
	d := newDecoder("mailbox envelope", v)
	env := d.bytes(protocol.MaxEnvelopeSize)
	if err := d.finish(); err != nil {
		return nil, err
	}
	if len(env) < protocol.EnvelopeHeaderSize {
		return nil, fmt.Errorf("%w: mailbox envelope of %d bytes", ErrCorrupt, len(env))
	}
	return env, nil
}

// envFields are an envelope's outer fields, read at their fixed offsets.
type envFields struct {
	tag        [32]byte
	expiry     int64 // Unix seconds
	deleteHash [32]byte
}

// envelopeFields reads the outer fields of env, which must be at least
// protocol.EnvelopeHeaderSize bytes.
func envelopeFields(env []byte) envFields {
	var f envFields
	copy(f.tag[:], env[envOffTag:])
	f.expiry = int64(binary.BigEndian.Uint64(env[envOffExpiry:]))
	copy(f.deleteHash[:], env[envOffDelete:])
	return f
}

// tagCursor walks one tag's range of the mbx_tag index.
type tagCursor struct {
	c   *recordCursor
	tag [32]byte
	seq uint64
}

// seek positions the cursor at the first entry after seq and reports
// whether there is one.
func (t *tagCursor) seek(after uint64) bool {
	if after == ^uint64(0) {
		return false
	}
	k, _ := t.c.Seek(concat(t.tag[:], be64(after+1)))
	return t.load(k)
}

func (t *tagCursor) next() bool {
	k, _ := t.c.Next()
	return t.load(k)
}

func (t *tagCursor) load(k []byte) bool {
	if len(k) != 40 || !bytes.Equal(k[:32], t.tag[:]) {
		return false
	}
	t.seq = binary.BigEndian.Uint64(k[32:])
	return true
}

// tagHeap orders tag cursors by their current sequence number.
type tagHeap []*tagCursor

func (h tagHeap) Len() int           { return len(h) }
func (h tagHeap) Less(i, j int) bool { return h[i].seq < h[j].seq }
func (h tagHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *tagHeap) Push(x any)        { *h = append(*h, x.(*tagCursor)) }
func (h *tagHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// MailboxPeek returns up to limit held envelopes, oldest first, whatever
// their tags: what an operator (or the demo) sees of a mailbox. The
// envelopes are sealed; nothing in them is readable here.
func (tx *Tx) MailboxPeek(limit int) ([]MailboxEntry, error) {
	m, err := tx.mailboxBuckets(false)
	if err != nil {
		return nil, err
	}
	var out []MailboxEntry
	c := m.env.Cursor()
	for k, v := c.First(); k != nil && len(out) < limit; k, v = c.Next() {
		raw, err := unmarshalMailboxRecord(v)
		if err != nil {
			return nil, err
		}
		e, err := protocol.ParseEnvelope(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: held envelope: %w", ErrCorrupt, err)
		}
		out = append(out, MailboxEntry{Seq: binary.BigEndian.Uint64(k), Tag: e.Tag, Expiry: e.Expiry, Envelope: raw})
	}
	return out, nil
}
