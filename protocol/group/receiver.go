package group

import (
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/sotto-im/sotto/keys"
	"github.com/sotto-im/sotto/protocol"
)

// memberKey is a member's sender key as a receiver holds it.
type memberKey struct {
	owner   keys.AccountPublic
	public  ed25519.PublicKey
	base    uint32   // the iteration chain is at
	chain   [32]byte // chain key at base
	skipped map[uint32][32]byte
	seen    [(MaxSenderKeyMessages + 7) / 8]byte
}

func (k *memberKey) wasSeen(i uint32) bool { return k.seen[i/8]&(1<<(i%8)) != 0 }

// Receiver holds the sender keys of a group's members and opens their
// messages: each (key, iteration) once. It is not safe for concurrent use.
type Receiver struct {
	group   ID
	keys    map[[KeyIDSize]byte]*memberKey
	derived map[epochKey]epochKeys // tag and header key, derived once per secret and epoch
}

type (
	epochKey struct {
		g     Secret
		epoch uint64
	}
	epochKeys struct {
		tag    protocol.Tag
		header [32]byte
	}
)

// epochKeys derives (once) the group's tag and header key in epoch: an
// Ed25519 key generation and an HKDF that every message would repeat.
func (r *Receiver) epochKeys(g Secret, epoch uint64) epochKeys {
	k := epochKey{g, epoch}
	if d, ok := r.derived[k]; ok {
		return d
	}
	if len(r.derived) >= 16 { // a few epochs of a few secrets; start over beyond
		clear(r.derived)
	}
	d := epochKeys{tag: g.Tag(epoch), header: g.HeaderKey(epoch)}
	r.derived[k] = d
	return d
}

// NewReceiver makes a receiver for group g with no keys yet.
func NewReceiver(g ID) *Receiver {
	return &Receiver{group: g, keys: map[[KeyIDSize]byte]*memberKey{}, derived: map[epochKey]epochKeys{}}
}

// AddKey takes a sender key that owner sent over its pairwise session. A
// key already held is kept as it is (its chain may be ahead); a key ID
// that another member's key holds is refused.
func (r *Receiver) AddKey(owner keys.AccountPublic, d Distribution) error {
	if d.Group != r.group {
		return fmt.Errorf("%w: a sender key for another group", ErrGroupMismatch)
	}
	if len(d.Public) != ed25519.PublicKeySize || d.Iteration >= MaxSenderKeyMessages {
		return fmt.Errorf("%w: sender key", ErrMalformedGroupMessage)
	}
	if k, ok := r.keys[d.ID]; ok {
		if k.owner != owner {
			return fmt.Errorf("%w: key ID of another member's sender key", ErrGroupMismatch)
		}
		return nil
	}
	r.keys[d.ID] = &memberKey{owner: owner, public: d.Public, base: d.Iteration, chain: d.Chain, skipped: map[uint32][32]byte{}}
	return nil
}

// DropOwner deletes every sender key of owner (a member who was removed
// or left).
func (r *Receiver) DropOwner(owner keys.AccountPublic) {
	for id, k := range r.keys {
		if k.owner == owner {
			delete(r.keys, id)
		}
	}
}

// Owners lists whose keys the receiver holds, one entry per key.
func (r *Receiver) Owners() []keys.AccountPublic {
	var out []keys.AccountPublic
	for _, k := range r.keys {
		out = append(out, k.owner)
	}
	return out
}

// Checked is a group message whose header opened and whose signature
// verified: what the gossip validator learns without decrypting a body.
type Checked struct {
	Owner     keys.AccountPublic
	KeyID     [KeyIDSize]byte
	Iteration uint32

	key  *memberKey
	body []byte // the body's ciphertext
	ad   []byte
}

