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
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/budget-rt/gateway/notify/pgcluster"
)

// EnvURL names the environment variable that points pgtest at an existing
// server instead of a private cluster. It is useful where PostgreSQL
// binaries cannot be installed but a server is reachable.
const EnvURL = "GATEWAY_TEST_DATABASE_URL"

// adminTimeout bounds admin statements so that a wedged server fails the
// test instead of hanging until the go test timeout.
const adminTimeout = 60 * time.Second

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

// Cluster is the test binary's private cluster. Fault tests use it to stop
// and restart the server underneath the code under test; the port and data
// directory survive restarts so URLs stay valid.
type Cluster = pgcluster.Cluster

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
		if err := shared.Close(); err != nil {
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
		options = createDatabaseOptions(c)
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
		shared, sharedErr = pgcluster.New("pgtest-")
		if sharedErr == nil && testing.Verbose() {
			fmt.Fprintf(os.Stderr, "pgtest: started PostgreSQL on port %d in %v\n",
				shared.Port(), time.Since(start).Round(time.Millisecond))
		}
	})
	if errors.Is(sharedErr, pgcluster.ErrNoBinaries) {
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
func createDatabaseOptions(c *Cluster) string {
	if c.Major() >= 15 {
		return " STRATEGY = FILE_COPY"
	}
	return ""
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
