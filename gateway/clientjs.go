package gateway

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"net/http"
	"time"
)

// clientJS is the browser client library for new frontends, served at
// /api/v1/budget/client.js: plain JavaScript, so pages load it without a
// build step.
//
//go:embed client.js
var clientJS []byte

// clientJSETag changes with the file, so browsers revalidate (no-cache) and
// get a 304 until the gateway ships a new client.
var clientJSETag = func() string {
	sum := sha256.Sum256(clientJS)
	return `"` + hex.EncodeToString(sum[:8]) + `"`
}()

func serveClientJS(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/javascript; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("ETag", clientJSETag)
	http.ServeContent(w, r, "client.js", time.Time{}, bytes.NewReader(clientJS))
}
