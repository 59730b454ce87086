// Package mailbox is the mailbox role, service and client. Mailboxes hold
// sealed envelopes for recipients who are offline: the service stores
// what is deposited over Protocol or gossiped on its shards (with quotas,
// per-peer rate limits, expiry sweeps and DHT provider records), and
// answers queries and deletes; the client deposits at k mailboxes,
// queries and deletes, and follows shards for live delivery.
//
// It builds on p2p (streams, frames, the DHT, the gossip router) and
// stores through store; it knows envelopes only by their outer fields.
package mailbox
