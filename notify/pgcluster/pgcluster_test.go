package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func newCluster(t *testing.T) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL; skipped in -short mode")
	}
	c, err := New("pgcluster-test-")
	if errors.Is(err, ErrNoBinaries) {
		t.Fatalf("%v: install PostgreSQL (Debian: apt-get install postgresql)", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// Close stops the server and removes everything: no directory and no
// process of the cluster is left, and a second Close is a no-op.
func TestCloseLeavesNothing(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	conn, err := pgx.Connect(t.Context(), c.URL("postgres"))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	var one int
	if err := conn.QueryRow(t.Context(), "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1: %d, %v", one, err)
	}
	conn.Close(context.Background())
	if c.Major() < 10 {
		t.Fatalf("Major() = %d", c.Major())
	}
	pid := postmasterPID(t, c)

	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(c.Dir()); !os.IsNotExist(err) {
		t.Fatalf("data directory %s still there after Close (%v)", c.Dir(), err)
	}
	// pg_ctl stop returns once postmaster.pid is gone, a moment before
	// the processes have exited.
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) || len(processesUsing(c.Dir())) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("10s after Close: postmaster %d alive: %v; processes that refer to %s: %v",
				pid, alive(pid), c.Dir(), processesUsing(c.Dir()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A server stopped behind the cluster's back (a terminal's Ctrl-C reaches
// the whole process group, and SIGINT is a fast shutdown for postgres)
// does not keep Close from removing the directory.
func TestCloseAfterServerStoppedElsewhere(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	pid := postmasterPID(t, c)
	if err := syscall.Kill(pid, syscall.SIGINT); err != nil {
		t.Fatalf("SIGINT postmaster: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("postmaster %d still running 30s after SIGINT", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Stat(c.Dir()); !os.IsNotExist(err) {
		t.Fatalf("data directory %s still there after Close (%v)", c.Dir(), err)
	}
}

func TestGlobByVersionNewestFirst(t *testing.T) {
	dir := t.TempDir()
	for _, v := range []string{"9.6", "15", "10", "16"} {
		if err := os.MkdirAll(dir+"/"+v+"/bin", 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got := strings.Join(globByVersion(dir+"/*/bin"), " ")
	want := strings.Join([]string{dir + "/16/bin", dir + "/15/bin", dir + "/10/bin", dir + "/9.6/bin"}, " ")
	if got != want {
		t.Fatalf("globByVersion = %s; want %s", got, want)
	}
}

// postmasterPID reads the first line of postmaster.pid.
func postmasterPID(t *testing.T, c *Cluster) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.Dir(), "data", "postmaster.pid"))
	if err != nil {
		t.Fatalf("read postmaster.pid: %v", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("postmaster.pid: %q", line)
	}
	return pid
}

// alive reports whether pid runs (a zombie, exited but not yet reaped,
// does not).
func alive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces, so look after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// processesUsing lists the running pids whose command line mentions dir.
func processesUsing(dir string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cmd, []byte(dir)) && alive(pid) {
			out = append(out, pid)
		}
	}
	return out
}
