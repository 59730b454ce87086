// Package group implements Sotto's private groups (protocol/SPEC.md,
// "Groups"): signed membership operations that every member orders into
// the same canonical chain, sender keys that encrypt a group message once
// for all members, and the topic, tags and keys that derive from the
// group secret. It is pure computation: carrying operations, keys and
// messages is the node's job.
package group

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"

	"github.com/sotto-im/sotto/protocol"
)

// Sizes.
const (
	IDSize     = 32 // group ID
	SecretSize = 32 // group secret
)

// Key derivation labels (SPEC.md, "Key derivation labels").
const (
	labelSecret     = "sotto/v2/group/secret"
	labelTopic      = "sotto/v2/group/topic"
	labelWriteKey   = "sotto/v2/group/write-key"
	labelHeaderKey  = "sotto/v2/group/header-key"
	labelOp         = "sotto/v2/group/op"
	labelOpHash     = "sotto/v2/group/op-hash"
	labelState      = "sotto/v2/group/state"
	labelMessageKey = "sotto/v2/group/message-key"
	labelMessage    = "sotto/v2/group/message"
)

// TopicPrefix starts every group topic's name.
const TopicPrefix = "/sotto/group/1/"

// ID is a group's random identifier; Secret is the group secret from which
// the topic, tags and header key derive.
type (
	ID     [IDSize]byte
	Secret [SecretSize]byte
)

// Commit is the commitment to a group secret that operations carry:
// SHA-256("sotto/v2/group/secret" || g).
func (g Secret) Commit() [32]byte {
	return sha256.Sum256(append([]byte(labelSecret), g[:]...))
}

func (g Secret) derive(label string, epoch uint64, n int) []byte {
	info := binary.BigEndian.AppendUint64([]byte(label), epoch)
	out, err := hkdf.Key(sha256.New, g[:], nil, string(info), n)
	if err != nil {
		panic("group: hkdf: " + err.Error()) // only for lengths HKDF cannot give
	}
	return out
}

// Topic is the gossip topic of the group in epoch.
func (g Secret) Topic(epoch uint64) string {
	return TopicPrefix + hex.EncodeToString(g.derive(labelTopic, epoch, 16))
}

// WriteKey signs the group's mailbox deposits in epoch.
func (g Secret) WriteKey(epoch uint64) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(g.derive(labelWriteKey, epoch, ed25519.SeedSize))
}

// Tag is the mailbox tag of the group's envelopes in epoch: formed like a
// version 2 pairwise tag, from the public write key.
func (g Secret) Tag(epoch uint64) protocol.Tag {
	return protocol.WriteKeyTag(g.WriteKey(epoch).Public().(ed25519.PublicKey))
}

// HeaderKey seals the headers of the group's messages in epoch.
func (g Secret) HeaderKey(epoch uint64) [32]byte {
	return [32]byte(g.derive(labelHeaderKey, epoch, 32))
}
