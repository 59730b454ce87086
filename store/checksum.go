package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"

	bolt "go.etcd.io/bbolt"
)

// Record checksums. Every record that is not sealed (all of them in a
// store without a passphrase; the index buckets of an encrypted one) ends
// with a CRC-32C of its bucket, stored key and value, so that a changed
// byte is reported as ErrCorrupt instead of being shown. A checksum
// catches damage, not tampering: the AEAD of sealed records does that.
// Not summed: meta (the schema version and the wrapped data key, which its
// own AEAD protects), the key directory (sealed) and a mailbox node's
// buckets (envelopes it holds for others, checked when parsed).

// sumSize is the length of a record checksum.
const sumSize = 4

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// unsummed lists the buckets whose records carry no checksum.
var unsummed = map[string]bool{
	string(bucketMeta):       true,
	string(bucketKeyDir):     true,
	string(bucketMbxEnv):     true,
	string(bucketMbxHash):    true,
	string(bucketMbxTag):     true,
	string(bucketMbxExp):     true,
	string(bucketMbxDel):     true,
	string(bucketMbxTagStat): true,
	string(bucketMbxMeta):    true,
	string(bucketMbxReg):     true,
	string(bucketMbxRegExp):  true,
}

// migrationSums names the schema migration that added checksums: a store
// whose schema stops before it (tests of older schemas) has none.
const migrationSums = "record checksums"

// hasSums reports whether a store migrated with ms carries checksums.
func hasSums(ms []migration) bool {
	for _, m := range ms {
		if m.name == migrationSums {
			return true
		}
	}
	return false
}

// summed reports whether records of bucket name carry a checksum.
func summed(name []byte, encrypted bool) bool {
	if unsummed[string(name)] || bytes.HasPrefix(name, []byte(mailboxPrefix)) {
		return false
	}
	return !encrypted || !policyFor(name).seal
}

func recordSum(name, key, v []byte) uint32 {
	var n [binary.MaxVarintLen64 + 1]byte
	n[0] = byte(len(name))
	crc := crc32.Update(0, castagnoli, n[:1])
	crc = crc32.Update(crc, castagnoli, name)
	crc = crc32.Update(crc, castagnoli, n[:binary.PutUvarint(n[:], uint64(len(key)))])
	crc = crc32.Update(crc, castagnoli, key)
	return crc32.Update(crc, castagnoli, v)
}

// appendSum returns v followed by its checksum (a new slice).
func appendSum(name, key, v []byte) []byte {
	out := make([]byte, len(v), len(v)+sumSize)
	copy(out, v)
	return binary.BigEndian.AppendUint32(out, recordSum(name, key, v))
}

// stripSum checks and removes a record's checksum; the result shares v's
// memory.
func stripSum(name, key, v []byte) ([]byte, error) {
	if len(v) < sumSize {
		return nil, fmt.Errorf("%w: a record in %s of %d bytes has no checksum", ErrCorrupt, name, len(v))
	}
	body := v[:len(v)-sumSize]
	if binary.BigEndian.Uint32(v[len(body):]) != recordSum(name, key, body) {
		return nil, fmt.Errorf("%w: a record in %s fails its checksum", ErrCorrupt, name)
	}
	return body, nil
}

// addRecordSums is the schema migration that gives every record of the
// summed buckets its checksum.
func addRecordSums(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	encrypted := meta != nil && meta.Get(keyDataKey) != nil
	return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		if !summed(name, encrypted) {
			return nil
		}
		var ks, vs [][]byte
		if err := b.ForEach(func(k, v []byte) error {
			if v == nil {
				return fmt.Errorf("%w: nested bucket %q in %q", ErrCorrupt, k, name)
			}
			ks = append(ks, append([]byte(nil), k...))
			vs = append(vs, appendSum(name, k, v))
			return nil
		}); err != nil {
			return err
		}
		for i, k := range ks {
			if err := b.Put(k, vs[i]); err != nil {
				return err
			}
		}
		return nil
	})
}
