package ui_test

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// fakeT records what locateChromium decided instead of stopping a test.
type fakeT struct {
	skipped, failed string
}

func (f *fakeT) Helper()           {}
func (f *fakeT) Skip(args ...any)  { f.skipped = fmt.Sprint(args...) }
func (f *fakeT) Fatal(args ...any) { f.failed = fmt.Sprint(args...) }

// TestLocateChromium: a Chromium on the PATH is used; without one the
// browser tests skip with a message that says how to install it, and fail
// with that message when SOTTO_CI=1, as continuous integration sets it.
func TestLocateChromium(t *testing.T) {
	none := func(string) (string, error) { return "", exec.ErrNotFound }
	only := func(want string) func(string) (string, error) {
		return func(name string) (string, error) {
			if name == want {
				return "/opt/bin/" + name, nil
			}
			return "", &exec.Error{Name: name, Err: exec.ErrNotFound}
		}
	}
	env := func(ci string) func(string) string {
		return func(k string) string {
			if k == "SOTTO_CI" {
				return ci
			}
			return ""
		}
	}
	for _, tc := range []struct {
		name       string
		lookPath   func(string) (string, error)
		ci         string
		wantPath   string
		wantSkip   bool
		wantFailed bool
	}{
		{"found, not CI", only("chromium"), "", "/opt/bin/chromium", false, false},
		{"found, CI", only("chromium"), "1", "/opt/bin/chromium", false, false},
		{"second name", only("chromium-browser"), "1", "/opt/bin/chromium-browser", false, false},
		{"third name", only("google-chrome"), "", "/opt/bin/google-chrome", false, false},
		{"missing, developer", none, "", "", true, false},
		{"missing, SOTTO_CI=0", none, "0", "", true, false},
		{"missing, CI", none, "1", "", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f fakeT
			got := locateChromium(&f, tc.lookPath, env(tc.ci))
			if got != tc.wantPath {
				t.Errorf("path %q, want %q", got, tc.wantPath)
			}
			if (f.skipped != "") != tc.wantSkip || (f.failed != "") != tc.wantFailed {
				t.Fatalf("skipped %q, failed %q; want skip %v, fail %v", f.skipped, f.failed, tc.wantSkip, tc.wantFailed)
			}
			if msg := f.skipped + f.failed; msg != "" {
				for _, want := range []string{"apt-get install chromium", "chromium", "chromium-browser", "google-chrome"} {
					if !strings.Contains(msg, want) {
						t.Errorf("message %q does not say %q", msg, want)
					}
				}
			}
		})
	}
}
