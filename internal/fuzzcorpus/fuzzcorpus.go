// Package fuzzcorpus keeps the committed seed corpora of fuzz targets
// true to the code: a package lists its seeds (real encodings and edge
// cases made by its own code), and Check compares them with the files in
// testdata/fuzz, or writes them. It is used by the tests of keys and
// protocol.
package fuzzcorpus

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Seed is one seed file of a fuzz target: testdata/fuzz/<target>/seed-<Name>,
// holding Args in Go's corpus format.
type Seed struct {
	Name string
	Args []any
}

// encode writes args in Go's fuzz corpus format.
func encode(tb testing.TB, args []any) []byte {
	var b bytes.Buffer
	b.WriteString("go test fuzz v1\n")
	for _, a := range args {
		switch v := a.(type) {
		case []byte:
			fmt.Fprintf(&b, "[]byte(%q)\n", v)
		case byte:
			fmt.Fprintf(&b, "byte(%q)\n", v)
		case bool, uint32:
			fmt.Fprintf(&b, "%T(%v)\n", v, v)
		default:
			tb.Fatalf("corpus value of type %T", a)
		}
	}
	return b.Bytes()
}

// targets lists the fuzz targets declared in the package's test files.
func targets(tb testing.TB) []string {
	fset := token.NewFileSet()
	files, err := filepath.Glob("*_test.go")
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			tb.Fatal(err)
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if ok && fn.Recv == nil && strings.HasPrefix(fn.Name.Name, "Fuzz") && len(fn.Type.Params.List) == 1 {
				if star, ok := fn.Type.Params.List[0].Type.(*ast.StarExpr); ok {
					if sel, ok := star.X.(*ast.SelectorExpr); ok && sel.Sel.Name == "F" {
						out = append(out, fn.Name.Name)
					}
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// Check compares the seed files of the package under test (in its
// testdata/fuzz/<target>/seed-<name>) with seeds, or with update writes
// them, and checks that every fuzz target declared in the package's test
// files has a corpus and that every file in it is in Go's corpus format.
// Files with other names (inputs the fuzzer found, kept as regression
// tests) are left alone.
func Check(t *testing.T, seeds map[string][]Seed, update bool) {
	t.Helper()
	found := targets(t)
	if len(found) == 0 {
		t.Fatal("no fuzz targets found")
	}
	for target := range seeds {
		if !slices.Contains(found, target) {
			t.Errorf("seeds for %s, which is not a fuzz target", target)
		}
	}
	for _, target := range found {
		dir := filepath.Join("testdata", "fuzz", target)
		want := map[string][]byte{}
		for _, s := range seeds[target] {
			name := "seed-" + s.Name
			if _, dup := want[name]; dup {
				t.Fatalf("%s: two seeds named %s", target, name)
			}
			want[name] = encode(t, s.Args)
		}
		if len(want) == 0 {
			t.Errorf("%s has no generated seeds", target)
			continue
		}
		if update {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			old, _ := filepath.Glob(filepath.Join(dir, "seed-*"))
			for _, p := range old {
				if _, keep := want[filepath.Base(p)]; !keep {
					os.Remove(p)
				}
			}
			for name, b := range want {
				if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Errorf("%s: no seed corpus: %v", target, err)
			continue
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(b, []byte("go test fuzz v1\n")) {
				t.Errorf("%s/%s is not a corpus file", target, e.Name())
			}
			if w, ok := want[e.Name()]; ok {
				if !bytes.Equal(b, w) {
					t.Errorf("%s/%s differs from the generated seed; regenerate with -update-fuzz-corpus", target, e.Name())
				}
				delete(want, e.Name())
			} else if strings.HasPrefix(e.Name(), "seed-") {
				t.Errorf("%s/%s is no longer generated; regenerate with -update-fuzz-corpus", target, e.Name())
			}
		}
		for name := range want {
			t.Errorf("%s/%s is missing; regenerate with -update-fuzz-corpus", target, name)
		}
	}
}
