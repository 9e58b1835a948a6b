package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// userHZ is the unit of utime and stime in /proc/<pid>/stat: USER_HZ,
// 100 on every Linux architecture Go supports.
const userHZ = 100

// procSample is a process's CPU time and resident memory at one moment.
type procSample struct {
	cpu   time.Duration // user + system
	sys   time.Duration // system: the kernel's work on the process's behalf
	rss   int64         // KiB
	start uint64        // start time in ticks: tells a restarted process apart
}

// sampleProc reads /proc/<pid>/stat and /proc/<pid>/status.
func sampleProc(pid int) (procSample, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procSample{}, fmt.Errorf("read process stats: %w", err)
	}
	// The command name (field 2) may hold spaces; fields count from after it.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return procSample{}, errors.New("read process stats: no command name")
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 20 {
		return procSample{}, errors.New("read process stats: too few fields")
	}
	utime, _ := strconv.ParseUint(f[11], 10, 64) // field 14
	stime, _ := strconv.ParseUint(f[12], 10, 64) // field 15
	start, _ := strconv.ParseUint(f[19], 10, 64) // field 22
	s := procSample{cpu: time.Duration(utime+stime) * time.Second / userHZ, sys: time.Duration(stime) * time.Second / userHZ, start: start}

	status, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procSample{}, fmt.Errorf("read process status: %w", err)
	}
	defer status.Close()
	sc := bufio.NewScanner(status)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			s.rss, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return s, sc.Err()
}

// selfCPU is the tool's own CPU time (getrusage), to tell a saturated
// load tool from a slow gateway.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pidByPort finds the process listening on a local TCP port: the socket's
// inode from /proc/net/tcp{,6}, then the process holding it. It sees only
// processes the tool may inspect (its own user's, or all as root).
func pidByPort(port int) (int, error) {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 || fs[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, hexPort, _ := strings.Cut(fs[1], ":")
			if p, err := strconv.ParseInt(hexPort, 16, 32); err == nil && int(p) == port {
				inodes["socket:["+fs[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return 0, fmt.Errorf("find the gateway's process: nothing listens on port %d here", port)
	}
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && inodes[target] {
			return strconv.Atoi(strings.Split(fd, "/")[2])
		}
	}
	return 0, fmt.Errorf("find the gateway's process: port %d is not held by a process this user may inspect (pass -pid)", port)
}

// loadAvg is the machine's one-minute load average ("" when unknown): a
// run on a busy machine measures the machine as much as the gateway.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return ""
	}
	return f[0]
}
