package main

// The deploy files without a Docker engine: docker-compose.yml is parsed and
// checked against the repository (files, commands, settings), and its
// pieces run for real (TestOpsBinary/compose): the db's init script on PostgreSQL, `migrate` and
// `serve` as the built binary with the compose environment, the image's
// HEALTHCHECK command, and nginx with deploy/nginx/compose.conf.

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5"
	"go.yaml.in/yaml/v3"

	"github.com/budget-rt/gateway/config"
	"github.com/budget-rt/gateway/notify/pgtest"
)

// repoRoot is where docker-compose.yml and the Dockerfile live.
var repoRoot = filepath.Join("..", "..")

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image       string            `yaml:"image"`
	Build       string            `yaml:"build"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Ports       []string          `yaml:"ports"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("parse docker-compose.yml: %v", err)
	}
	return c
}

// composeInterpolate does what compose does with ${VAR}, ${VAR:-default}
// and ${VAR:?message} from the shell's environment.
func composeInterpolate(s string, env map[string]string) (string, error) {
	var err error
	out := regexp.MustCompile(`\$\{([A-Z_][A-Z0-9_]*)(?::([-?])([^}]*))?\}`).ReplaceAllStringFunc(s, func(m string) string {
		p := regexp.MustCompile(`^\$\{([A-Z_][A-Z0-9_]*)(?::([-?])([^}]*))?\}$`).FindStringSubmatch(m)
		v := env[p[1]]
		switch {
		case v != "":
			return v
		case p[2] == "-":
			return p[3]
		case p[2] == "?":
			err = fmt.Errorf("%s: %s", p[1], p[3])
		}
		return v
	})
	return out, err
}

// serviceEnv is a service's environment after interpolation.
func serviceEnv(t *testing.T, s composeService, shell map[string]string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for k, v := range s.Environment {
		x, err := composeInterpolate(v, shell)
		if err != nil {
			t.Fatalf("interpolate %s: %v", k, err)
		}
		out[k] = x
	}
	return out
}

func environList(m map[string]string) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, k+"="+m[k])
	}
	return out
}

