// Package pgtest gives tests a real, throwaway PostgreSQL database.
//
// The gateway's behaviour depends on PostgreSQL details that fakes do not
// reproduce (LISTEN/NOTIFY delivery, connection loss, transaction
// semantics), so tests run against a real server. Each test binary starts
// at most one private cluster, lazily, on first use; every test then gets
// its own freshly created database on it so tests stay isolated and can
// run in parallel.
//
// A package that uses pgtest must route its TestMain through [Main] so the
// cluster is stopped and its data directory removed when the tests end:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
// Setting GATEWAY_TEST_DATABASE_URL (a postgres:// URL of a role allowed to
// create databases) makes pgtest use that server instead of starting one.
package pgtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
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
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL names the environment variable that points pgtest at an existing
// server instead of a private cluster. It is useful where PostgreSQL
// binaries cannot be installed but a server is reachable.
const EnvURL = "GATEWAY_TEST_DATABASE_URL"

// nobodyID is the conventional uid/gid of "nobody", used when the user
// database has no entry for it (minimal containers).
const nobodyID = 65534

// adminTimeout bounds admin statements and readiness waits so that a wedged
// server fails the test instead of hanging until the go test timeout.
const adminTimeout = 60 * time.Second

// errNoBinaries reports that no PostgreSQL server installation was found;
// it gets its own message because the fix is on the machine, not the code.
var errNoBinaries = errors.New("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found")

var (
	// mainCalled records that the test binary runs through Main, which is
	// the only place the shared cluster is stopped. Starting a cluster
	// without it would leak a postgres process per test run.
	mainCalled atomic.Bool

	sharedOnce sync.Once
	shared     *Cluster
	sharedErr  error

	// dbCounter makes database names unique within one test binary; the
	// random suffix makes them unique across binaries sharing a server.
	dbCounter atomic.Int64
)

// Cluster is a private PostgreSQL cluster owned by this test binary. Fault
// tests use it to stop and restart the server underneath the code under
// test; the port and data directory survive restarts so URLs stay valid.
type Cluster struct {
	// bin is the directory holding initdb, pg_ctl and postgres.
	bin string
	// base is the temporary directory that holds everything and is
	// removed on teardown.
	base    string
	dataDir string
	logFile string
	// cred is non-nil when running as root: PostgreSQL refuses to run as
	// root, so its tools run as this unprivileged user.
	cred *syscall.Credential

	// mu serialises Stop, Start and teardown, which all drive pg_ctl on
	// the same data directory.
	mu      sync.Mutex
	port    int
	running bool
	// major is the server's major version, known once it has started.
	major int
}

// Main runs the tests and then stops the shared cluster, if one was
// started, and removes its data directory. It returns the exit code for
// os.Exit. Call it from TestMain in every package that uses pgtest.
func Main(m *testing.M) int {
	mainCalled.Store(true)
	code := m.Run()

	// Running the Once here synchronises with any start that happened
	// during the tests and makes later starts fail instead of leaking.
	sharedOnce.Do(func() {
		sharedErr = errors.New("pgtest: cluster used after pgtest.Main returned")
	})
	if shared != nil {
		if err := shared.teardown(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		}
	}
	return code
}

