package api_test

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sotto-im/sotto/api"
)

func TestLoadOrCreateToken(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	tok, err := api.LoadOrCreateToken(dir)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(raw) != api.TokenSize {
		t.Fatalf("token %q does not decode to %d bytes: %v", tok, api.TokenSize, err)
	}
	path := filepath.Join(dir, api.TokenFile)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v, %v; want 0600", fi.Mode(), err)
	}
	again, err := api.LoadOrCreateToken(dir)
	if err != nil || again != tok {
		t.Fatalf("second load = %q, %v; want the same token", again, err)
	}
	other, err := api.LoadOrCreateToken(t.TempDir())
	if err != nil || other == tok {
		t.Fatalf("token for another dir = %q, %v", other, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("data dir holds %d entries, want only the token file", len(entries))
	}

	// A token file others can read is narrowed.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := api.LoadOrCreateToken(dir); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v after load, want 0600", fi.Mode())
	}

	for _, bad := range []string{"", "short", "!!!!" + tok[4:], tok + "AAAA"} {
		if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := api.LoadOrCreateToken(dir); !errors.Is(err, api.ErrBadToken) {
			t.Errorf("token file %q: %v, want ErrBadToken", bad, err)
		}
	}
}
