package store

import (
	"os"
	"testing"
)

// testKDF is a cheap Argon2id cost for tests.
var testKDF = KDFParams{Time: 1, Memory: 64, Threads: 1}

// TestMain runs the package's tests on encrypted stores when
// SOTTO_STORE_SEALED=1: every Open gets a passphrase, so the whole suite
// checks that encryption is transparent to the store's accessors.
func TestMain(m *testing.M) {
	if os.Getenv("SOTTO_STORE_SEALED") == "1" {
		sealedSuite = true
		testOptions = []Option{WithPassphrase([]byte("suite passphrase")), WithKDF(testKDF)}
	}
	os.Exit(m.Run())
}

// sealedSuite reports that the suite runs on encrypted stores.
var sealedSuite bool

// skipIfSealed skips a test that inspects raw records.
func skipIfSealed(t *testing.T) {
	t.Helper()
	if sealedSuite {
		t.Skip("inspects raw records")
	}
}

// TestMailboxBucketsPlain: every bucket of the mailbox role, including one
// added later, is kept plain and without checksums; any other new bucket
// is sealed and summed.
func TestMailboxBucketsPlain(t *testing.T) {
	for _, name := range []string{"mbx_env", "mbx_reg", "mbx_future"} {
		if p := policyFor([]byte(name)); p.seal || p.keys != keysPlain {
			t.Errorf("%s: %+v", name, p)
		}
		if summed([]byte(name), false) || summed([]byte(name), true) {
			t.Errorf("%s is summed", name)
		}
	}
	if p := policyFor([]byte("future_bucket")); !p.seal || !summed([]byte("future_bucket"), false) {
		t.Errorf("a new bucket: %+v", p)
	}
}