// NewDatabase creates a new, empty database and returns a postgres:// URL
// for it. The database is dropped, disconnecting any remaining sessions,
// when tb and its subtests finish.
//
// It skips the test in -short mode and fails it when no PostgreSQL is
// available, rather than skipping, so that a CI machine missing PostgreSQL
// cannot silently pass.
func NewDatabase(tb testing.TB) string {
	tb.Helper()
	if testing.Short() {
		tb.Skip("needs PostgreSQL; skipped in -short mode")
	}

	var adminURL, options string
	var dbURL func(name string) (string, error)
	if env := os.Getenv(EnvURL); env != "" {
		adminURL = env
		dbURL = func(name string) (string, error) { return replaceDatabase(env, name) }
	} else {
		c := sharedCluster(tb)
		adminURL = c.URL("postgres")
		dbURL = func(name string) (string, error) { return c.URL(name), nil }
		options = c.createDatabaseOptions()
	}

	name := fmt.Sprintf("t_%d_%s", dbCounter.Add(1), randomHex(4))
	u, err := dbURL(name)
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	ident := pgx.Identifier{name}.Sanitize()
	if err := adminExec(adminURL, "CREATE DATABASE "+ident+options); err != nil {
		tb.Fatalf("pgtest: create database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		// FORCE terminates sessions the test left open (pools, listeners);
		// without it the drop would fail and databases would pile up.
		if err := adminExec(adminURL, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
			tb.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return u
}

// Shared returns the test binary's private cluster, starting it on first
// use. Tests that need to control the server (stop, restart) use it; they
// are skipped when GATEWAY_TEST_DATABASE_URL is set because pgtest does
// not own that server.
func Shared(tb testing.TB) *Cluster {
	tb.Helper()
	if testing.Short() {
		tb.Skip("needs PostgreSQL; skipped in -short mode")
	}
	if os.Getenv(EnvURL) != "" {
		tb.Skip("needs control of the PostgreSQL server; skipped because " + EnvURL + " is set")
	}
	return sharedCluster(tb)
}

// sharedCluster starts the cluster once per binary and fails tb with a
// message that says how to fix the environment when that is impossible.
func sharedCluster(tb testing.TB) *Cluster {
	tb.Helper()
	if !mainCalled.Load() {
		tb.Fatalf("pgtest: this package must call pgtest.Main so the PostgreSQL cluster gets stopped; " +
			"add: func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }")
	}
	sharedOnce.Do(func() {
		start := time.Now()
		shared, sharedErr = startCluster()
		if sharedErr == nil && testing.Verbose() {
			fmt.Fprintf(os.Stderr, "pgtest: started PostgreSQL on port %d in %v\n",
				shared.Port(), time.Since(start).Round(time.Millisecond))
		}
	})
	if errors.Is(sharedErr, errNoBinaries) {
		tb.Fatalf("pgtest: %v. Install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; "+
			"macOS: brew install postgresql) or set %s to a postgres:// URL of a server "+
			"where this role may create databases", sharedErr, EnvURL)
	}
	if sharedErr != nil {
		tb.Fatalf("pgtest: %v", sharedErr)
	}
	return shared
}

// createDatabaseOptions returns options for CREATE DATABASE. Since
// PostgreSQL 15 the default strategy copies the template through the WAL;
// copying files is about twice as fast here because fsync is off, and
// every test pays for it. Servers pgtest does not own keep the default.
func (c *Cluster) createDatabaseOptions() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.major >= 15 {
		return " STRATEGY = FILE_COPY"
	}
	return ""
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

// teardown stops the server immediately (its data is about to be deleted,
// so there is nothing to preserve) and removes the data directory.
func (c *Cluster) teardown() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	stopErr := c.stopLocked("immediate")
	if stopErr != nil {
		// Keep the directory: deleting it under a live postmaster hides
		// the leak, while the kept log explains it.
		return fmt.Errorf("%w (data directory %s kept)", stopErr, c.base)
	}
	if err := os.RemoveAll(c.base); err != nil {
		return fmt.Errorf("remove data directory: %w", err)
	}
	return nil
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
// durability for speed (tests never need crash safety of the host) and
// allow many concurrent connections from parallel tests. Using only TCP
// avoids Unix socket path length limits and clashes with a system server.
const clusterConfig = `
# Added by pgtest: a throwaway cluster for tests.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
shared_buffers = 128MB
`

// startCluster creates and starts a new cluster in a temporary directory.
func startCluster() (*Cluster, error) {
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
	c.base, err = os.MkdirTemp(tmp, "pgtest-")
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
	return "", errNoBinaries
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

// replaceDatabase returns serverURL with its database name set to dbname,
// keeping credentials and parameters.
func replaceDatabase(serverURL, dbname string) (string, error) {
	u, err := url.Parse(serverURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("%s must be a postgres:// URL", EnvURL)
	}
	u.Path = "/" + dbname
	u.RawPath = ""
	return u.String(), nil
}

// adminExec runs one statement on its own connection; CREATE and DROP
// DATABASE cannot run inside a transaction and parallel tests call this
// concurrently, so a shared connection would need locking anyway.
func adminExec(connURL, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, connURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never returns an error since Go 1.24
	return hex.EncodeToString(b)
}
