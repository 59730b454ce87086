package importgraph

import (
	"fmt"
	"go/parser"
	"go/token"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/sotto-im/sotto"

// allowed is the import graph between Sotto's top-level packages; it is
// the documentation of that graph, and the checker enforces exactly it.
//
//	cmd → ui → api → node → mailbox → p2p → protocol → keys
//	 └────────→ api   │        │               ↑
//	                  ├────────┴──→ store ─────┘
//	                  └──→ invite → keys
//
// read with the table, which also lets a package import packages further
// down its chain (node → keys); p2p never imports store; cmd and api
// reach below node only from tests; ui (the web interface) imports only
// api, so that the browser does nothing a bot cannot do over the API.
//
// A top-level package is a directory at the module root together with
// everything below it (p2p/p2ptest and protocol/internal/vectors belong
// to p2p and protocol), so an import within one top-level package is
// always allowed. For each package:
//
//   - code: the project packages its non-test files may import;
//   - tests: what its _test.go files may import besides that, where
//     anyPackage allows the whole project.
//
// Non-test files outside internal/ never import internal/ (it holds test
// support, and this test); every package's tests may.
//
// Test-support packages, those whose last path element ends in "test"
// (keys/kemtest, p2p/p2ptest, api/apitest), are held to one more rule on
// top of the table: a non-test file imports one only if it is itself in
// such a package or under an internal/ directory (protocol/internal/vectors
// may import keys/kemtest; p2p/a.go may not import p2p/p2ptest although
// both are p2p). Test files may import them wherever the table allows.
var allowed = map[string]imports{
	"cmd":      {code: "ui api node", tests: anyPackage},
	"ui":       {code: "api", tests: anyPackage},
	"api":      {code: "node", tests: anyPackage},
	"node":     {code: "mailbox p2p store invite protocol keys", tests: "internal"},
	"mailbox":  {code: "p2p store protocol keys", tests: "internal"},
	"p2p":      {code: "protocol keys", tests: "internal"}, // never store
	"store":    {code: "protocol keys", tests: "internal"},
	"protocol": {code: "keys", tests: "internal"},
	"keys":     {code: "", tests: "internal"},
	"invite":   {code: "keys", tests: "internal"},
	"internal": {code: "keys invite protocol store p2p mailbox node api"},
}

// forbidden lists, per package, imports from outside the project that its
// non-test files must never use: keys and protocol are pure computation,
// store is storage only, and p2p and mailbox are libp2p, not HTTP or the
// database. A pattern ending in "/..." matches that path and every path
// below it; any other pattern matches only itself ("net" is not
// "net/netip").
var forbidden = map[string][]string{
	"keys":     {"github.com/libp2p/...", "go.etcd.io/bbolt/...", "net", "net/http/..."},
	"protocol": {"github.com/libp2p/...", "go.etcd.io/bbolt/...", "net", "net/http/...", "os/exec"},
	"store":    {"github.com/libp2p/...", "net/http/..."},
	"p2p":      {"go.etcd.io/bbolt/...", "net/http/..."},
	"mailbox":  {"net/http/..."},
	"invite":   {"go.etcd.io/bbolt/...", "net", "net/http/...", "os/exec"},
}

// anyPackage, as imports.tests, allows every project package.
const anyPackage = "*"

// imports is one row of allowed: space-separated top-level package names.
type imports struct{ code, tests string }

func (im imports) allows(pkg string, isTest bool) bool {
	if slices.Contains(strings.Fields(im.code), pkg) {
		return true
	}
	return isTest && (im.tests == anyPackage || slices.Contains(strings.Fields(im.tests), pkg))
}

// describe says what a package may import, for problem messages.
func (im imports) describe(pkg string) string {
	s := pkg + " may import only " + strings.Join(strings.Fields(im.code), ", ")
	if im.code == "" {
		s = pkg + " may import no project package"
	}
	switch im.tests {
	case "":
	case anyPackage:
		s += " (its _test.go files: anything in the project)"
	default:
		s += " (its _test.go files also: " + strings.Join(strings.Fields(im.tests), ", ") + ")"
	}
	return s
}

// topOf returns the top-level package that a slash-separated path
// relative to the module root belongs to, or false for a file at the root.
func topOf(rel string) (string, bool) {
	top, _, ok := strings.Cut(filepath.ToSlash(rel), "/")
	if !ok || top == "" {
		return "", false
	}
	return top, true
}

// projectPackage returns the top-level package an import path names, or
// false if the path is outside the project.
func projectPackage(path string) (string, bool) {
	rest, ok := strings.CutPrefix(path, module+"/")
	if !ok {
		return "", false
	}
	top, _, _ := strings.Cut(rest, "/")
	return top, top != ""
}

// testSupport reports whether an import path (or a directory) names a
// test-support package: its last path element ends in "test".
func testSupport(imp string) bool { return strings.HasSuffix(path.Base(imp), "test") }

// mayImportTestSupport reports whether the file rel (slash-separated,
// relative to the root) may import a test-support package: it is a test
// file, or in a test-support package, or under an internal/ directory.
func mayImportTestSupport(rel string) bool {
	dir := path.Dir(rel)
	return strings.HasSuffix(rel, "_test.go") || testSupport(dir) || slices.Contains(strings.Split(dir, "/"), "internal")
}

// testSupportWhy is the problem message for an import of a test-support
// package that the table allows but the test-support rule does not.
func testSupportWhy(imp string) string {
	return fmt.Sprintf("%s is test support (its name ends in \"test\"); only _test.go files, test-support packages and files under an internal/ directory import it", strings.TrimPrefix(imp, module+"/"))
}

func inTable(pkg string) bool {
	_, ok := allowed[pkg]
	return ok
}

func matches(pattern, path string) bool {
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return path == base || strings.HasPrefix(path, base+"/")
	}
	return path == pattern
}

