package store

import "errors"

// Sentinel errors. Callers branch on them with errors.Is; the messages are
// safe to show to users and say what to do.
var (
	// ErrInUse means another process (or another handle in this process)
	// holds the data directory's database open.
	ErrInUse = errors.New("store: data dir is already in use by a running node; stop it or use another --data")

	// ErrNotFound means the requested record does not exist.
	ErrNotFound = errors.New("store: not found")

	// ErrDuplicate means a record with the same identity already exists:
	// an incoming message whose ID was already seen, an outgoing message ID
	// reused, or a contact added twice.
	ErrDuplicate = errors.New("store: duplicate")

	// ErrUnknownContact means no contact has the given account key or name.
	ErrUnknownContact = errors.New("store: unknown contact; add it first with 'sotto contact add'")

	// ErrNameTaken means another contact already uses the name.
	ErrNameTaken = errors.New("store: contact name already taken; choose another name or rename the existing contact")

	// ErrInvalidName means a contact name is empty, too long or contains
	// control characters.
	ErrInvalidName = errors.New("store: invalid contact name; use 1 to 64 printable characters")

	// ErrTooLarge means a value exceeds one of the store's size limits.
	ErrTooLarge = errors.New("store: value too large")

	// ErrCorrupt means a stored record could not be decoded. The data dir
	// is damaged; restore it from a backup.
	ErrCorrupt = errors.New("store: corrupted record in database; restore the data dir from a backup")

	// ErrSchemaTooNew means the database was written by a newer version of
	// Sotto than this one.
	ErrSchemaTooNew = errors.New("store: database was written by a newer version of sotto; upgrade sotto to open it")

	// ErrInsecureDir means the data directory is accessible to other users.
	ErrInsecureDir = errors.New("store: data dir is accessible by other users; run 'chmod 700' on it or use another --data")

	// ErrClosed means the DB has been closed.
	ErrClosed = errors.New("store: database is closed")

	// ErrReadOnly means a write method was called inside DB.View.
	ErrReadOnly = errors.New("store: write in a read-only transaction")
)
