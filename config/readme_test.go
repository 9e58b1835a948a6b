package config

import (
	"os"
	"strings"
	"testing"
)

// The README's settings table is MarkdownTable's output, so the front door
// never drifts from the code. Regenerate it with
// GATEWAY_UPDATE_README=1 go test ./config -run README.
func TestREADMEListsEverySetting(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatalf("read README: %v", err)
	}
	table := MarkdownTable()
	start := strings.Index(string(readme), "| variable | default | meaning |")
	if start < 0 {
		t.Fatalf("README has no settings table")
	}
	end := start + strings.Index(string(readme[start:]), "\n\n") + 1
	if got := string(readme[start:end]); got != table {
		if os.Getenv("GATEWAY_UPDATE_README") != "" {
			updated := string(readme[:start]) + table + string(readme[end:])
			if err := os.WriteFile("../README.md", []byte(updated), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Fatalf("README settings table is out of date; run GATEWAY_UPDATE_README=1 go test ./config -run README\n got:\n%s\nwant:\n%s", got, table)
	}
	for _, s := range Settings() {
		if s.Help == "" || s.Var == "" {
			t.Errorf("setting %+v lacks a variable or help text", s)
		}
	}
}
