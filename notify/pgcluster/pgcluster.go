// Package pgcluster runs a private, throwaway PostgreSQL cluster: initdb in a
// temporary directory, pg_ctl start on a free loopback port, trust
// authentication for the superuser "postgres", and everything removed again
// by Close. The tests (through notify/pgtest) and `gateway demo` use it.
//
// PostgreSQL refuses to run as root, so when the process is root the
// PostgreSQL tools run as the user "nobody" (uid 65534 when the user
// database has no entry for it), and the data directory is created where
// that user can reach it.
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// nobodyID is the conventional uid/gid of "nobody", used when the user
// database has no entry for it (minimal containers).
const nobodyID = 65534

// adminTimeout bounds readiness waits so that a wedged server fails the
// caller instead of hanging.
const adminTimeout = 60 * time.Second

// ErrNoBinaries reports that no PostgreSQL server installation was found;
// callers give it a message of its own because the fix is on the machine,
// not in the code.
var ErrNoBinaries = errors.New("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found")

// Cluster is a private PostgreSQL cluster. Its port and data directory
// survive Stop and Start, so URLs stay valid across restarts.
type Cluster struct {
	// bin is the directory holding initdb, pg_ctl and postgres.
	bin string
	// base is the temporary directory that holds everything and is
	// removed by Close.
	base    string
	dataDir string
	logFile string
	// cred is non-nil when running as root: PostgreSQL refuses to run as
	// root, so its tools run as this unprivileged user.
	cred *syscall.Credential

	// mu serialises Stop, Start and Close, which all drive pg_ctl on the
	// same data directory.
	mu      sync.Mutex
	port    int
	running bool
	closed  bool
	// major is the server's major version, known once it has started.
	major int
}

// Dir is the temporary directory holding the cluster's data and log; Close
// removes it.
func (c *Cluster) Dir() string { return c.base }

// Major is the server's major version (16 for 16.4).
func (c *Cluster) Major() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.major
}

// Port returns the TCP port the cluster listens on, on 127.0.0.1. It does
// not change across Stop and Start.
func (c *Cluster) Port() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.port
}

// URL returns a postgres:// URL for database dbname on the cluster, as the
// superuser "postgres" (trust authentication, so no password).
func (c *Cluster) URL(dbname string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port())),
		Path:     "/" + dbname,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Stop shuts the server down with the given pg_ctl mode and waits until it
// has exited: "smart" waits for clients to disconnect, "fast" disconnects
// them and checkpoints, "immediate" aborts like a crash. Because the
// cluster runs with synchronous_commit=off, "immediate" may lose the last
// fraction of a second of commits; use "fast" when the data must survive.
// Stopping a stopped cluster is a no-op.
func (c *Cluster) Stop(mode string) error {
	switch mode {
	case "smart", "fast", "immediate":
	default:
		return fmt.Errorf("stop postgres: unknown mode %q (want smart, fast or immediate)", mode)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopLocked(mode)
}

// Start starts a stopped cluster again on the same port and data
// directory and returns once it accepts connections (after crash recovery
// if it was stopped with "immediate"). Starting a running cluster is a
// no-op.
func (c *Cluster) Start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return nil
	}
	return c.startLocked()
}

func (c *Cluster) stopLocked(mode string) error {
	if !c.running {
		return nil
	}
	out, err := c.command("pg_ctl", "stop", "-w", "-t", "60", "-D", c.dataDir, "-m", mode).CombinedOutput()
	if err != nil {
		return fmt.Errorf("stop postgres: %w: %s%s", err, bytes.TrimSpace(out), c.logTail(0))
	}
	c.running = false
	return nil
}