// problem is one import that breaks a rule.
type problem struct {
	file, imp string // file relative to the root, slash-separated; import path
	why       string
}

// key is how the tests name a problem: the file and the import, or only
// the file when the file itself is the problem.
func (p problem) key() string {
	if p.imp == "" {
		return p.file
	}
	return p.file + " imports " + p.imp
}

func (p problem) String() string { return p.key() + ": " + p.why }

// check parses the imports of every Go file below root (outside testdata
// and hidden directories; a file at root itself is a problem) and returns
// the imports that break allowed, the test-support rule or forbidden,
// sorted by file and import, and the number of files checked. An import
// that breaks both the table and the test-support rule is reported once,
// under the table.
func check(root string) (problems []problem, checked int, err error) {
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); name == "testdata" || (strings.HasPrefix(name, ".") && path != root) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked++
		from, ok := topOf(rel)
		if !ok {
			problems = append(problems, problem{rel, "", "a Go file at the module root is not in the import table; the project's packages are its top-level directories"})
			return nil
		}
		row, known := allowed[from]
		if !known {
			problems = append(problems, problem{rel, "", fmt.Sprintf("%s/ is not in the import table; add a row for it", from)})
			return nil
		}
		isTest := strings.HasSuffix(rel, "_test.go")
		for _, spec := range f.Imports {
			imp := strings.Trim(spec.Path.Value, "`\"")
			if to, ok := projectPackage(imp); ok {
				switch {
				case to != from && !inTable(to):
					problems = append(problems, problem{rel, imp, fmt.Sprintf("%s/ is not in the import table; %s", to, row.describe(from))})
				case to != from && !row.allows(to, isTest):
					problems = append(problems, problem{rel, imp, row.describe(from)})
				case testSupport(imp) && !mayImportTestSupport(rel):
					problems = append(problems, problem{rel, imp, testSupportWhy(imp)})
				}
				continue
			}
			if isTest {
				continue
			}
			for _, bad := range forbidden[from] {
				if matches(bad, imp) {
					problems = append(problems, problem{rel, imp, fmt.Sprintf("non-test files of %s/ never import %s", from, strings.Join(forbidden[from], ", "))})
					break
				}
			}
		}
		return nil
	})
	sort.Slice(problems, func(i, j int) bool { return problems[i].key() < problems[j].key() })
	return problems, checked, err
}

