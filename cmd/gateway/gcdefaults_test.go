package main

import (
	"testing"
	"testing/fstest"
)

func TestGCDefaults(t *testing.T) {
	t.Parallel()
	const gib = 1 << 30
	v2 := fstest.MapFS{"sys/fs/cgroup/memory.max": {Data: []byte("1073741824\n")}}
	nested := fstest.MapFS{
		"proc/self/cgroup": {Data: []byte("0::/system.slice/gw.service\n")},
		"sys/fs/cgroup/system.slice/gw.service/memory.max": {Data: []byte("2147483648\n")},
		"sys/fs/cgroup/memory.max":                         {Data: []byte("max\n")},
	}
	for _, c := range []struct {
		name    string
		environ []string
		root    fstest.MapFS
		want    gcDefaults
	}{
		{"cgroup v2 limit", nil, v2, gcDefaults{memLimit: share(gib), gcPercent: defaultGOGC}},
		{"the process's own cgroup", nil, nested, gcDefaults{memLimit: share(2 * gib), gcPercent: defaultGOGC}},
		{"no limit", nil, fstest.MapFS{"sys/fs/cgroup/memory.max": {Data: []byte("max\n")}}, gcDefaults{}},
		{"no cgroup files", nil, fstest.MapFS{}, gcDefaults{}},
		{"cgroup v1 limit", nil, fstest.MapFS{"sys/fs/cgroup/memory/memory.limit_in_bytes": {Data: []byte("536870912\n")}},
			gcDefaults{memLimit: share(gib / 2), gcPercent: defaultGOGC}},
		{"cgroup v1 without a limit", nil, fstest.MapFS{"sys/fs/cgroup/memory/memory.limit_in_bytes": {Data: []byte("9223372036854771712\n")}}, gcDefaults{}},
		{"GOMEMLIMIT set: nothing", []string{"GOMEMLIMIT=300MiB"}, v2, gcDefaults{}},
		{"GOGC set: the limit only", []string{"GOGC=50"}, v2, gcDefaults{memLimit: share(gib)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := gcDefaultsFor(c.environ, c.root); got != c.want {
				t.Fatalf("gcDefaultsFor: %+v, want %+v", got, c.want)
			}
		})
	}
}

func share(n int64) int64 { return int64(float64(n) * memLimitShare) }