// startLocked starts postgres on c.port and waits until it serves queries.
func (c *Cluster) startLocked() error {
	// Only the log written by this attempt is relevant to its failure.
	var logStart int64
	if fi, err := os.Stat(c.logFile); err == nil {
		logStart = fi.Size()
	}
	cmd := c.command("pg_ctl", "start", "-w", "-t", "60",
		"-D", c.dataDir, "-l", c.logFile, "-o", "-p "+strconv.Itoa(c.port))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("start postgres on port %d: %w: %s%s", c.port, err, bytes.TrimSpace(out), c.logTail(logStart))
	}
	c.running = true

	// pg_ctl -w already waits for the "ready" state; connecting proves the
	// TCP listener works too, which is what callers depend on.
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	admin := c.urlLocked("postgres")
	for {
		conn, err := pgx.Connect(ctx, admin)
		if err == nil {
			// server_version looks like "15.18 (Debian 15.18-0+deb12u1)".
			v := conn.PgConn().ParameterStatus("server_version")
			c.major, _ = strconv.Atoi(strings.TrimLeft(strings.SplitN(v, ".", 2)[0], " "))
			return conn.Close(ctx)
		}
		select {
		case <-ctx.Done():
			err = fmt.Errorf("wait for postgres on port %d: %w%s", c.port, err, c.logTail(logStart))
			// Do not leave a half-working server behind: a retry or a
			// later Start would trip over its postmaster.pid.
			if stopErr := c.stopLocked("immediate"); stopErr != nil {
				err = errors.Join(err, stopErr)
			}
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *Cluster) urlLocked(dbname string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, dbname)
}

// Close stops the server immediately (its data is about to be deleted, so
// there is nothing to preserve) and removes the data directory. It is safe
// to call more than once.
func (c *Cluster) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	if err := c.stopLocked("immediate"); err != nil && c.serverAlive() {
		// Keep the directory: deleting it under a live postmaster hides
		// the leak, while the kept log explains it.
		return fmt.Errorf("%w (data directory %s kept)", err, c.base)
	}
	c.closed = true
	if err := os.RemoveAll(c.base); err != nil {
		return fmt.Errorf("remove data directory: %w", err)
	}
	return nil
}

// serverAlive reports whether a postmaster still runs on the data
// directory. Someone else may have stopped it (a terminal's Ctrl-C reaches
// the whole process group), which makes pg_ctl stop fail although there is
// nothing left to stop.
func (c *Cluster) serverAlive() bool {
	// pg_ctl status exits with 3 when no server runs.
	err := c.command("pg_ctl", "status", "-D", c.dataDir).Run()
	var exit *exec.ExitError
	return !(errors.As(err, &exit) && exit.ExitCode() == 3)
}

// command builds an exec.Cmd for a PostgreSQL tool, dropping root
// privileges when needed.
func (c *Cluster) command(tool string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(c.bin, tool), args...)
	// The tools resolve their working directory at startup, which fails
	// for an unprivileged user inside e.g. /root; base is always
	// accessible to them.
	cmd.Dir = c.base
	cmd.Env = childEnv()
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd
}

// logTail returns the end of the server log written since offset, for
// error messages: pg_ctl itself only says that the start failed.
func (c *Cluster) logTail(offset int64) string {
	const max = 4096
	f, err := os.Open(c.logFile)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	if fi.Size()-offset > max {
		offset = fi.Size() - max
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	b, err := io.ReadAll(f)
	if err != nil || len(bytes.TrimSpace(b)) == 0 {
		return ""
	}
	return "\nserver log " + c.logFile + ":\n" + string(bytes.TrimRight(b, "\n"))
}

// clusterConfig is appended to postgresql.conf. The settings trade
// durability for speed (a throwaway cluster never needs crash safety of the
// host) and allow many concurrent connections from parallel tests. Using only TCP
// avoids Unix socket path length limits and clashes with a system server.
const clusterConfig = `
# Added by pgcluster: a throwaway cluster.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
shared_buffers = 128MB
# capture by logical decoding (one slot and one walsender per test that uses it)
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
`

// New creates a cluster in a new temporary directory whose name starts with
// prefix, starts it on a free loopback port and returns once it accepts
// connections. [ErrNoBinaries] means PostgreSQL is not installed. Close
// stops it and removes the directory.
func New(prefix string) (*Cluster, error) {
	bin, err := findBinaries()
	if err != nil {
		return nil, err
	}
	c := &Cluster{bin: bin}

	tmp := os.TempDir()
	if os.Geteuid() == 0 {
		cred, err := nobodyCredential()
		if err != nil {
			return nil, err
		}
		c.cred = cred
		// The unprivileged user must reach the data directory through
		// every ancestor; a private TMPDIR (e.g. under /root) would make
		// initdb fail with a confusing permission error.
		if !traversableByOthers(tmp) {
			tmp = "/tmp"
		}
	}
	c.base, err = os.MkdirTemp(tmp, prefix)
	if err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(c.base)
		}
	}()
	if c.cred != nil {
		if err := os.Chown(c.base, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return nil, fmt.Errorf("chown data directory: %w", err)
		}
	}
	c.dataDir = filepath.Join(c.base, "data")
	c.logFile = filepath.Join(c.dataDir, "postgres.log")

	// --locale=C keeps initdb independent of the host's (possibly
	// uninstalled) locale and makes sort order and messages predictable.
	out, err := c.command("initdb", "-D", c.dataDir, "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("initdb: %w: %s", err, bytes.TrimSpace(out))
	}
	if err := appendFile(filepath.Join(c.dataDir, "postgresql.conf"), clusterConfig); err != nil {
		return nil, fmt.Errorf("configure postgres: %w", err)
	}

	// The free port is found by binding and releasing it, so another
	// process can grab it before postgres binds; retry with a new one.
	for attempt := 1; ; attempt++ {
		c.port, err = freePort()
		if err != nil {
			return nil, fmt.Errorf("start postgres: %w", err)
		}
		err = c.startLocked()
		if err == nil {
			break
		}
		if attempt == 3 {
			return nil, fmt.Errorf("start postgres: %w", err)
		}
	}
	ok = true
	return c, nil
}

