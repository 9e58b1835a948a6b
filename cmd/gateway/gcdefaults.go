package main

import (
	"runtime/debug"
	"strings"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// containerGC sets the garbage collector up for a container, where the
// standard GOMEMLIMIT and GOGC do not say otherwise. (GOMAXPROCS needs
// nothing: since Go 1.25 the runtime follows the cgroup's CPU limit.)
//
// With a cgroup memory limit, the soft memory limit is 90% of it (the rest
// is for stacks, the kernel's socket buffers and slack), so the collector
// works harder as the heap nears the limit instead of the process being
// killed for crossing it; automemlimit reads the cgroup (v1 or v2) and
// leaves a GOMEMLIMIT the operator set alone.
func containerGC(environ []string) {
	limit, _ := memlimit.SetGoMemLimitWithOpts(memlimit.WithRatio(0.9))
	if p := defaultGCPercent(limit, environ); p > 0 {
		debug.SetGCPercent(p)
	}
}

// defaultGOGC applies when a memory limit was set from the cgroup: with
// that limit as a backstop, collecting half as often spends memory the
// container has and saves CPU in fan-out bursts.
const defaultGOGC = 200

// defaultGCPercent is the GOGC to set: defaultGOGC when the memory limit
// came from the cgroup (limit > 0) and GOGC is not set, else 0 (leave it).
func defaultGCPercent(limit int64, environ []string) int {
	if limit <= 0 {
		return 0
	}
	for _, kv := range environ {
		if strings.HasPrefix(kv, "GOGC=") {
			return 0
		}
	}
	return defaultGOGC
}
