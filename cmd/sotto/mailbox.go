package main

import (
	"errors"

	"github.com/sotto-im/sotto/node"
)

// errNoMailbox reports that this build's node cannot serve as a mailbox.
var errNoMailbox = errors.New("--mailbox: serving as a mailbox is not available in this build")

// setMailbox applies --mailbox to the node's configuration.
func setMailbox(c *node.Config, on bool) error {
	if on {
		return errNoMailbox
	}
	return nil
}
