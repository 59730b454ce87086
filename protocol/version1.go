package protocol

import "time"

// The end of the upgrade window from version 1 mailboxes (SPEC
// "Migration from version 1"). Every node judges them by its own clock.
var (
	// Version1Ends is when version 1 deposits end: mailbox nodes refuse
	// them from then on (OldProtocol) and senders no longer make them.
	Version1Ends = time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC)
	// Version1ReadEnds is when reading version 1 mailboxes ends, MaxTTL
	// and a day after Version1Ends, so what was deposited before the end
	// is fetched once more.
	Version1ReadEnds = Version1Ends.Add(MaxTTL + 24*time.Hour)
)

// Version1Deposits reports whether version 1 deposits are still made and
// taken at now.
func Version1Deposits(now time.Time) bool { return now.Before(Version1Ends) }

// Version1Reads reports whether version 1 mailboxes are still read at now.
func Version1Reads(now time.Time) bool { return now.Before(Version1ReadEnds) }
