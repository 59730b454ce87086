package store

import (
	"bytes"
	"encoding/base64"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// bucketKeyDir is the key directory of an encrypted store: hashed key part
// (32) -> sealed original. It is empty in a plain store.
var bucketKeyDir = []byte("keydir")

// createKeyDir is the schema migration that adds the key directory.
// Migrations after it run on stores that may be encrypted and whose
// records carry checksums: one that reads or writes records goes through
// Tx.wrap, or handles the stored layout itself as addRecordSums does.
func createKeyDir(tx *bolt.Tx) error {
	_, err := tx.CreateBucketIfNotExists(bucketKeyDir)
	return err
}

// keyPolicy says which part of a bucket's keys is replaced by a keyed hash
// in an encrypted store.
type keyPolicy uint8

const (
	keysPlain       keyPolicy = iota // keys reveal nothing: stored as they are
	keysAccount32                    // keys begin with an account key: its 32 bytes are hashed
	keysName                         // the whole key is a contact's name: hashed
	keysSettingName                  // a setting's name may end in base64url(account): that is hashed
)

// policy is how an encrypted store keeps one bucket.
type policy struct {
	seal bool
	keys keyPolicy
	// plainPrefix leaves the first bytes of each value unsealed (they
	// are authenticated as part of the associated data), so a scan can
	// compare them without opening every record.
	plainPrefix int
}

// bucketPolicies lists the buckets whose keys are hashed, and the buckets
// kept plain. Every other bucket, including any added later, has its
// values sealed and its keys stored as they are: new buckets are private
// by default.
var bucketPolicies = map[string]policy{
	// Plain: the schema and the wrapped data key, and a mailbox node's
	// buckets, which hold sealed envelopes for others and their indexes.
	string(bucketMeta):       {},
	string(bucketMbxEnv):     {},
	string(bucketMbxHash):    {},
	string(bucketMbxTag):     {},
	string(bucketMbxExp):     {},
	string(bucketMbxDel):     {},
	string(bucketMbxTagStat): {},
	string(bucketMbxMeta):    {},
	string(bucketMbxReg):     {},
	string(bucketMbxRegExp):  {},

	// Indexes whose keys and values are random IDs, sequence numbers,
	// times, epochs and markers: they reveal nothing a sealed record
	// hides, and are read and written for every message.
	string(bucketGlobal):      {},
	string(bucketOutboxDue):   {},
	string(bucketTagEpochs):   {},
	string(bucketSeenInit):    {},
	string(bucketSeenInitExp): {},

	// Token records: the first tokenHashSize bytes are part of the
	// envelope's delete hash (public, in the envelope); lookups compare
	// them while scanning an expiry second.
	string(bucketTokenLog): {seal: true, plainPrefix: tokenHashSize},

	// Keyed by the contact's account key.
	string(bucketContacts): {seal: true, keys: keysAccount32},
	string(bucketSessions): {seal: true, keys: keysAccount32},
	string(bucketSeen):     {seal: true, keys: keysAccount32},
	string(bucketHeld):     {seal: true, keys: keysAccount32},
	// Per-contact counters and the conversation index (seq -> random
	// message ID): the hashed key already shows how many messages a
	// conversation has, the values add nothing.
	string(bucketConv):    {keys: keysAccount32},
	string(bucketConvSeq): {keys: keysAccount32},
	string(bucketOutSeq):  {keys: keysAccount32},
	string(bucketInSeq):   {keys: keysAccount32},
	// Keyed by the contact's name.
	string(bucketNames): {seal: true, keys: keysName},
	// Settings: names such as "alt/" + base64url(account) name contacts.
	string(bucketSettings): {seal: true, keys: keysSettingName},
}

// mailboxPrefix begins the name of every bucket of the mailbox role
// (envelopes held for others and their indexes): all are kept plain,
// including ones added later.
const mailboxPrefix = "mbx_"

func policyFor(name []byte) policy {
	if p, ok := bucketPolicies[string(name)]; ok {
		return p
	}
	if bytes.HasPrefix(name, []byte(mailboxPrefix)) {
		return policy{}
	}
	return policy{seal: true}
}

// recordBucket is a top-level bucket seen through the store's encryption:
// in a plain store it is the bbolt bucket itself; in an encrypted one, Put
// seals values and hashes keys, Get and iteration open and unhash them.
// Values it returns are valid for the transaction (decrypted values are
// fresh copies). A record that fails to open reads as absent and fails the
// whole transaction with ErrCorrupt (Tx.fail), so damaged data is reported,
// never shown.
type recordBucket struct {
	b    *bolt.Bucket
	tx   *Tx
	name []byte
	pol  policy
	s    *sealer // nil: values not sealed, keys not hashed
	sum  bool    // values carry a checksum (checksum.go)
	// direct: records are stored as they are (no seal, hash or sum).
	direct bool
}

// wrap returns the record view of a top-level bucket.
func (tx *Tx) wrap(name []byte, b *bolt.Bucket) *recordBucket {
	rb := &recordBucket{b: b, tx: tx, name: name}
	if tx.s != nil {
		rb.pol, rb.s = policyFor(name), tx.s
		if !rb.pol.seal && rb.pol.keys == keysPlain {
			rb.s = nil
		}
	}
	rb.sum = tx.sums && summed(name, tx.s != nil)
	rb.direct = rb.s == nil && !rb.sum
	return rb
}

// hashedPart says which part of key k a policy hashes: k[from:to] in
// domain, or ok false when the key is stored as it is.
func (p keyPolicy) hashedPart(k []byte) (from, to int, domain byte, ok bool) {
	switch p {
	case keysAccount32:
		if len(k) >= 32 {
			return 0, 32, hashAccount, true
		}
	case keysName:
		return 0, len(k), hashName, true
	case keysSettingName:
		// "prefix/…/" + base64url(account): the account is hashed.
		i := bytes.LastIndexByte(k, '/') + 1
		if len(k)-i == settingAccountLen {
			if _, err := base64.RawURLEncoding.Decode(make([]byte, 33), k[i:]); err == nil {
				return i, len(k), hashAccount, true
			}
		}
	}
	return 0, 0, 0, false
}

// settingAccountLen is the length of a base64url account key at the end
// of a setting's name.
const settingAccountLen = 43

// hashKey returns the stored form of key k under policy p and, when a part
// was hashed, the hash and the original part (for the key directory).
func hashKey(s *sealer, p keyPolicy, k []byte) (stored []byte, h [32]byte, part []byte, hashed bool) {
	from, to, domain, ok := p.hashedPart(k)
	if !ok {
		return k, h, nil, false
	}
	part = k[from:to]
	if p == keysSettingName {
		part, _ = base64.RawURLEncoding.DecodeString(string(part))
	}
	h = s.cachedHash(domain, part)
	hs := h[:]
	if p == keysSettingName {
		hs = []byte(base64.RawURLEncoding.EncodeToString(h[:]))
	}
	return concat(k[:from], hs, k[to:]), h, part, true
}

// storedKey maps a key to its stored form; record registers the original
// in the key directory (Put).
func (rb *recordBucket) storedKey(k []byte, record bool) ([]byte, error) {
	if rb.s == nil {
		return k, nil
	}
	sk, h, part, hashed := hashKey(rb.s, rb.pol.keys, k)
	if !hashed {
		return k, nil
	}
	if err := rb.tx.rememberKey(h, part, record); err != nil {
		return nil, err
	}
	return sk, nil
}

// originalKey inverts storedKey.
func (rb *recordBucket) originalKey(k []byte) []byte {
	if k == nil || rb.s == nil {
		return k
	}
	from, to, _, ok := rb.pol.keys.hashedPart(k)
	if !ok {
		return k
	}
	var h [32]byte
	if rb.pol.keys == keysSettingName {
		b, err := base64.RawURLEncoding.DecodeString(string(k[from:to]))
		if err != nil || len(b) != 32 {
			return k
		}
		h = [32]byte(b)
	} else if to-from == 32 {
		h = [32]byte(k[from:to])
	} else {
		rb.tx.fail(fmt.Errorf("%w: a hashed key in %s of %d bytes", ErrCorrupt, rb.name, to-from))
		return k
	}
	part, ok := rb.tx.lookupKey(h)
	if !ok {
		rb.tx.fail(fmt.Errorf("%w: a key in %s has no key directory entry", ErrCorrupt, rb.name))
		return k
	}
	if rb.pol.keys == keysSettingName {
		part = []byte(base64.RawURLEncoding.EncodeToString(part))
	}
	return concat(k[:from], part, k[to:])
}

func (rb *recordBucket) openValue(storedKey, v []byte) []byte {
	pv, err := rb.open(storedKey, v)
	if err != nil {
		rb.tx.fail(err)
		return nil
	}
	return pv
}

// open opens the stored value v of storedKey: its AEAD in an encrypted
// store, its checksum in a plain one.
func (rb *recordBucket) open(storedKey, v []byte) ([]byte, error) {
	if v == nil || rb.direct {
		return v, nil
	}
	switch {
	case rb.s != nil && rb.pol.seal:
		return openValue(rb.s, rb.name, rb.pol, storedKey, v)
	case rb.sum:
		return stripSum(rb.name, storedKey, v)
	}
	return v, nil
}

// getConfined is Get for a reader that confines damage to the record: a
// record that fails to open is returned as its error (wrapping
// ErrCorrupt), and the transaction goes on.
func (rb *recordBucket) getConfined(k []byte) ([]byte, error) {
	if rb.direct {
		return rb.b.Get(k), nil
	}
	sk, err := rb.storedKey(k, false)
	if err != nil {
		return nil, err
	}
	return rb.open(sk, rb.b.Get(sk))
}

// sealValue seals v as the record (name, storedKey) under pol.
func sealValue(s *sealer, name []byte, pol policy, storedKey, v []byte) ([]byte, error) {
	p := pol.plainPrefix
	if p == 0 {
		return s.seal(name, storedKey, v)
	}
	if len(v) < p {
		return nil, fmt.Errorf("store: a value in %s is shorter than its plain prefix", name)
	}
	sv, err := s.seal(name, concat(storedKey, v[:p]), v[p:])
	if err != nil {
		return nil, err
	}
	return concat(v[:p], sv), nil
}

// openValue inverts sealValue.
func openValue(s *sealer, name []byte, pol policy, storedKey, v []byte) ([]byte, error) {
	p := pol.plainPrefix
	if p == 0 {
		return s.open(name, storedKey, v)
	}
	if len(v) < p {
		return nil, fmt.Errorf("%w: a record in %s is shorter than its plain prefix", ErrCorrupt, name)
	}
	pv, err := s.open(name, concat(storedKey, v[:p]), v[p:])
	if err != nil {
		return nil, err
	}
	return concat(v[:p], pv), nil
}

// Get returns the value of key k, or nil.
func (rb *recordBucket) Get(k []byte) []byte {
	if rb.direct {
		return rb.b.Get(k)
	}
	sk, err := rb.storedKey(k, false)
	if err != nil {
		rb.tx.fail(err)
		return nil
	}
	return rb.openValue(sk, rb.b.Get(sk))
}

// Put stores v under k.
func (rb *recordBucket) Put(k, v []byte) error {
	if rb.direct {
		return rb.b.Put(k, v)
	}
	sk, err := rb.storedKey(k, true)
	if err != nil {
		return err
	}
	switch {
	case rb.s != nil && rb.pol.seal:
		if v, err = sealValue(rb.s, rb.name, rb.pol, sk, v); err != nil {
			return err
		}
	case rb.sum:
		v = appendSum(rb.name, sk, v)
	}
	return rb.b.Put(sk, v)
}

// Delete removes k.
func (rb *recordBucket) Delete(k []byte) error {
	sk, err := rb.storedKey(k, false)
	if err != nil {
		return err
	}
	if err := rb.b.Delete(sk); err != nil {
		return err
	}
	rb.tx.noteDelete(rb.name)
	return nil
}

// ForEach calls fn for every record in stored-key order.
func (rb *recordBucket) ForEach(fn func(k, v []byte) error) error {
	if rb.direct {
		return rb.b.ForEach(fn)
	}
	return rb.b.ForEach(func(k, v []byte) error {
		pv := rb.openValue(k, v)
		if v != nil && pv == nil {
			return nil // reported by Tx.fail
		}
		return fn(rb.originalKey(k), pv)
	})
}

// Cursor returns a cursor over the bucket.
func (rb *recordBucket) Cursor() *recordCursor { return &recordCursor{c: rb.b.Cursor(), rb: rb} }

// PeekCursor returns a cursor whose values are as stored: sealed in an
// encrypted store except for the bucket's plain prefix, or followed by
// their checksum. Open one with
// OpenPeeked. Scans that need only keys, or only the plain prefix, use it
// so as not to open every record.
func (rb *recordBucket) PeekCursor() *recordCursor {
	return &recordCursor{c: rb.b.Cursor(), rb: rb, peek: true}
}

// OpenPeeked opens a value a PeekCursor returned under key k (nil, and the
// transaction fails, if it does not open).
func (rb *recordBucket) OpenPeeked(k, v []byte) []byte {
	if rb.direct {
		return v
	}
	sk, err := rb.storedKey(k, false)
	if err != nil {
		rb.tx.fail(err)
		return nil
	}
	return rb.openValue(sk, v)
}

// Stats, sequences: as bbolt's.
func (rb *recordBucket) Stats() bolt.BucketStats       { return rb.b.Stats() }
func (rb *recordBucket) NextSequence() (uint64, error) { return rb.b.NextSequence() }
func (rb *recordBucket) Sequence() uint64              { return rb.b.Sequence() }
func (rb *recordBucket) SetSequence(v uint64) error    { return rb.b.SetSequence(v) }

// recordCursor is a bbolt cursor seen through the store's encryption. In
// a bucket with hashed keys, records are in the order of the stored keys:
// all records of one account are together and in order, but accounts come
// in hash order.
type recordCursor struct {
	c    *bolt.Cursor
	rb   *recordBucket
	peek bool // values as stored (PeekCursor)
}

func (rc *recordCursor) out(k, v []byte) ([]byte, []byte) {
	if rc.rb.direct || k == nil {
		return k, v
	}
	if rc.peek {
		return rc.rb.originalKey(k), v
	}
	pv := rc.rb.openValue(k, v)
	return rc.rb.originalKey(k), pv
}

func (rc *recordCursor) First() ([]byte, []byte) { return rc.out(rc.c.First()) }
func (rc *recordCursor) Last() ([]byte, []byte)  { return rc.out(rc.c.Last()) }
func (rc *recordCursor) Next() ([]byte, []byte)  { return rc.out(rc.c.Next()) }
func (rc *recordCursor) Prev() ([]byte, []byte)  { return rc.out(rc.c.Prev()) }
func (rc *recordCursor) Delete() error {
	if err := rc.c.Delete(); err != nil {
		return err
	}
	rc.rb.tx.noteDelete(rc.rb.name)
	return nil
}

// Seek moves to the first record whose original key is at or after seek
// among those sharing its hashed part.
func (rc *recordCursor) Seek(seek []byte) ([]byte, []byte) {
	sk, err := rc.rb.storedKey(seek, false)
	if err != nil {
		rc.rb.tx.fail(err)
		return nil, nil
	}
	return rc.out(rc.c.Seek(sk))
}

// rememberKey notes the original of a hashed key part; with record it also
// makes sure the key directory holds it.
func (tx *Tx) rememberKey(h [32]byte, part []byte, record bool) error {
	if tx.keys == nil {
		tx.keys = map[[32]byte][]byte{}
	}
	if _, ok := tx.keys[h]; !ok {
		tx.keys[h] = bytes.Clone(part)
	}
	if !record || tx.recorded[h] {
		return nil
	}
	dir := tx.tx.Bucket(bucketKeyDir)
	if dir == nil {
		return fmt.Errorf("%w: bucket %q is missing", ErrCorrupt, bucketKeyDir)
	}
	if v := dir.Get(h[:]); v == nil {
		sv, err := tx.s.seal(bucketKeyDir, h[:], part)
		if err != nil {
			return err
		}
		if err := dir.Put(h[:], sv); err != nil {
			return err
		}
	}
	if tx.recorded == nil {
		tx.recorded = map[[32]byte]bool{}
	}
	tx.recorded[h] = true
	return nil
}

// lookupKey returns the original of a hashed key part.
func (tx *Tx) lookupKey(h [32]byte) ([]byte, bool) {
	if p, ok := tx.keys[h]; ok {
		return p, true
	}
	dir := tx.tx.Bucket(bucketKeyDir)
	if dir == nil {
		return nil, false
	}
	v := dir.Get(h[:])
	if v == nil {
		return nil, false
	}
	p, err := tx.s.open(bucketKeyDir, h[:], v)
	if err != nil {
		tx.fail(err)
		return nil, false
	}
	if tx.keys == nil {
		tx.keys = map[[32]byte][]byte{}
	}
	tx.keys[h] = p
	return p, true
}

// fail records the first damaged record met in the transaction; the
// transaction then returns it (and an Update rolls back).
func (tx *Tx) fail(err error) {
	if tx.err == nil {
		tx.err = err
	}
}

// secretBuckets hold records whose deletion must reach the file: private
// prekeys, sessions, a deleted conversation's messages and contact, and
// the sender keys of a group's members who left or were removed.
// When one of their records is deleted, the store is due to be rewritten
// (see rewrite.go).
var secretBuckets = map[string]bool{
	string(bucketPrekeys):      true,
	string(bucketSessions):     true,
	string(bucketMessages):     true,
	string(bucketContacts):     true,
	string(bucketGroupKeys):    true,
	string(bucketGroupPending): true,
}

// noteDelete records a deleted secret.
func (tx *Tx) noteDelete(bucket []byte) {
	if secretBuckets[string(bucket)] {
		tx.secretGone = true
	}
}
