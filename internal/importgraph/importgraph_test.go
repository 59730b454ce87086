package importgraph

import (
	"fmt"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/sotto-im/sotto"

// layers lists the project's packages from the top down. A package may
// import only packages in layers below its own.
var layers = []string{"cmd", "api", "node", "store", "protocol", "keys"}

// forbidden lists, per layer, imports that are never allowed there even
// though they are outside the project: keys/ and protocol/ are pure.
var forbidden = map[string][]string{
	"keys":     {"github.com/libp2p/", "go.etcd.io/bbolt", "net", "net/http"},
	"protocol": {"github.com/libp2p/", "go.etcd.io/bbolt", "net", "net/http", "os/exec"},
	"store":    {"github.com/libp2p/", "net/http"},
}

func layerOf(rel string) (int, bool) {
	top := strings.SplitN(filepath.ToSlash(rel), "/", 2)[0]
	for i, l := range layers {
		if l == top {
			return i, true
		}
	}
	return 0, false
}

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
		t.Fatal("no Go files found under the layered packages; the walk is broken")
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// TestCheckCatchesViolations runs the checker over a synthetic tree, so a
// checker that silently passes everything fails here.
func TestCheckCatchesViolations(t *testing.T) {
	root := t.TempDir()
	write := func(rel, src string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("keys/a.go", "package keys\nimport _ \""+module+"/store\"\n")
	write("protocol/b.go", "package protocol\nimport _ \"go.etcd.io/bbolt\"\n")
	write("protocol/c_test.go", "package protocol\nimport _ \"net\"\n")
	write("node/d.go", "package node\nimport (_ \""+module+"/store\"; _ \""+module+"/keys\")\n")
	write("store/e.go", "package store\nimport _ \""+module+"/node\"\n")
	problems, checked, err := check(root)
	if err != nil {
		t.Fatal(err)
	}
	if checked != 5 {
		t.Errorf("checked %d files, want 5", checked)
	}
	want := []string{"keys/a.go imports " + module + "/store", "protocol/b.go imports go.etcd.io/bbolt", "store/e.go imports " + module + "/node"}
	if len(problems) != len(want) {
		t.Fatalf("problems = %q, want %d of them", problems, len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(problems[i], w) {
			t.Errorf("problem %d = %q, want prefix %q", i, problems[i], w)
		}
	}
}

func check(root string) (problems []string, checked int, err error) {
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
		rel, _ := filepath.Rel(root, path)
		from, ok := layerOf(rel)
		if !ok {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked++
		isTest := strings.HasSuffix(path, "_test.go")
		for _, imp := range f.Imports {
			p := strings.Trim(imp.Path.Value, `"`)
			if strings.HasPrefix(p, module+"/") {
				to, ok := layerOf(strings.TrimPrefix(p, module+"/"))
				if ok && to <= from && layers[to] != layers[from] {
					problems = append(problems, fmt.Sprintf("%s imports %s: %s may import only %v", rel, p, layers[from], layers[from+1:]))
				}
				continue
			}
			if isTest {
				continue
			}
			for _, bad := range forbidden[layers[from]] {
				if p == bad || (strings.HasSuffix(bad, "/") && strings.HasPrefix(p, bad)) {
					problems = append(problems, fmt.Sprintf("%s imports %s, which %s/ must never use", rel, p, layers[from]))
				}
			}
		}
		return nil
	})
	return problems, checked, err
}

func TestLayerOf(t *testing.T) {
	for _, tc := range []struct {
		rel  string
		want string
	}{
		{"cmd/sotto/main.go", "cmd"},
		{"keys/x25519.go", "keys"},
		{"protocol/internal/vectorgen/main.go", "protocol"},
	} {
		i, ok := layerOf(tc.rel)
		if !ok || layers[i] != tc.want {
			t.Errorf("layerOf(%q) = %v, %v; want %s", tc.rel, i, ok, tc.want)
		}
	}
	if _, ok := layerOf("internal/importgraph/x.go"); ok {
		t.Error("internal/ is not a layer")
	}
}
