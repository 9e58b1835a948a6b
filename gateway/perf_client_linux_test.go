package gateway

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// processCPU is the CPU time, user and system, of process pid and all its
// threads so far, from /proc (in the kernel's ticks of 10 ms: benchmarks
// read it over seconds). The client process's CPU is reported beside the
// server's because on loopback some of a delivery's kernel work may be
// charged to either side: a change that moves it is no saving.
func processCPU(tb testing.TB, pid int) (time.Duration, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		tb.Fatalf("read the client process's CPU time: %v", err)
	}
	// The command name, field 2, is in parentheses and may hold spaces;
	// utime and stime are fields 14 and 15.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		tb.Fatalf("/proc/%d/stat: %d fields after the name", pid, len(f))
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			tb.Fatalf("/proc/%d/stat: %v", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, true
}
