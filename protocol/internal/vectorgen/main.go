// Command vectorgen writes the session layer's known-answer vectors:
//
//	go run ./protocol/internal/vectorgen -out protocol/testdata
//
// writes protocol/testdata/session/*.txt. The vectors are deterministic;
// the protocol tests regenerate them and compare.
package main

import (
	"flag"
	"log"
	"os"
	"path/filepath"

	"github.com/sotto-im/sotto/protocol/internal/vectors"
)

func main() {
	out := flag.String("out", "protocol/testdata", "testdata directory to write the session vectors under")
	flag.Parse()
	files, err := vectors.Generate()
	if err != nil {
		log.Fatalf("vectorgen: %v", err)
	}
	dir := filepath.Join(*out, "session")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Fatalf("vectorgen: %v", err)
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.Name), f.Encode(), 0o644); err != nil {
			log.Fatalf("vectorgen: %v", err)
		}
	}
	log.Printf("vectorgen: wrote %d vectors to %s", len(files), dir)
}
