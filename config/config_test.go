package config

import (
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLoadDefaults(t *testing.T) {
	t.Parallel()
	got, err := Load([]string{"DATABASE_URL=postgres://db/app", "UNRELATED=1"})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := Config{
		DatabaseURL:     "postgres://db/app",
		Addr:            ":8080",
		Capture:         "triggers",
		CaptureSlot:     "rtgw",
		Track:           "facts:budget_fact,articles:article",
		MaxConnsUser:    10,
		MaxConns:        500,
		PingInterval:    10 * time.Second,
		ReplayEvents:    10000,
		Retention:       24 * time.Hour,
		RetentionEvents: 1000000,
		PruneInterval:   time.Minute,
		MaxRowBytes:     1 << 20,
		PollInterval:    2 * time.Second,
		LogReadTimeout:  10 * time.Second,
		SendQueue:       256,
		WriteTimeout:    10 * time.Second,
		Heartbeat:       15 * time.Second,
		Shutdown:        10 * time.Second,
		LogLevel:        slog.LevelInfo,
		LogFormat:       "auto",

		MaxConnsAddr:     50,
		TrustedProxies:   "127.0.0.0/8,::1/128",
		MaxSSEClients:    100,
		MaxPollers:       500,
		MaxTypes:         64,
		MaxTypesBytes:    2048,
		MaxMessageBytes:  4096,
		MessageRate:      2,
		MessageBurst:     20,
		HeaderTimeout:    10 * time.Second,
		HandshakeTimeout: 10 * time.Second,
		IdleTimeout:      2 * time.Minute,
		MaxHeaderBytes:   32768,
		IOURing:          true,
	}
	if got != want {
		t.Fatalf("defaults:\n got %+v\nwant %+v", got, want)
	}
	tracks, err := ParseTrack(got.Track)
	if err != nil {
		t.Fatalf("default GATEWAY_TRACK: %v", err)
	}
	wantTracks := []Track{{Table: "facts", Prefix: "budget_fact"}, {Table: "articles", Prefix: "article"}}
	if !reflect.DeepEqual(tracks, wantTracks) {
		t.Fatalf("default tracks %+v, want %+v", tracks, wantTracks)
	}
}

func TestLoadOverrides(t *testing.T) {
	t.Parallel()
	got, err := Load([]string{
		"DATABASE_URL=postgres://db/app",
		"GATEWAY_ADDR=127.0.0.1:9000",
		"GATEWAY_TRACK=public.facts:fact:amount|fact_date",
		"GATEWAY_REPLAY_EVENTS=1",
		"GATEWAY_MAX_ROW_BYTES=64",
		"GATEWAY_POLL_INTERVAL=250ms",
		"GATEWAY_LOG_READ_TIMEOUT=3s",
		"GATEWAY_SEND_QUEUE=1",
		"GATEWAY_WRITE_TIMEOUT=1m",
		"GATEWAY_SSE_HEARTBEAT=50ms",
		"GATEWAY_SHUTDOWN_TIMEOUT=1h",
		"GATEWAY_LOG_LEVEL=debug",
		"GATEWAY_LOG_FORMAT=text",
		"GATEWAY_JWT_SECRET=s3cret",
		"GATEWAY_USER_ACTIVE_SQL=SELECT true",
		"GATEWAY_MINT_WS_TOKEN=true",
		"GATEWAY_MAX_CONNECTIONS_PER_USER=2",
		"GATEWAY_MAX_CONNECTIONS=3",
		"GATEWAY_PING_INTERVAL=1s",
		"GATEWAY_RETENTION=2h",
		"GATEWAY_RETENTION_EVENTS=50",
		"GATEWAY_PRUNE_INTERVAL=0s",
		"GATEWAY_MAX_CONNECTIONS_PER_ADDRESS=4",
		"GATEWAY_TRUSTED_PROXIES=10.0.0.0/8, 192.168.1.7",
		"GATEWAY_MAX_SSE_CLIENTS=5",
		"GATEWAY_MAX_POLLERS=6",
		"GATEWAY_MAX_TYPES=7",
		"GATEWAY_MAX_TYPES_BYTES=80",
		"GATEWAY_MAX_MESSAGE_BYTES=100",
		"GATEWAY_MESSAGE_RATE=0.5",
		"GATEWAY_MESSAGE_BURST=3",
		"GATEWAY_HEADER_TIMEOUT=2s",
		"GATEWAY_HANDSHAKE_TIMEOUT=3s",
		"GATEWAY_IDLE_TIMEOUT=4s",
		"GATEWAY_MAX_HEADER_BYTES=1000",
		"GATEWAY_SOCKET_SEND_BUFFER=16384",
		"GATEWAY_IO_URING=false",
		"GATEWAY_CAPTURE=decoding",
		"GATEWAY_CAPTURE_SLOT=rtgw_budget",
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := Config{
		DatabaseURL:     "postgres://db/app",
		Addr:            "127.0.0.1:9000",
		Capture:         "decoding",
		CaptureSlot:     "rtgw_budget",
		Track:           "public.facts:fact:amount|fact_date",
		JWTSecret:       "s3cret",
		UserActiveSQL:   "SELECT true",
		MintWSToken:     true,
		MaxConnsUser:    2,
		MaxConns:        3,
		PingInterval:    time.Second,
		ReplayEvents:    1,
		Retention:       2 * time.Hour,
		RetentionEvents: 50,
		MaxRowBytes:     64,
		PollInterval:    250 * time.Millisecond,
		LogReadTimeout:  3 * time.Second,
		SendQueue:       1,
		WriteTimeout:    time.Minute,
		Heartbeat:       50 * time.Millisecond,
		Shutdown:        time.Hour,
		LogLevel:        slog.LevelDebug,
		LogFormat:       "text",

		MaxConnsAddr:     4,
		TrustedProxies:   "10.0.0.0/8, 192.168.1.7",
		MaxSSEClients:    5,
		MaxPollers:       6,
		MaxTypes:         7,
		MaxTypesBytes:    80,
		MaxMessageBytes:  100,
		MessageRate:      0.5,
		MessageBurst:     3,
		HeaderTimeout:    2 * time.Second,
		HandshakeTimeout: 3 * time.Second,
		IdleTimeout:      4 * time.Second,
		MaxHeaderBytes:   1000,
		SendBuffer:       16384,
	}
	if got != want {
		t.Fatalf("overrides:\n got %+v\nwant %+v", got, want)
	}
}

// Every bad setting is refused with an error that says which setting and
// what is wrong with it.
func TestLoadErrors(t *testing.T) {
	t.Parallel()
	const db = "DATABASE_URL=postgres://db/app"
	cases := []struct {
		name string
		env  []string
		// names: the error names the setting, by its variable or (for values
		// the environment parser rejects) its field; any one will do.
		names []string
		want  []string // the error contains all of these
	}{
		{"no DATABASE_URL", nil, []string{"DATABASE_URL"}, nil},
		{"empty DATABASE_URL", []string{"DATABASE_URL="}, []string{"DATABASE_URL"}, nil},
		{"duration not a duration", []string{db, "GATEWAY_POLL_INTERVAL=soon"},
			[]string{"GATEWAY_POLL_INTERVAL", "PollInterval"}, []string{`"soon"`}},
		{"duration without unit", []string{db, "GATEWAY_SSE_HEARTBEAT=5"},
			[]string{"GATEWAY_SSE_HEARTBEAT", "Heartbeat"}, []string{`"5"`}},
		{"negative duration", []string{db, "GATEWAY_WRITE_TIMEOUT=-1s"},
			[]string{"GATEWAY_WRITE_TIMEOUT"}, []string{"positive", "-1s"}},
		{"zero duration", []string{db, "GATEWAY_SHUTDOWN_TIMEOUT=0s"},
			[]string{"GATEWAY_SHUTDOWN_TIMEOUT"}, []string{"positive"}},
		{"zero poll interval", []string{db, "GATEWAY_POLL_INTERVAL=0s"},
			[]string{"GATEWAY_POLL_INTERVAL"}, []string{"positive"}},
		{"number not a number", []string{db, "GATEWAY_SEND_QUEUE=lots"},
			[]string{"GATEWAY_SEND_QUEUE", "SendQueue"}, []string{`"lots"`}},
		{"number with a unit", []string{db, "GATEWAY_MAX_ROW_BYTES=1MB"},
			[]string{"GATEWAY_MAX_ROW_BYTES", "MaxRowBytes"}, []string{`"1MB"`}},
		{"send queue zero", []string{db, "GATEWAY_SEND_QUEUE=0"},
			[]string{"GATEWAY_SEND_QUEUE"}, []string{"at least 1", "got 0"}},
		{"replay window negative", []string{db, "GATEWAY_REPLAY_EVENTS=-5"},
			[]string{"GATEWAY_REPLAY_EVENTS"}, []string{"at least 1", "got -5"}},
		{"row limit too small", []string{db, "GATEWAY_MAX_ROW_BYTES=63"},
			[]string{"GATEWAY_MAX_ROW_BYTES"}, []string{"at least 64", "got 63"}},
		{"log level", []string{db, "GATEWAY_LOG_LEVEL=loud"},
			[]string{"GATEWAY_LOG_LEVEL", "LogLevel"}, []string{`"loud"`}},
		{"log format", []string{db, "GATEWAY_LOG_FORMAT=xml"},
			[]string{"GATEWAY_LOG_FORMAT"}, []string{`"xml"`}},
		{"track", []string{db, "GATEWAY_TRACK=facts"},
			[]string{"GATEWAY_TRACK"}, []string{`"facts"`}},
		{"trusted proxy not an address", []string{db, "GATEWAY_TRUSTED_PROXIES=127.0.0.1,nginx"},
			[]string{"GATEWAY_TRUSTED_PROXIES"}, []string{`"nginx"`}},
		{"trusted proxy bad range", []string{db, "GATEWAY_TRUSTED_PROXIES=10.0.0.0/33"},
			[]string{"GATEWAY_TRUSTED_PROXIES"}, []string{`"10.0.0.0/33"`}},
		{"per-address limit zero", []string{db, "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS=0"},
			[]string{"GATEWAY_MAX_CONNECTIONS_PER_ADDRESS"}, []string{"at least 1", "got 0"}},
		{"SSE limit negative", []string{db, "GATEWAY_MAX_SSE_CLIENTS=-1"},
			[]string{"GATEWAY_MAX_SSE_CLIENTS"}, []string{"at least 1"}},
		{"poll limit zero", []string{db, "GATEWAY_MAX_POLLERS=0"},
			[]string{"GATEWAY_MAX_POLLERS"}, []string{"at least 1"}},
		{"types zero", []string{db, "GATEWAY_MAX_TYPES=0"},
			[]string{"GATEWAY_MAX_TYPES"}, []string{"at least 1"}},
		{"message size zero", []string{db, "GATEWAY_MAX_MESSAGE_BYTES=0"},
			[]string{"GATEWAY_MAX_MESSAGE_BYTES"}, []string{"at least 1"}},
		{"message rate zero", []string{db, "GATEWAY_MESSAGE_RATE=0"},
			[]string{"GATEWAY_MESSAGE_RATE"}, []string{"positive"}},
		{"message rate infinite", []string{db, "GATEWAY_MESSAGE_RATE=+Inf"},
			[]string{"GATEWAY_MESSAGE_RATE"}, []string{"positive"}},
		{"message rate not a number", []string{db, "GATEWAY_MESSAGE_RATE=fast"},
			[]string{"GATEWAY_MESSAGE_RATE", "MessageRate"}, []string{`"fast"`}},
		{"message burst zero", []string{db, "GATEWAY_MESSAGE_BURST=0"},
			[]string{"GATEWAY_MESSAGE_BURST"}, []string{"at least 1"}},
		{"header timeout zero", []string{db, "GATEWAY_HEADER_TIMEOUT=0s"},
			[]string{"GATEWAY_HEADER_TIMEOUT"}, []string{"positive"}},
		{"idle timeout negative", []string{db, "GATEWAY_IDLE_TIMEOUT=-1s"},
			[]string{"GATEWAY_IDLE_TIMEOUT"}, []string{"positive"}},
		{"header bytes zero", []string{db, "GATEWAY_MAX_HEADER_BYTES=0"},
			[]string{"GATEWAY_MAX_HEADER_BYTES"}, []string{"at least 1"}},
		{"send buffer negative", []string{db, "GATEWAY_SOCKET_SEND_BUFFER=-1"},
			[]string{"GATEWAY_SOCKET_SEND_BUFFER"}, []string{"not be negative"}},
		{"capture unknown", []string{db, "GATEWAY_CAPTURE=wal2json"},
			[]string{"GATEWAY_CAPTURE"}, []string{"triggers or decoding"}},
		{"capture slot not a slot name", []string{db, "GATEWAY_CAPTURE_SLOT=Rtgw-1"},
			[]string{"GATEWAY_CAPTURE_SLOT"}, []string{"lower-case"}},
		{"several at once", []string{db, "GATEWAY_SEND_QUEUE=0", "GATEWAY_LOG_FORMAT=xml", "GATEWAY_SSE_HEARTBEAT=-1ms"},
			[]string{"GATEWAY_SEND_QUEUE"}, []string{"GATEWAY_LOG_FORMAT", "GATEWAY_SSE_HEARTBEAT"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := Load(c.env)
			if err == nil {
				t.Fatalf("Load(%q) = %+v, want an error", c.env, cfg)
			}
			if cfg != (Config{}) {
				t.Errorf("Load returned a config with its error: %+v", cfg)
			}
			msg := err.Error()
			named := false
			for _, n := range c.names {
				named = named || strings.Contains(msg, n)
			}
			if !named {
				t.Errorf("error %q names none of %q", msg, c.names)
			}
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

func TestProxies(t *testing.T) {
	t.Parallel()
	for in, want := range map[string][]string{
		"":                              nil,
		"127.0.0.0/8,::1/128":           {"127.0.0.0/8", "::1/128"},
		" 10.1.2.3 , 2001:db8::1 ,":     {"10.1.2.3/32", "2001:db8::1/128"},
		"10.1.2.3/8":                    {"10.0.0.0/8"}, // masked
		"::ffff:10.1.2.3,172.16.0.0/12": {"10.1.2.3/32", "172.16.0.0/12"},
	} {
		cfg := Config{TrustedProxies: in}
		got, err := cfg.Proxies()
		if err != nil {
			t.Errorf("Proxies(%q): %v", in, err)
			continue
		}
		var strs []string
		for _, p := range got {
			strs = append(strs, p.String())
		}
		if !reflect.DeepEqual(strs, want) {
			t.Errorf("Proxies(%q) = %v, want %v", in, strs, want)
		}
	}
}

func TestParseTrack(t *testing.T) {
	t.Parallel()
	good := []struct {
		in   string
		want []Track
	}{
		{"", nil},
		{" , ,", nil},
		{"t_f_budget_fact:{record_type}:id|amount|tab_origin_id=budget.tab_origin_id:facts_batch_deleted/fact_ids", []Track{{
			Table: "t_f_budget_fact", Prefix: "{record_type}", Columns: []string{"id", "amount"},
			Settings: map[string]string{"tab_origin_id": "budget.tab_origin_id"}, BatchEvent: "facts_batch_deleted", BatchKey: "fact_ids"}}},
		{"facts:fact:*|tab=app.tab:gone", []Track{{Table: "facts", Prefix: "fact",
			Settings: map[string]string{"tab": "app.tab"}, BatchEvent: "gone"}}},
		{"facts:budget_fact", []Track{{Table: "facts", Prefix: "budget_fact"}}},
		{" facts:budget_fact , articles:article ,", []Track{
			{Table: "facts", Prefix: "budget_fact"}, {Table: "articles", Prefix: "article"}}},
		{"public.facts:fact:amount|fact_date", []Track{
			{Table: "public.facts", Prefix: "fact", Columns: []string{"amount", "fact_date"}}}},
		{"_t$1:_P9:c$", []Track{{Table: "_t$1", Prefix: "_P9", Columns: []string{"c$"}}}},
		{"a:x,b:x", []Track{{Table: "a", Prefix: "x"}, {Table: "b", Prefix: "x"}}}, // a shared prefix is allowed
	}
	for _, c := range good {
		got, err := ParseTrack(c.in)
		if err != nil {
			t.Errorf("ParseTrack(%q): %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParseTrack(%q) = %+v, want %+v", c.in, got, c.want)
		}
	}

	bad := []struct {
		in, want string // want: the error contains it
	}{
		{"facts", `"facts" is not table:prefix`},
		{"facts:budget_fact,articles", `"articles" is not table:prefix`},
		{"facts:f:id:x:y", `"facts:f:id:x:y" is not table:prefix`},
		{"facts:f:id:bad-event", `"bad-event" is not batch_event`},
		{"facts:f:tab=nodot", `"tab=nodot" is not key=setting.name`},
		{"facts:{a}x{b}", `at most one {column}`},
		{"facts:", `prefix ""`},
		{":f", `"" is not a table name`},
		{"fa-cts:f", `"fa-cts" is not a table name`},
		{"1facts:f", `"1facts" is not a table name`},
		{"a.b.c:f", `"a.b.c" is not a table name`},
		{`"Facts":f`, `"\"Facts\"" is not a table name`},
		{"facts:budget-fact", `prefix "budget-fact"`},
		{"facts:9f", `prefix "9f"`},
		{"facts:f$", `prefix "f$"`},
		{"facts:f,facts:g", `table "facts" listed twice`},
		{"facts:f:", `"" is not a column name`},
		{"facts:f:id|", `"" is not a column name`},
		{"facts:f:id||amount", `"" is not a column name`},
		{"facts:f:fact date", `"fact date" is not a column name`},
		{"facts:f:id|na-me", `"na-me" is not a column name`},
		{"facts:f:id,amount", `"amount" is not table:prefix`}, // columns are separated by |, not ,
	}
	for _, c := range bad {
		got, err := ParseTrack(c.in)
		if err == nil {
			t.Errorf("ParseTrack(%q) = %+v, want an error", c.in, got)
			continue
		}
		if !strings.HasPrefix(err.Error(), "GATEWAY_TRACK: ") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseTrack(%q): error %q, want GATEWAY_TRACK: ...%s...", c.in, err, c.want)
		}
		if got != nil {
			t.Errorf("ParseTrack(%q) returned %+v with its error", c.in, got)
		}
	}
}
