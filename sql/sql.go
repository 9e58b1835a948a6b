// Package sql holds the gateway's database objects as plain SQL files, embedded
// into the binary so that `gateway migrate` needs nothing beside it. The same
// files work with `psql -f` for a DBA who prefers to apply them by hand.
package sql

import _ "embed"

// Install creates or upgrades the rtgw schema: event log, capture and commit
// triggers, and the rtgw.track / rtgw.untrack functions. It is idempotent and
// runs in one transaction.
//
//go:embed install.sql
var Install string

// Uninstall removes every object Install created, including the triggers on
// tracked tables, and leaves the application's tables and data alone.
//
//go:embed uninstall.sql
var Uninstall string

// DemoTables creates the example tables facts and articles (if absent) for
// `gateway demo` and the compose file; the app has its own.
//
//go:embed examples/demo-tables.sql
var DemoTables string

// Schema is the schema Install creates; every object lives in it.
const Schema = "rtgw"

// Channel is the NOTIFY channel the commit trigger rings after each commit.
const Channel = "rtgw"
