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
