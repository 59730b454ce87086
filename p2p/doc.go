// Package p2p is everything Sotto does with libp2p and nothing that is a
// conversation: the host (transports, security, resource and connection
// management, NAT traversal, mDNS), the Kademlia DHT with its bundle record
// validator, the direct stream protocol /sotto/msg/1.0.0 with its frame
// codec, and the gossipsub router.
//
// It knows envelopes and bundles only as bytes. What checks a bundle
// (BundleVerifier) and what durably stores an inbound envelope (Receiver)
// are small interfaces its users plug in. It may import protocol and keys,
// never store: persistence is its users' business.
package p2p
