package config

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// The README's settings table must list every variable, with its default,
// so the front door never drifts from the code.
func TestREADMEListsEverySetting(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatalf("read README: %v", err)
	}
	rows := map[string]string{}
	for line := range strings.SplitSeq(string(readme), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) > 3 && strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			rows[strings.Trim(strings.TrimSpace(cells[1]), "`")] = strings.Trim(strings.TrimSpace(cells[2]), "`")
		}
	}
	typ := reflect.TypeFor[Config]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		def, ok := rows[name]
		if !ok {
			t.Errorf("README has no row for %s", name)
			continue
		}
		if want := f.Tag.Get("envDefault"); want != "" && def != want {
			t.Errorf("README default of %s is %q, code says %q", name, def, want)
		}
		if f.Tag.Get("help") == "" {
			t.Errorf("field %s has no help tag", f.Name)
		}
	}
}