// findBinaries returns the first directory, from PATH and then the usual
// install locations, that holds all of initdb, pg_ctl and postgres. The
// tools must come from one installation: Debian puts wrapper scripts on
// PATH that do not match the server binaries.
func findBinaries() (string, error) {
	var dirs []string
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		if filepath.IsAbs(d) {
			dirs = append(dirs, d)
		}
	}
	dirs = append(dirs, globByVersion("/usr/lib/postgresql/*/bin")...)
	dirs = append(dirs, "/usr/local/pgsql/bin")
	dirs = append(dirs, globByVersion("/usr/pgsql-*/bin")...)
	dirs = append(dirs, "/opt/homebrew/bin", "/usr/local/bin")

	for _, d := range dirs {
		if isExecutable(filepath.Join(d, "initdb")) &&
			isExecutable(filepath.Join(d, "pg_ctl")) &&
			isExecutable(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", ErrNoBinaries
}

// globByVersion expands a pattern whose single * is a version number and
// orders the matches newest first, so the newest installed server is used.
func globByVersion(pattern string) []string {
	matches, _ := filepath.Glob(pattern)
	prefix, suffix, _ := strings.Cut(pattern, "*")
	version := func(m string) []int {
		var v []int
		for _, part := range strings.Split(strings.TrimSuffix(strings.TrimPrefix(m, prefix), suffix), ".") {
			n, _ := strconv.Atoi(part)
			v = append(v, n)
		}
		return v
	}
	sort.Slice(matches, func(i, j int) bool {
		a, b := version(matches[i]), version(matches[j])
		for k := 0; k < len(a) && k < len(b); k++ {
			if a[k] != b[k] {
				return a[k] > b[k]
			}
		}
		return len(a) > len(b)
	})
	return matches
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// nobodyCredential returns the identity PostgreSQL runs as when the tests
// run as root.
func nobodyCredential() (*syscall.Credential, error) {
	uid, gid := uint32(nobodyID), uint32(nobodyID)
	if u, err := user.Lookup("nobody"); err == nil {
		if n, err := strconv.ParseUint(u.Uid, 10, 32); err == nil {
			uid = uint32(n)
		}
		if n, err := strconv.ParseUint(u.Gid, 10, 32); err == nil {
			gid = uint32(n)
		}
	}
	if uid == 0 {
		return nil, errors.New("start postgres: user nobody has uid 0")
	}
	// Groups is empty on purpose: root's supplementary groups are dropped.
	return &syscall.Credential{Uid: uid, Gid: gid}, nil
}

// traversableByOthers reports whether every directory from / down to dir
// grants search permission to other users.
func traversableByOthers(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// childEnv is the environment for PostgreSQL tools: PG* variables of the
// developer's shell (PGDATA, PGPORT, PGHOST...) would otherwise redirect
// them, and a C locale keeps their messages readable in test logs.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
