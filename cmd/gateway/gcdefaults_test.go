package main

import "testing"

// GOGC is raised only when a memory limit from the cgroup backs it, and
// never over the operator's own GOGC.
func TestDefaultGCPercent(t *testing.T) {
	for _, c := range []struct {
		name    string
		limit   int64
		environ []string
		want    int
	}{
		{"limit from the cgroup", 1 << 30, []string{"PATH=/bin"}, defaultGOGC},
		{"no limit", 0, nil, 0},
		{"GOGC set", 1 << 30, []string{"GOGC=50"}, 0},
		{"GOGC only a prefix of another variable", 1 << 30, []string{"GOGCX=1"}, defaultGOGC},
	} {
		if got := defaultGCPercent(c.limit, c.environ); got != c.want {
			t.Errorf("%s: defaultGCPercent = %d, want %d", c.name, got, c.want)
		}
	}
}
