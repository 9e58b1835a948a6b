package config

import (
	"reflect"
	"strings"
)

// Setting describes one environment variable, from Config's struct tags.
type Setting struct {
	Var      string
	Default  string // "" when there is none
	Help     string
	Required bool
	Secret   bool // never printed
}

// Settings lists every setting in declaration order.
func Settings() []Setting {
	typ := reflect.TypeFor[Config]()
	out := make([]Setting, 0, typ.NumField())
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("env"), ",")
		out = append(out, Setting{
			Var:      name,
			Default:  f.Tag.Get("envDefault"),
			Help:     f.Tag.Get("help"),
			Required: strings.Contains(opts, "notEmpty"),
			Secret:   f.Tag.Get("secret") == "true",
		})
	}
	return out
}

// MarkdownTable renders Settings as the README's table.
func MarkdownTable() string {
	var b strings.Builder
	b.WriteString("| variable | default | meaning |\n|---|---|---|\n")
	for _, s := range Settings() {
		def := "`" + s.Default + "`"
		switch {
		case s.Required:
			def = "(required)"
		case s.Default == "":
			def = "(none)"
		}
		help := strings.ReplaceAll(s.Help, "|", "\\|")
		b.WriteString("| `" + s.Var + "` | " + def + " | " + help + " |\n")
	}
	return b.String()
}
