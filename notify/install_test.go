package notify_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/budget-rt/gateway/config"
	"github.com/budget-rt/gateway/notify"
	"github.com/budget-rt/gateway/notify/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func mustExec(t testing.TB, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("exec %q: %v", sql, err)
	}
}

// events returns "type data" of every logged event in commit order.
func events(t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	rows, err := conn.Query(t.Context(), `
SELECT e.type || ' ' || e.data::text FROM rtgw.tx t JOIN rtgw.event e ON e.xid = t.xid ORDER BY t.seq, e.id`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Several replicas may run migrate at once; the install serialises itself.
func TestInstallConcurrentAndIdempotent(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	admin := connect(t, url)
	mustExec(t, admin, `CREATE TABLE articles (id serial PRIMARY KEY, name text, secret text)`)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(context.Background(), url)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			errs <- notify.Install(context.Background(), conn, []config.Track{{Table: "articles", Prefix: "article", Columns: []string{"name"}}})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent install: %v", err)
		}
	}
	mustExec(t, admin, `INSERT INTO articles (name, secret) VALUES ('a', 'hidden')`)
	got := events(t, admin)
	if len(got) != 1 || got[0] != `article_created {"id": 1, "name": "a"}` {
		t.Fatalf("events = %q; want one article_created with only id and name", got)
	}
	// The column whitelist applies to new columns too: they stay out.
	mustExec(t, admin, `ALTER TABLE articles ADD COLUMN added text DEFAULT 'x'`)
	mustExec(t, admin, `UPDATE articles SET name = 'b'`)
	if got := events(t, admin); len(got) != 2 || got[1] != `article_updated {"id": 1, "name": "b"}` {
		t.Fatalf("events after ALTER = %q", got)
	}
}

func TestTrackRefusesWhatItCannotDo(t *testing.T) {
	t.Parallel()
	conn := connect(t, pgtest.NewDatabase(t))
	mustExec(t, conn, `
CREATE TABLE nokey (a int);
CREATE TABLE p (id int, d date, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
CREATE TABLE p1 PARTITION OF p FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
CREATE TABLE ok (id int PRIMARY KEY)`)
	if err := notify.Install(t.Context(), conn, nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ sql, want string }{
		{`SELECT rtgw.track('nokey', 'x')`, "no primary key"},
		{`SELECT rtgw.track('p1', 'x')`, "is a partition"},
		{`SELECT rtgw.track('ok', 'bad-prefix')`, "tracked_prefix_check"},
		{`SELECT rtgw.track('ok', 'x', '{nope}')`, "lacks a column"},
		{`SELECT rtgw.track('missing', 'x')`, "does not exist"},
	} {
		_, err := conn.Exec(t.Context(), c.sql)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", c.sql, err, c.want)
		}
	}
}

// The application may write as a role that has no rights on rtgw: capture
// runs as the schema owner.
func TestCaptureWorksForUnprivilegedWriter(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	admin := connect(t, url)
	role := fmt.Sprintf("app_%d", time.Now().UnixNano()) // roles are per cluster, not per database
	mustExec(t, admin, `CREATE TABLE facts (id serial PRIMARY KEY, amount bigint)`)
	if err := notify.Install(t.Context(), admin, []config.Track{{Table: "facts", Prefix: "fact"}}); err != nil {
		t.Fatal(err)
	}
	mustExec(t, admin, `CREATE ROLE `+role+` LOGIN`)
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), url)
		if err == nil {
			_, _ = c.Exec(context.Background(), `DROP OWNED BY `+role+`; DROP ROLE `+role)
			c.Close(context.Background())
		}
	})
	mustExec(t, admin, `GRANT USAGE ON SCHEMA public TO `+role+`; GRANT ALL ON facts, facts_id_seq TO `+role)

	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.User = role
	app, err := pgx.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(context.Background())
	if _, err := app.Exec(t.Context(), `INSERT INTO facts (amount) VALUES (5)`); err != nil {
		t.Fatalf("insert as unprivileged role: %v", err)
	}
	if _, err := app.Exec(t.Context(), `SELECT count(*) FROM rtgw.event`); err == nil {
		t.Fatalf("the app role can read rtgw.event; want it to need no rights there")
	}
	if got := events(t, admin); len(got) != 1 || got[0] != `fact_created {"id": 1, "amount": 5}` {
		t.Fatalf("events = %q", got)
	}
}

