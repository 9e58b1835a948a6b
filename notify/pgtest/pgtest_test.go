package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func connect(t *testing.T, dbURL string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("connect %s: %v", dbURL, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func dbName(t *testing.T, dbURL string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatalf("parse %s: %v", dbURL, err)
	}
	return strings.TrimPrefix(u.Path, "/")
}

func TestNewDatabaseIsolated(t *testing.T) {
	ctx := context.Background()
	a, b := NewDatabase(t), NewDatabase(t)
	if a == b || dbName(t, a) == dbName(t, b) {
		t.Fatalf("NewDatabase returned the same database twice: %s, %s", a, b)
	}

	ca, cb := connect(t, a), connect(t, b)
	var cur string
	if err := ca.QueryRow(ctx, "SELECT current_database()").Scan(&cur); err != nil || cur != dbName(t, a) {
		t.Fatalf("current_database() = %q, %v; want %q", cur, err, dbName(t, a))
	}
	if _, err := ca.Exec(ctx, "CREATE TABLE only_in_a (id int); INSERT INTO only_in_a VALUES (1)"); err != nil {
		t.Fatalf("create table in a: %v", err)
	}

	var inA, inB bool
	const q = "SELECT to_regclass('public.only_in_a') IS NOT NULL"
	if err := ca.QueryRow(ctx, q).Scan(&inA); err != nil || !inA {
		t.Fatalf("table in a: %v, %v; want true", inA, err)
	}
	if err := cb.QueryRow(ctx, q).Scan(&inB); err != nil || inB {
		t.Fatalf("table in b: %v, %v; want false", inB, err)
	}
}

// Parallel tests each get their own database; this also exercises
// concurrent CREATE DATABASE on the shared server.
func TestNewDatabaseParallel(t *testing.T) {
	for i := range 8 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Parallel()
			conn := connect(t, NewDatabase(t))
			if _, err := conn.Exec(context.Background(), "CREATE TABLE t (id int)"); err != nil {
				t.Fatalf("create table: %v", err)
			}
		})
	}
}

// The database is dropped at cleanup even while a session is still open,
// as leaked pools or listeners would be.
func TestNewDatabaseDroppedOnCleanup(t *testing.T) {
	var name string
	t.Run("use", func(t *testing.T) {
		dbURL := NewDatabase(t)
		name = dbName(t, dbURL)
		conn, err := pgx.Connect(context.Background(), dbURL)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		_ = conn // deliberately left open; DROP ... WITH (FORCE) ends it
	})

	adminURL := os.Getenv(EnvURL)
	if adminURL == "" {
		adminURL = Shared(t).URL("postgres")
	}
	admin := connect(t, adminURL)
	var exists bool
	err := admin.QueryRow(context.Background(),
		"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists)
	if err != nil || exists {
		t.Fatalf("database %s exists after cleanup: %v, %v", name, exists, err)
	}
}

func TestSharedStopStart(t *testing.T) {
	ctx := context.Background()
	c := Shared(t)
	dbURL := NewDatabase(t)
	port := c.Port()
	if !strings.Contains(dbURL, fmt.Sprintf("127.0.0.1:%d/", port)) {
		t.Fatalf("URL %s does not use the cluster port %d", dbURL, port)
	}

	conn := connect(t, dbURL)
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('survives')"); err != nil {
		t.Fatalf("seed: %v", err)
	}

	if err := c.Stop("fast"); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := c.Stop("fast"); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if _, err := pgx.Connect(ctx, dbURL); err == nil {
		t.Fatal("connect succeeded while the cluster is stopped")
	}
	if err := conn.Ping(ctx); err == nil {
		t.Fatal("old connection still works after Stop")
	}

	start := time.Now()
	if err := c.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("restart took %v", time.Since(start))
	if c.Port() != port {
		t.Fatalf("port changed across restart: %d -> %d", port, c.Port())
	}

	var v string
	if err := connect(t, dbURL).QueryRow(ctx, "SELECT v FROM kept").Scan(&v); err != nil || v != "survives" {
		t.Fatalf("after restart: %q, %v; want survives", v, err)
	}
}

// An immediate stop is a crash; Start must bring the server back through
// crash recovery. CHECKPOINT first because synchronous_commit=off lets an
// immediate stop lose the newest commits.
func TestSharedImmediateStop(t *testing.T) {
	ctx := context.Background()
	c := Shared(t)
	dbURL := NewDatabase(t)
	conn := connect(t, dbURL)
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (id int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatalf("seed: %v", err)
	}
	// A separate statement: inside the seed's implicit transaction the
	// checkpoint would precede, and not flush, the commit record.
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	if err := c.Stop("immediate"); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := c.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	var id int
	if err := connect(t, dbURL).QueryRow(ctx, "SELECT id FROM kept").Scan(&id); err != nil || id != 42 {
		t.Fatalf("after restart: %d, %v; want 42", id, err)
	}
}

func TestStopRejectsUnknownMode(t *testing.T) {
	if err := Shared(t).Stop("kill"); err == nil {
		t.Fatal("Stop(\"kill\") succeeded")
	}
}

func TestReplaceDatabase(t *testing.T) {
	got, err := replaceDatabase("postgres://u:p%40ss@db.example:5433/other?sslmode=require&x=1", "t_1_ab")
	want := "postgres://u:p%40ss@db.example:5433/t_1_ab?sslmode=require&x=1"
	if err != nil || got != want {
		t.Fatalf("replaceDatabase = %q, %v; want %q", got, err, want)
	}
	if _, err := replaceDatabase("host=localhost dbname=x", "t"); err == nil {
		t.Fatal("keyword/value DSN accepted; want an error naming " + EnvURL)
	}
}
