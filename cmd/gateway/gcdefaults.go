package main

import (
	"bufio"
	"bytes"
	"io/fs"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
)

// gcDefaults are the garbage collector's settings for a container, when
// the standard GOMEMLIMIT and GOGC do not say otherwise. (GOMAXPROCS needs
// nothing: since Go 1.25 the runtime follows the cgroup's CPU limit.)
//
// With a cgroup memory limit, the soft memory limit is 90% of it, so the
// collector works harder as the heap nears the limit instead of the
// process being killed for crossing it; and GOGC is 200: with that limit
// as a backstop, collecting half as often spends memory the container has
// and saves CPU in fan-out bursts. Without a cgroup limit, Go's defaults
// stay.
type gcDefaults struct {
	memLimit  int64 // bytes; 0: leave it
	gcPercent int   // 0: leave it
}

// memLimitShare is the part of the cgroup's memory the Go heap may plan for;
// the rest is for stacks outside it, the kernel's socket buffers and slack.
const memLimitShare = 0.9

// defaultGOGC applies when a memory limit was set from the cgroup.
const defaultGOGC = 200

// gcDefaultsFor works the settings out from the environment and the
// filesystem root (the cgroup files are read from sys/fs/cgroup).
func gcDefaultsFor(environ []string, root fs.FS) gcDefaults {
	env := map[string]bool{}
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		env[k] = true
	}
	var d gcDefaults
	if env["GOMEMLIMIT"] {
		return d // the operator's limit; GOGC as they set it, or Go's
	}
	limit := cgroupMemoryLimit(root)
	if limit <= 0 {
		return d
	}
	d.memLimit = int64(float64(limit) * memLimitShare)
	if !env["GOGC"] {
		d.gcPercent = defaultGOGC
	}
	return d
}

// apply sets them in the runtime.
func (d gcDefaults) apply() {
	if d.memLimit > 0 {
		debug.SetMemoryLimit(d.memLimit)
	}
	if d.gcPercent > 0 {
		debug.SetGCPercent(d.gcPercent)
	}
}

// cgroupMemoryLimit returns the memory limit of this process's cgroup, in
// bytes, or 0 when there is none (or it cannot be read): cgroup v2's
// memory.max in the process's own cgroup or at the root of the hierarchy
// (a container's view), else cgroup v1's memory.limit_in_bytes.
func cgroupMemoryLimit(root fs.FS) int64 {
	dirs := []string{"sys/fs/cgroup"}
	if b, err := fs.ReadFile(root, "proc/self/cgroup"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok && p != "/" {
				dirs = append([]string{path.Join("sys/fs/cgroup", p)}, dirs...)
			}
		}
	}
	for _, dir := range dirs {
		if n, ok := readLimit(root, path.Join(dir, "memory.max")); ok {
			return n
		}
	}
	n, _ := readLimit(root, "sys/fs/cgroup/memory/memory.limit_in_bytes")
	return n
}

// readLimit reads a limit file: a number of bytes, or "max" (none). v1
// says "none" with a number near 2^63.
func readLimit(root fs.FS, name string) (int64, bool) {
	b, err := fs.ReadFile(root, name)
	if err != nil {
		return 0, false
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, true
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n >= 1<<60 {
		return 0, true
	}
	return n, true
}