// A DBA can apply the same files with psql instead of `gateway migrate`.
func TestSQLFilesWorkWithPsql(t *testing.T) {
	t.Parallel()
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatalf("psql not found on PATH (install the postgresql-client package): %v", err)
	}
	url := pgtest.NewDatabase(t)
	conn := connect(t, url)
	mustExec(t, conn, `CREATE TABLE articles (id serial PRIMARY KEY, name text)`)
	_, self, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(self), "..", "sql")
	runPsql := func(args ...string) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), psql, append([]string{url, "-X", "-q", "-v", "ON_ERROR_STOP=1"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("psql %v: %v\n%s", args, err, out)
		}
	}
	runPsql("-f", filepath.Join(dir, "install.sql"))
	runPsql("-f", filepath.Join(dir, "install.sql"))
	runPsql("-c", "SELECT rtgw.track('articles', 'article')")
	mustExec(t, conn, `INSERT INTO articles (name) VALUES ('n')`)
	if got := events(t, conn); len(got) != 1 || !strings.HasPrefix(got[0], "article_created ") {
		t.Fatalf("events = %q", got)
	}
	runPsql("-f", filepath.Join(dir, "uninstall.sql"))
	var n int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM pg_namespace WHERE nspname = 'rtgw'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("schema rtgw still there (%d, %v)", n, err)
	}
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM articles`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("articles has %d rows (%v), want 1", n, err)
	}
}

// appSchema is the family-budget app's schema, as far as tracking goes.
const appSchema = `
CREATE TABLE t_d_user (id serial PRIMARY KEY, is_active boolean NOT NULL DEFAULT true);
CREATE TABLE t_d_article (
    id serial PRIMARY KEY, user_id int NOT NULL, parent_id int REFERENCES t_d_article (id),
    name varchar(255) NOT NULL, description text, type varchar(20) NOT NULL, code varchar(50),
    is_active boolean NOT NULL DEFAULT true, created_at timestamp DEFAULT now(), updated_at timestamp DEFAULT now());
CREATE TABLE t_f_budget_fact (
    id serial, user_id int NOT NULL, article_id int NOT NULL, financial_center_id int, cost_center_id int,
    amount bigint NOT NULL CHECK (amount >= 0), fact_date date NOT NULL, description text,
    record_type varchar(10) NOT NULL DEFAULT 'fact', transfer_id bigint, recurring_plan_id int,
    created_at timestamp DEFAULT now(), updated_at timestamp DEFAULT now(),
    PRIMARY KEY (id, fact_date)) PARTITION BY RANGE (fact_date);
CREATE TABLE t_f_budget_fact_2026_01 PARTITION OF t_f_budget_fact FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');`

// The two shipped configurations for the app's schema, the SQL example and
// GATEWAY_TRACK in deploy/budget-app.env, install the same tracking.
func TestBudgetAppExamplesAgree(t *testing.T) {
	t.Parallel()
	_, self, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(self), "..")
	example, err := os.ReadFile(filepath.Join(root, "sql", "examples", "budget-app.sql"))
	if err != nil {
		t.Fatal(err)
	}
	envFile, err := os.ReadFile(filepath.Join(root, "deploy", "budget-app.env"))
	if err != nil {
		t.Fatal(err)
	}
	var trackValue string
	for line := range strings.SplitSeq(string(envFile), "\n") {
		if v, ok := strings.CutPrefix(line, "GATEWAY_TRACK="); ok {
			trackValue = v
		}
	}
	tracks, err := config.ParseTrack(trackValue)
	if err != nil {
		t.Fatalf("GATEWAY_TRACK in deploy/budget-app.env: %v", err)
	}

	tracked := func(conn *pgx.Conn) string {
		var s string
		err := conn.QueryRow(t.Context(), `
SELECT string_agg(format('%s %s %s %s %s %s', tbl, prefix, columns, settings, batch_event, batch_key), E'\n' ORDER BY tbl::text)
FROM rtgw.tracked`).Scan(&s)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	bySQL := connect(t, pgtest.NewDatabase(t))
	mustExec(t, bySQL, appSchema)
	if err := notify.Install(t.Context(), bySQL, nil); err != nil {
		t.Fatal(err)
	}
	mustExec(t, bySQL, string(example))
	byEnv := connect(t, pgtest.NewDatabase(t))
	mustExec(t, byEnv, appSchema)
	if err := notify.Install(t.Context(), byEnv, tracks); err != nil {
		t.Fatal(err)
	}
	if a, b := tracked(bySQL), tracked(byEnv); a != b || a == "" {
		t.Fatalf("the SQL example tracks\n%s\nGATEWAY_TRACK tracks\n%s", a, b)
	}

	mustExec(t, bySQL, `INSERT INTO t_f_budget_fact (user_id, article_id, amount, fact_date, record_type)
VALUES (1, 1, 100, '2026-01-02', 'fact'), (1, 1, 200, '2026-01-03', 'plan')`)
	mustExec(t, bySQL, `DELETE FROM t_f_budget_fact`)
	got := events(t, bySQL)
	want := []string{"fact_created", "plan_created", "facts_batch_deleted"}
	if len(got) != len(want) {
		t.Fatalf("events = %q", got)
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w+" ") {
			t.Errorf("event %d = %s, want %s", i, got[i], w)
		}
	}
}