// Check runs every check of a group message short of decrypting its
// body: the tag is the group's in epoch, the header opens, the key is a
// member's, the iteration is within the limit and not seen, and the
// signature verifies. It changes nothing.
func (r *Receiver) Check(g Secret, epoch uint64, env *protocol.Envelope) (*Checked, error) {
	ek := r.epochKeys(g, epoch)
	if env.Tag != ek.tag {
		return nil, fmt.Errorf("%w: another tag", ErrNotForGroup)
	}
	c := env.Ciphertext
	if len(c) < messagePrefix+chacha20poly1305.Overhead+ed25519.SignatureSize || c[0] != messageVersion {
		return nil, fmt.Errorf("%w: %d bytes or version", ErrMalformedGroupMessage, len(c))
	}
	ha, err := chacha20poly1305.NewX(ek.header[:])
	if err != nil {
		return nil, err
	}
	nonce := c[1 : 1+chacha20poly1305.NonceSizeX]
	header, err := ha.Open(nil, nonce, c[1+chacha20poly1305.NonceSizeX:messagePrefix], env.Tag[:])
	if err != nil {
		return nil, ErrNotForGroup
	}
	ch := &Checked{Iteration: binary.BigEndian.Uint32(header[KeyIDSize:])}
	copy(ch.KeyID[:], header)
	k, ok := r.keys[ch.KeyID]
	if !ok {
		return nil, ErrUnknownSenderKey
	}
	switch {
	case ch.Iteration >= MaxSenderKeyMessages:
		return nil, ErrTooManyMessages
	case k.wasSeen(ch.Iteration):
		return nil, ErrGroupReplay
	}
	signed, sig := c[:len(c)-ed25519.SignatureSize], c[len(c)-ed25519.SignatureSize:]
	if !ed25519.Verify(k.public, signedMessage(env.Tag, env.Expiry, signed), sig) {
		return nil, ErrGroupSignature
	}
	if ch.Iteration < k.base {
		if _, ok := k.skipped[ch.Iteration]; !ok {
			return nil, ErrGroupReplay // before the key was received: never readable
		}
	}
	ch.Owner, ch.key = k.owner, k
	ch.ad, ch.body = c[:messagePrefix], signed[messagePrefix:]
	return ch, nil
}

// Open checks a group message, decrypts it, and marks it seen. Nothing
// changes unless it opens and names this group and its key's owner.
func (r *Receiver) Open(g Secret, epoch uint64, env *protocol.Envelope) (*Inner, error) {
	ch, err := r.Check(g, epoch, env)
	if err != nil {
		return nil, err
	}
	k := ch.key
	var mk [32]byte
	chain, base := k.chain, k.base
	type skip struct {
		i  uint32
		mk [32]byte
	}
	var skipped []skip
	if ch.Iteration < base {
		mk = k.skipped[ch.Iteration]
	} else {
		for i := base; i < ch.Iteration; i++ {
			m, next := chainStep(chain)
			skipped = append(skipped, skip{i, m})
			chain = next
		}
		var next [32]byte
		mk, next = chainStep(chain)
		chain, base = next, ch.Iteration+1
	}
	key, nonce := bodyKey(mk)
	ba, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, err
	}
	padded, err := ba.Open(nil, nonce, ch.body, ch.ad)
	if err != nil {
		return nil, ErrGroupAuth
	}
	plain, err := protocol.Unpad(padded)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedGroupMessage, err)
	}
	m, err := ParseInner(plain)
	if err != nil {
		return nil, err
	}
	if m.Group != r.group || m.Sender != k.owner {
		return nil, ErrGroupMismatch
	}
	// Commit: the chain moves on, skipped keys are kept, the iteration
	// is spent.
	if ch.Iteration < k.base {
		delete(k.skipped, ch.Iteration)
	} else {
		for _, s := range skipped {
			k.skipped[s.i] = s.mk
		}
		k.chain, k.base = chain, base
	}
	k.seen[ch.Iteration/8] |= 1 << (ch.Iteration % 8)
	return m, nil
}

// EpochOf finds the live epoch (protocol.LiveEpochs) whose group tag is
// tag.
func EpochOf(g Secret, tag protocol.Tag, now time.Time) (uint64, bool) {
	for _, e := range protocol.LiveEpochs(now) {
		if g.Tag(e) == tag {
			return e, true
		}
	}
	return 0, false
}

// Header opens the sealed header of a group message of epoch and returns
// its key ID and iteration, without checking anything else: a member
// that has opened the message before finds out which one it is.
func (r *Receiver) Header(g Secret, epoch uint64, env *protocol.Envelope) ([KeyIDSize]byte, uint32, error) {
	ek := r.epochKeys(g, epoch)
	c := env.Ciphertext
	if env.Tag != ek.tag || len(c) < messagePrefix || c[0] != messageVersion {
		return [KeyIDSize]byte{}, 0, ErrNotForGroup
	}
	ha, err := chacha20poly1305.NewX(ek.header[:])
	if err != nil {
		return [KeyIDSize]byte{}, 0, err
	}
	header, err := ha.Open(nil, c[1:1+chacha20poly1305.NonceSizeX], c[1+chacha20poly1305.NonceSizeX:messagePrefix], env.Tag[:])
	if err != nil {
		return [KeyIDSize]byte{}, 0, ErrNotForGroup
	}
	return [KeyIDSize]byte(header[:KeyIDSize]), binary.BigEndian.Uint32(header[KeyIDSize:]), nil
}