// The compose file references what exists: the Dockerfile, the mounted
// files, the gateway's commands and settings; services start in order
// (db healthy, migrate done, gateway healthy, nginx); the gateway refuses to
// start without a JWT secret.
func TestComposeFile(t *testing.T) {
	t.Parallel()
	c := loadCompose(t)
	if got := slices.Sorted(maps.Keys(c.Services)); !slices.Equal(got, []string{"db", "gateway", "migrate", "nginx"}) {
		t.Fatalf("services %v, want db, gateway, migrate, nginx", got)
	}
	mig, gw, ngx, db := c.Services["migrate"], c.Services["gateway"], c.Services["nginx"], c.Services["db"]

	if mig.Build != "." || gw.Image != mig.Image || gw.Image == "" {
		t.Errorf("migrate builds %q as %q, gateway runs %q: want both on the image built from the Dockerfile", mig.Build, mig.Image, gw.Image)
	}
	dockerfile, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`ENTRYPOINT ["/gateway"]`, `USER nonroot:nonroot`, `CMD ["/gateway", "healthcheck"]`, "FROM gcr.io/distroless/static"} {
		if !strings.Contains(string(dockerfile), want) {
			t.Errorf("Dockerfile lacks %s", want)
		}
	}
	if !slices.Equal(mig.Command, []string{"migrate"}) || !slices.Equal(gw.Command, []string{"serve"}) {
		t.Errorf("commands: migrate %v, gateway %v; want [migrate] then [serve]", mig.Command, gw.Command)
	}
	for _, cmd := range []string{"migrate", "serve", "healthcheck"} {
		if !regexp.MustCompile(`(?m)^  ` + cmd + `\b`).MatchString(usage) {
			t.Errorf("the gateway has no %s command (usage):\n%s", cmd, usage)
		}
	}
	for svc, want := range map[string][2]string{
		"migrate": {"db", "service_healthy"},
		"gateway": {"migrate", "service_completed_successfully"},
		"nginx":   {"gateway", "service_healthy"},
	} {
		if d, ok := c.Services[svc].DependsOn[want[0]]; !ok || d.Condition != want[1] {
			t.Errorf("%s depends on %v, want %s with condition %s", svc, c.Services[svc].DependsOn, want[0], want[1])
		}
	}

	// Every variable given to the gateway is a setting the config knows.
	known := map[string]bool{}
	for _, s := range config.Settings() {
		known[s.Var] = true
	}
	for _, svc := range []composeService{mig, gw} {
		for k := range svc.Environment {
			if !known[k] {
				t.Errorf("compose sets %s, which is not a gateway setting", k)
			}
		}
	}
	if _, err := composeInterpolate(gw.Environment["GATEWAY_JWT_SECRET"], nil); err == nil || !strings.Contains(err.Error(), "JWT_SECRET") {
		t.Errorf("the gateway's secret without GATEWAY_JWT_SECRET in the shell: %v, want compose to refuse", err)
	}
	cfg, err := config.Load(environList(serviceEnv(t, gw, map[string]string{"GATEWAY_JWT_SECRET": "s"})))
	if err != nil || cfg.CheckServe() != nil {
		t.Errorf("the gateway's compose environment: %v, %v", err, cfg.CheckServe())
	}
	if !strings.Contains(cfg.DatabaseURL, "@db:5432/") {
		t.Errorf("DATABASE_URL %s does not point at the db service", cfg.DatabaseURL)
	}

	// Mounted files exist; nginx gets the shipped locations where its
	// server block includes them, and sends them to the gateway service.
	for name, svc := range c.Services {
		for _, v := range svc.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if strings.HasPrefix(src, "./") {
				if _, err := os.Stat(filepath.Join(repoRoot, src)); err != nil {
					t.Errorf("%s mounts %s: %v", name, src, err)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("%s mounts the volume %s, which is not declared", name, src)
			}
		}
	}
	mounts := map[string]string{}
	for _, v := range ngx.Volumes {
		parts := strings.Split(v, ":")
		mounts[parts[0]] = parts[1]
	}
	if mounts["./deploy/nginx/compose.conf"] != "/etc/nginx/conf.d/default.conf" {
		t.Errorf("nginx mounts %v, want deploy/nginx/compose.conf as its default server", mounts)
	}
	conf, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "nginx", "compose.conf"))
	if err != nil {
		t.Fatal(err)
	}
	inc := regexp.MustCompile(`include (\S+);`).FindStringSubmatch(string(conf))
	if inc == nil || mounts["./deploy/nginx/gateway-locations.conf"] != inc[1] {
		t.Errorf("compose.conf includes %v, nginx mounts the locations at %q", inc, mounts["./deploy/nginx/gateway-locations.conf"])
	}
	if !regexp.MustCompile(`upstream budget_gateway \{\s*(#[^\n]*\n\s*)*server gateway:8080;`).Match(conf) || gw.Environment["GATEWAY_ADDR"] != ":8080" {
		t.Errorf("compose.conf's upstream must be the gateway service on its GATEWAY_ADDR (:8080):\n%s", conf)
	}
	if !strings.Contains(nginxLocations, "proxy_pass http://budget_gateway;") {
		t.Errorf("the shipped locations do not use the budget_gateway upstream")
	}
	if !slices.ContainsFunc(db.Volumes, func(v string) bool {
		return strings.HasPrefix(v, "./sql/examples/demo-tables.sql:/docker-entrypoint-initdb.d/")
	}) {
		t.Errorf("db does not create the example tables: %v", db.Volumes)
	}
	if ngx.Healthcheck == nil || !slices.Contains(ngx.Healthcheck.Test, "http://127.0.0.1/nginx-health") || !strings.Contains(string(conf), "location = /nginx-health") {
		t.Errorf("nginx's healthcheck must ask the /nginx-health location of compose.conf")
	}
}

