package main

import "github.com/sotto-im/sotto/node"

// setMailbox applies --mailbox to the node's configuration: the node also
// holds sealed envelopes for others.
func setMailbox(c *node.Config, on bool) error {
	c.Mailbox = on
	return nil
}