// TestImportDirection checks the real tree against the table.
func TestImportDirection(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	problems, checked, err := check(root)
	if err != nil {
		t.Fatal(err)
	}
	if checked == 0 {
		t.Fatal("no Go files found under the module root; the walk is broken")
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// TestCheckCatchesViolations runs the checker over a synthetic tree that
// breaks every rule at least once and also holds allowed imports, and
// asserts the exact set of problems, so a checker that passes everything,
// or flags an allowed import, fails here.
func TestCheckCatchesViolations(t *testing.T) {
	root := t.TempDir()
	files := 0
	write := func(rel string, imps ...string) {
		t.Helper()
		name := path.Base(path.Dir(rel))
		if name == "." || strings.HasPrefix(name, ".") {
			name = "main"
		}
		var b strings.Builder
		fmt.Fprintf(&b, "package %s\n\nimport (\n", name)
		for _, imp := range imps {
			fmt.Fprintf(&b, "\t_ %q\n", imp)
		}
		b.WriteString(")\n")
		p := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		files++
	}
	// s names project packages: s("store", "keys") is module/store, module/keys.
	s := func(pkgs ...string) []string {
		var out []string
		for _, p := range pkgs {
			out = append(out, module+"/"+p)
		}
		return out
	}

	// Project imports, for every row of the table: each a.go imports what
	// its package may (no problem) and what it may not (a problem each).
	write("cmd/sotto/a.go", s("ui", "api", "node", "store", "keys", "protocol", "p2p", "mailbox", "internal/testkit")...)
	write("ui/a.go", s("api", "node", "store", "cmd/sotto", "api/apitest")...)
	write("ui/a_test.go", s("node", "store", "api/apitest", "internal/testkit")...) // allowed
	write("api/a.go", s("node", "cmd/sotto", "store", "keys", "protocol", "p2p", "mailbox", "internal/testkit")...)
	write("api/apitest/a.go", s("api", "store")...) // a subdirectory is held to its package's rule
	write("node/a.go", s("mailbox", "p2p", "store", "protocol", "keys", "api", "cmd/sotto", "internal/testkit")...)
	write("node/a_test.go", s("api", "internal/testkit", "p2p/p2ptest")...) // node's tests may not import api
	write("mailbox/a.go", s("p2p", "p2p/p2ptest", "store", "protocol", "keys", "node", "api", "internal/fuzzcorpus")...)
	write("p2p/a.go", s("protocol", "keys", "store", "mailbox", "node", "internal/testkit")...)
	write("p2p/a_test.go", s("store", "internal/testkit")...) // not even from tests
	write("p2p/p2ptest/p2ptest.go", s("p2p", "keys")...)      // allowed: same package
	write("store/a.go", s("protocol", "keys", "node", "p2p", "mailbox", "internal/testkit")...)
	write("protocol/a.go", s("keys", "store", "p2p")...)
	write("protocol/internal/vectors/v.go", s("protocol", "protocol/internal/vectors", "keys")...) // allowed
	write("protocol/a_test.go", s("internal/fuzzcorpus", "protocol")...)                           // allowed
	write("keys/a.go", s("protocol", "internal/fuzzcorpus")...)
	write("keys/a_test.go", s("internal/fuzzcorpus")...) // allowed
	write("invite/a.go", s("keys", "node", "p2p", "store")...)
	write("internal/testkit/a.go", s("keys", "protocol", "store", "p2p", "mailbox", "node", "api", "internal/fuzzcorpus", "cmd/sotto")...)
	write("internal/testkit/a_test.go", s("cmd/sotto")...)
	// Allowed: tests of cmd and api may import anything in the project.
	write("cmd/sotto/a_test.go", s("store", "keys", "protocol", "p2p/p2ptest", "mailbox", "internal/testkit", "api/apitest")...)
	write("api/a_test.go", s("store", "keys", "protocol", "cmd/sotto", "api/apitest", "internal/testkit")...)
	// A package missing from the table, and imports of one.
	write("extra/a.go", s("keys")...)
	write("node/b.go", s("extra")...)

	// Test-support packages (last element ending in "test"): non-test files
	// import them only from such a package or under internal/, even within
	// one top-level package; a table violation is reported once, as such.
	write("cmd/sotto/ts.go", s("api/apitest", "api")...)
	write("p2p/ts.go", s("p2p/p2ptest", "keys/kemtest", "keys")...)
	write("protocol/ts.go", s("keys/kemtest")...)
	write("store/ts.go", s("keys/kemtest", "p2p/p2ptest")...) // the second breaks the table
	write("node/ts.go", s("api/apitest", "p2p/testnet")...)   // the first breaks the table; the second is no test package
	// Allowed: test files, test-support packages, and anything under internal/.
	write("keys/kemtest/kemtest.go", s("keys")...)
	write("protocol/internal/vectors/kem.go", s("keys/kemtest")...)
	write("p2p/p2ptest/ts.go", s("keys/kemtest", "p2p/p2ptest")...)
	write("protocol/internal/vectorgen/main.go", s("protocol/internal/vectors", "keys/kemtest")...)
	write("internal/testkit/ts.go", s("keys/kemtest", "p2p/p2ptest", "api/apitest")...)
	write("keys/ts_test.go", s("keys/kemtest")...)
	write("protocol/ts_test.go", s("keys/kemtest")...)
	write("p2p/ts_test.go", s("p2p/p2ptest", "keys/kemtest")...)

	// Forbidden outside imports, in non-test files; allowed in tests.
	write("keys/out.go", "github.com/libp2p/go-libp2p/core/peer", "go.etcd.io/bbolt", "net", "net/http", "net/netip", "crypto/rand")
	write("keys/out_test.go", "github.com/libp2p/go-libp2p", "go.etcd.io/bbolt", "net", "net/http")
	write("protocol/out.go", "github.com/libp2p/go-libp2p", "go.etcd.io/bbolt/errors", "net", "net/http", "os/exec", "net/url")
	write("protocol/out_test.go", "os/exec", "net")
	write("store/out.go", "github.com/libp2p/go-libp2p/core/peer", "net/http/httptest", "go.etcd.io/bbolt", "net", "os/exec")
	write("p2p/out.go", "go.etcd.io/bbolt", "net/http", "github.com/libp2p/go-libp2p", "net")
	write("p2p/out_test.go", "go.etcd.io/bbolt", "net/http")
	write("mailbox/out.go", "net/http", "go.etcd.io/bbolt", "github.com/libp2p/go-libp2p-pubsub")
	write("node/out.go", "net/http", "go.etcd.io/bbolt", "os/exec")
	write("cmd/sotto/out.go", "net/http", "os/exec", "go.etcd.io/bbolt")
	// Skipped: testdata and hidden directories. A file at the module root
	// is a problem.
	write("keys/testdata/x.go", s("node")...)
	write(".git/x.go", s("node")...)
	write("main.go", s("node")...)
	skipped := 2

	problems, checked, err := check(root)
	if err != nil {
		t.Fatal(err)
	}
	if checked != files-skipped {
		t.Errorf("checked %d files, want %d", checked, files-skipped)
	}

	m := module + "/"
	want := []string{
		// ui: api only, and no test support outside tests.
		"ui/a.go imports " + m + "node",
		"ui/a.go imports " + m + "store",
		"ui/a.go imports " + m + "cmd/sotto",
		"ui/a.go imports " + m + "api/apitest",
		// cmd: non-test files import ui, api and node only.
		"cmd/sotto/a.go imports " + m + "internal/testkit",
		"cmd/sotto/a.go imports " + m + "keys",
		"cmd/sotto/a.go imports " + m + "mailbox",
		"cmd/sotto/a.go imports " + m + "p2p",
		"cmd/sotto/a.go imports " + m + "protocol",
		"cmd/sotto/a.go imports " + m + "store",
		// api: node only; never cmd.
		"api/a.go imports " + m + "cmd/sotto",
		"api/a.go imports " + m + "internal/testkit",
		"api/a.go imports " + m + "keys",
		"api/a.go imports " + m + "mailbox",
		"api/a.go imports " + m + "p2p",
		"api/a.go imports " + m + "protocol",
		"api/a.go imports " + m + "store",
		"api/apitest/a.go imports " + m + "store",
		// node: never api or cmd; internal only from tests; tests get no more.
		"node/a.go imports " + m + "api",
		"node/a.go imports " + m + "cmd/sotto",
		"node/a.go imports " + m + "internal/testkit",
		"node/a_test.go imports " + m + "api",
		"node/b.go imports " + m + "extra",
		// mailbox: never node or api.
		"mailbox/a.go imports " + m + "api",
		"mailbox/a.go imports " + m + "internal/fuzzcorpus",
		"mailbox/a.go imports " + m + "node",
		// p2p: never store (not even from tests), mailbox or node.
		"p2p/a.go imports " + m + "internal/testkit",
		"p2p/a.go imports " + m + "mailbox",
		"p2p/a.go imports " + m + "node",
		"p2p/a.go imports " + m + "store",
		"p2p/a_test.go imports " + m + "store",
		// store: never node, p2p or mailbox.
		"store/a.go imports " + m + "internal/testkit",
		"store/a.go imports " + m + "mailbox",
		"store/a.go imports " + m + "node",
		"store/a.go imports " + m + "p2p",
		// protocol: keys only.
		"protocol/a.go imports " + m + "p2p",
		"protocol/a.go imports " + m + "store",
		// keys: nothing.
		"keys/a.go imports " + m + "internal/fuzzcorpus",
		"keys/a.go imports " + m + "protocol",
		// invite: keys only.
		"invite/a.go imports " + m + "node",
		"invite/a.go imports " + m + "p2p",
		"invite/a.go imports " + m + "store",
		// internal: never cmd.
		"internal/testkit/a.go imports " + m + "cmd/sotto",
		"internal/testkit/a_test.go imports " + m + "cmd/sotto",
		// A directory missing from the table, and the module root.
		"extra/a.go",
		"main.go",
		// Test-support packages imported by non-test files.
		"mailbox/a.go imports " + m + "p2p/p2ptest",
		"cmd/sotto/ts.go imports " + m + "api/apitest",
		"p2p/ts.go imports " + m + "p2p/p2ptest",
		"p2p/ts.go imports " + m + "keys/kemtest",
		"protocol/ts.go imports " + m + "keys/kemtest",
		"store/ts.go imports " + m + "keys/kemtest",
		"store/ts.go imports " + m + "p2p/p2ptest", // the table's problem
		"node/ts.go imports " + m + "api/apitest",  // the table's problem
		// Outside imports.
		"keys/out.go imports github.com/libp2p/go-libp2p/core/peer",
		"keys/out.go imports go.etcd.io/bbolt",
		"keys/out.go imports net",
		"keys/out.go imports net/http",
		"protocol/out.go imports github.com/libp2p/go-libp2p",
		"protocol/out.go imports go.etcd.io/bbolt/errors",
		"protocol/out.go imports net",
		"protocol/out.go imports net/http",
		"protocol/out.go imports os/exec",
		"store/out.go imports github.com/libp2p/go-libp2p/core/peer",
		"store/out.go imports net/http/httptest",
		"p2p/out.go imports go.etcd.io/bbolt",
		"p2p/out.go imports net/http",
		"mailbox/out.go imports net/http",
	}
	var got []string
	for _, p := range problems {
		got = append(got, p.key())
	}
	sort.Strings(got)
	sort.Strings(want)
	for i := 1; i < len(got); i++ {
		if got[i] == got[i-1] {
			t.Errorf("problem reported twice: %s", got[i])
		}
	}
	if !slices.Equal(got, want) {
		for _, g := range got {
			if !slices.Contains(want, g) {
				t.Errorf("unexpected problem: %s", g)
			}
		}
		for _, w := range want {
			if !slices.Contains(got, w) {
				t.Errorf("missing problem: %s", w)
			}
		}
	}

	// Each message names the file, the import, and what the package may
	// import (for an outside import: what it must never import; for a
	// test-support package the table allows: who may import it).
	for _, p := range problems {
		s := p.String()
		from, _ := topOf(p.file)
		if !strings.HasPrefix(s, p.key()+": ") || (p.imp == "" && inTable(from)) {
			t.Errorf("message %q does not start with the file and import", s)
		}
		to, project := projectPackage(p.imp)
		byTable := to == from || (inTable(from) && inTable(to) && allowed[from].allows(to, strings.HasSuffix(p.file, "_test.go")))
		switch {
		case !inTable(from):
		case project && byTable:
			if !testSupport(p.imp) || !strings.HasSuffix(s, ": "+testSupportWhy(p.imp)) {
				t.Errorf("message %q does not say who may import a test-support package", s)
			}
		case project && !strings.Contains(s, from+" may import "):
			t.Errorf("message %q does not say what %s may import", s, from)
		case !project && !strings.Contains(s, "non-test files of "+from+"/ never import "+strings.Join(forbidden[from], ", ")):
			t.Errorf("message %q does not say what %s must never import", s, from)
		}
	}
	for _, tc := range []struct{ key, want string }{
		{"p2p/a.go imports " + m + "store", "p2p may import only protocol, keys (its _test.go files also: internal)"},
		{"cmd/sotto/a.go imports " + m + "store", "cmd may import only ui, api, node (its _test.go files: anything in the project)"},
		{"keys/a.go imports " + m + "protocol", "keys may import no project package (its _test.go files also: internal)"},
		{"mailbox/out.go imports net/http", "non-test files of mailbox/ never import net/http/..."},
		{"extra/a.go", "extra/ is not in the import table"},
		{"protocol/ts.go imports " + m + "keys/kemtest", `keys/kemtest is test support (its name ends in "test"); only _test.go files, test-support packages and files under an internal/ directory import it`},
		{"node/ts.go imports " + m + "api/apitest", "node may import only mailbox, p2p, store, invite, protocol, keys (its _test.go files also: internal)"},
	} {
		i := slices.IndexFunc(problems, func(p problem) bool { return p.key() == tc.key })
		if i < 0 {
			continue // reported above
		}
		if s := problems[i].String(); !strings.Contains(s, tc.want) {
			t.Errorf("message %q does not contain %q", s, tc.want)
		}
	}
}

// TestTable checks the table itself: every package it names has a row,
// the graph of non-test imports has no cycle, the edges named in the
// package doc hold, and forbidden names only packages in the table.
func TestTable(t *testing.T) {
	for from, row := range allowed {
		for _, to := range strings.Fields(row.code + " " + row.tests) {
			if to == anyPackage {
				continue
			}
			if _, ok := allowed[to]; !ok {
				t.Errorf("allowed[%q] names %q, which has no row", from, to)
			}
			if to == from {
				t.Errorf("allowed[%q] names itself", from)
			}
		}
	}
	for from := range forbidden {
		if _, ok := allowed[from]; !ok {
			t.Errorf("forbidden[%q] has no row in allowed", from)
		}
	}
	// Depth-first search for a cycle over non-test edges.
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(string, []string)
	visit = func(p string, path []string) {
		switch state[p] {
		case 1:
			t.Errorf("import cycle: %s → %s", strings.Join(path, " → "), p)
			return
		case 2:
			return
		}
		state[p] = 1
		for _, to := range strings.Fields(allowed[p].code) {
			visit(to, append(path, p))
		}
		state[p] = 2
	}
	for _, p := range sortedKeys(allowed) {
		visit(p, nil)
	}
	for _, tc := range []struct {
		from, to string
		isTest   bool
		want     bool
	}{
		{"cmd", "api", false, true},
		{"cmd", "ui", false, true},
		{"ui", "api", false, true},
		{"ui", "node", false, false},
		{"ui", "store", false, false},
		{"ui", "node", true, true},
		{"api", "ui", false, false},
		{"cmd", "node", false, true},
		{"cmd", "store", false, false},
		{"cmd", "store", true, true},
		{"api", "node", false, true},
		{"api", "keys", false, false},
		{"api", "cmd", true, true},
		{"node", "mailbox", false, true},
		{"node", "store", false, true},
		{"node", "api", true, false},
		{"mailbox", "p2p", false, true},
		{"mailbox", "store", false, true},
		{"mailbox", "node", false, false},
		{"p2p", "store", false, false},
		{"p2p", "store", true, false},
		{"p2p", "mailbox", false, false},
		{"store", "protocol", false, true},
		{"store", "p2p", false, false},
		{"protocol", "keys", false, true},
		{"protocol", "store", false, false},
		{"keys", "protocol", false, false},
		{"keys", "internal", false, false},
		{"keys", "internal", true, true},
		{"internal", "api", false, true},
		{"internal", "cmd", false, false},
	} {
		if got := allowed[tc.from].allows(tc.to, tc.isTest); got != tc.want {
			t.Errorf("%s → %s (test file: %v) allowed = %v, want %v", tc.from, tc.to, tc.isTest, got, tc.want)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func TestTopOf(t *testing.T) {
	for _, tc := range []struct {
		rel  string
		want string
		ok   bool
	}{
		{"cmd/sotto/main.go", "cmd", true},
		{"api/apitest/backend.go", "api", true},
		{"keys/x25519.go", "keys", true},
		{"p2p/p2ptest/p2ptest.go", "p2p", true},
		{"mailbox/client.go", "mailbox", true},
		{"protocol/internal/vectorgen/main.go", "protocol", true},
		{"internal/importgraph/importgraph_test.go", "internal", true},
		{"main.go", "", false},
	} {
		got, ok := topOf(tc.rel)
		if got != tc.want || ok != tc.ok {
			t.Errorf("topOf(%q) = %q, %v; want %q, %v", tc.rel, got, ok, tc.want, tc.ok)
		}
	}
}

func TestProjectPackage(t *testing.T) {
	for _, tc := range []struct {
		path string
		want string
		ok   bool
	}{
		{module + "/p2p", "p2p", true},
		{module + "/p2p/p2ptest", "p2p", true},
		{module + "/protocol/internal/vectors", "protocol", true},
		{module + "/internal/testkit", "internal", true},
		{module, "", false},
		{module + "x/keys", "", false},
		{"github.com/libp2p/go-libp2p", "", false},
		{"net/http", "", false},
	} {
		got, ok := projectPackage(tc.path)
		if got != tc.want || ok != tc.ok {
			t.Errorf("projectPackage(%q) = %q, %v; want %q, %v", tc.path, got, ok, tc.want, tc.ok)
		}
	}
}

func TestTestSupport(t *testing.T) {
	for _, tc := range []struct {
		path string
		want bool
	}{
		{module + "/keys/kemtest", true},
		{module + "/p2p/p2ptest", true},
		{module + "/api/apitest", true},
		{module + "/internal/testkit", false},
		{module + "/p2p/testnet", false},
		{module + "/p2p", false},
	} {
		if got := testSupport(tc.path); got != tc.want {
			t.Errorf("testSupport(%q) = %v, want %v", tc.path, got, tc.want)
		}
	}
	for _, tc := range []struct {
		rel  string
		want bool
	}{
		{"p2p/a.go", false},
		{"mailbox/client.go", false},
		{"node/internalx/a.go", false},
		{"p2p/a_test.go", true},
		{"p2p/p2ptest/p2ptest.go", true},
		{"keys/kemtest/kemtest.go", true},
		{"protocol/internal/vectors/vectors.go", true},
		{"protocol/internal/vectorgen/main.go", true},
		{"internal/testkit/testkit.go", true},
	} {
		if got := mayImportTestSupport(tc.rel); got != tc.want {
			t.Errorf("mayImportTestSupport(%q) = %v, want %v", tc.rel, got, tc.want)
		}
	}
}

func TestMatches(t *testing.T) {
	for _, tc := range []struct {
		pattern, path string
		want          bool
	}{
		{"net", "net", true},
		{"net", "net/netip", false},
		{"net", "network", false},
		{"net/http/...", "net/http", true},
		{"net/http/...", "net/http/httptest", true},
		{"net/http/...", "net/httpx", false},
		{"github.com/libp2p/...", "github.com/libp2p/go-libp2p-pubsub", true},
		{"github.com/libp2p/...", "github.com/libp2p", true},
		{"go.etcd.io/bbolt/...", "go.etcd.io/bbolt/errors", true},
		{"go.etcd.io/bbolt/...", "go.etcd.io/bboltx", false},
		{"os/exec", "os/exec", true},
		{"os/exec", "os", false},
	} {
		if got := matches(tc.pattern, tc.path); got != tc.want {
			t.Errorf("matches(%q, %q) = %v, want %v", tc.pattern, tc.path, got, tc.want)
		}
	}
}