// testComposeStack (TestOpsBinary/compose): the compose stack's pieces, run
// as compose would run them but without
// Docker: the db's init script, migrate and serve as the binary with the
// compose environment (only the database and the port differ), the image's
// HEALTHCHECK, and nginx with compose.conf in front; an event committed to
// the example tables arrives through nginx.
func testComposeStack(t *testing.T, bin string) {
	requireNginx(t)
	c := loadCompose(t)
	dbURL := pgtest.NewDatabase(t)
	ctx := t.Context()

	// The db service's init script.
	var initSQL string
	for _, v := range c.Services["db"].Volumes {
		if src, dst, _ := strings.Cut(v, ":"); strings.HasPrefix(dst, "/docker-entrypoint-initdb.d/") {
			b, err := os.ReadFile(filepath.Join(repoRoot, src))
			if err != nil {
				t.Fatal(err)
			}
			initSQL = string(b)
		}
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, initSQL); err != nil {
		t.Fatalf("the db's init script: %v", err)
	}

	const secret = "compose-test-secret"
	shell := map[string]string{"GATEWAY_JWT_SECRET": secret}
	addr := pickAddr(t)
	envOf := func(svc string) []string {
		env := serviceEnv(t, c.Services[svc], shell)
		env["DATABASE_URL"] = dbURL // the db service's address only resolves under compose
		if _, ok := env["GATEWAY_ADDR"]; ok {
			env["GATEWAY_ADDR"] = addr
		}
		return environList(env)
	}

	mig := exec.CommandContext(ctx, bin, c.Services["migrate"].Command...)
	mig.Env = envOf("migrate")
	out, err := mig.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "tracking facts as budget_fact_created") || !strings.Contains(string(out), "tracking articles as article_created") {
		t.Fatalf("migrate with the compose environment: %v\n%s", err, out)
	}

	var stderr lockedBuffer
	srv := exec.Command(bin, c.Services["gateway"].Command...)
	srv.Env = envOf("gateway")
	srv.Stderr = &stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	t.Cleanup(func() {
		_ = srv.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("gateway exited with %v after SIGTERM", err)
			}
		case <-time.After(15 * time.Second):
			_ = srv.Process.Kill()
			t.Errorf("gateway still running 15s after SIGTERM")
		}
		if t.Failed() {
			t.Logf("gateway stderr:\n%s", stderr.String())
		}
	})

	// The image's HEALTHCHECK, retried as Docker does until it passes.
	dockerfile, _ := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	hc := regexp.MustCompile(`HEALTHCHECK .* CMD \["/gateway", "([^"]+)"\]`).FindSubmatch(dockerfile)
	if hc == nil {
		t.Fatalf("no HEALTHCHECK CMD [\"/gateway\", ...] in the Dockerfile")
	}
	waitFor(t, 20*time.Second, "the HEALTHCHECK command to pass", func() bool {
		h := exec.Command(bin, string(hc[1]))
		h.Env = envOf("gateway")
		return h.Run() == nil
	})

	// nginx with compose.conf: the gateway service's address and a test
	// port instead of gateway:8080 and port 80.
	dir := t.TempDir()
	for _, sub := range []string{"tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	conf, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "nginx", "compose.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "gateway-locations.conf"), []byte(nginxLocations), 0o644); err != nil {
		t.Fatal(err)
	}
	listen := pickAddr(t)
	server := strings.NewReplacer(
		"server gateway:8080;", "server "+addr+";",
		"listen 80;", "listen "+listen+";\n    location = /__nginx_ready { return 204; }",
		"include /etc/nginx/gateway-locations.conf;", "include "+filepath.Join(dir, "gateway-locations.conf")+";",
	).Replace(string(conf))
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;"
	}
	main := user + `
worker_processes 1;
pid nginx.pid;
error_log error.log info;
events { worker_connections 64; }
http {
    access_log access.log;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
` + server + "\n}\n"
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := launchNginx(dir, listen)
	if err != nil {
		t.Fatalf("nginx with compose.conf: %v", err)
	}
	t.Cleanup(func() { n.stop(t) })

	for path, want := range map[string]int{"/nginx-health": http.StatusNoContent, "/api/v1/budget/client.js": http.StatusOK, "/app": http.StatusNotFound} {
		resp, err := http.Get(n.base + path)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s through nginx: %d, want %d", path, resp.StatusCode, want)
		}
	}
	token := signHS256(t, secret, jwt.MapClaims{"user_id": 1, "exp": time.Now().Add(time.Hour).Unix()})
	sse := openRawSSE(t, n.base+"/api/v1/budget/events", http.Header{"Authorization": {"Bearer " + token}})
	sse.waitLine(t, "retry: ", 10*time.Second)
	var id int64
	waitFor(t, 10*time.Second, "the stream to be attached", func() bool {
		_, body, _ := getJSON("http://" + addr + "/readyz")
		return body["clients"] == 1.0
	})
	if err := conn.QueryRow(ctx, `INSERT INTO facts (article_id, amount) VALUES (1, 4200) RETURNING id`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	if l := sse.waitLine(t, "data: ", 10*time.Second); !strings.Contains(l, `"type":"budget_fact_created"`) || !strings.Contains(l, fmt.Sprintf(`"id":%d,`, id)) {
		t.Fatalf("through nginx: %s, want the fact %d", l, id)
	}
}
