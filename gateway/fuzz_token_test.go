package gateway

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// signHS256 signs claims (any bytes) as the backend would.
func signHS256(secret, claims []byte) string {
	enc := base64.RawURLEncoding
	s := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(claims)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(s))
	return s + "." + enc.EncodeToString(mac.Sum(nil))
}

// exactInt is the integer a claim states, as written: a decimal string, or
// a JSON number whose exact value is an integer in int64's range.
func exactInt(v any) (int64, bool) {
	switch v := v.(type) {
	case string:
		n, err := strconv.ParseInt(v, 10, 64)
		return n, err == nil
	case json.Number:
		r, ok := smallRat(v.String())
		if !ok || !r.IsInt() || !r.Num().IsInt64() {
			return 0, false
		}
		return r.Num().Int64(), true
	}
	return 0, false
}

// smallRat is the exact value of a JSON number whose exponent is small
// (|e| <= 64, as the gateway reads them); false for others.
func smallRat(s string) (*big.Rat, bool) {
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		if e, err := strconv.Atoi(s[i+1:]); err != nil || e < -64 || e > 64 {
			return nil, false
		}
	}
	return new(big.Rat).SetString(s)
}

// sameNumber reports whether the canonical string s is exactly the JSON
// number n.
func sameNumber(s string, n json.Number) bool {
	if s == n.String() {
		return true
	}
	a, ok1 := smallRat(s)
	b, ok2 := smallRat(n.String())
	return ok1 && ok2 && a.Cmp(b) == 0
}

// Tokens are signed by the backend, but what they say must be read
// exactly: a user id or a claim value read as another (a JSON number
// rounded through float64, say) would show one user another's events. Any
// claims, signed with the secret: an accepted token's user id and claim
// values are exactly what it states; and tokens for any id round-trip.
func FuzzTokenClaims(f *testing.F) {
	now := time.Unix(1767225600, 0)
	for _, c := range []string{
		`{"user_id":7,"exp":1767225660}`, `{"user_id":"7","exp":1767225660,"families":[10,"11",true,{},12.5]}`,
		`{"sub":"7","type":"ws","exp":1767225660}`, `{"sub":7,"type":"ws","exp":1767225660}`,
		`{"user_id":9007199254740993,"exp":1767225660,"families":9007199254740993}`,
		`{"user_id":1e3,"exp":1767225660}`, `{"user_id":7,"exp":1767225600}`, `{"user_id":7}`, `{"user_id":7,"exp":"1767225660"}`,
		`{"user_id":7,"exp":1767225660,"iat":1767225700}`, `{"user_id":7,"exp":1767225660,"nbf":1767225700}`,
		`{"user_id":-0,"exp":1767225660}`, `{"user_id":1.0000000000000001,"exp":1767225660}`, `[]`, `nul`,
	} {
		f.Add([]byte(c), int64(7), int64(10))
	}
	f.Add([]byte(`{}`), int64(9007199254740993), int64(-9007199254740993))
	secret := []byte("fuzz-secret")
	a := &Auth{Secret: secret, Now: func() time.Time { return now }, Claims: []string{ClaimUser, "families"}}
	f.Fuzz(func(t *testing.T, claims []byte, id, family int64) {
		var m map[string]any
		d := json.NewDecoder(bytes.NewReader(claims))
		d.UseNumber()
		isObject := d.Decode(&m) == nil && m != nil
		tok := signHS256(secret, claims)

		if u, err := a.WSToken(t.Context(), tok); err == nil {
			sub, ok := exactInt(m["sub"])
			if !isObject || m["type"] != "ws" || !ok || u.ID != sub {
				t.Fatalf("WebSocket token %s accepted as user %d", claims, u.ID)
			}
			checkClaims(t, claims, m, u)
		}
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		if u, err := a.Request(r); err == nil {
			uid, ok := exactInt(m["user_id"])
			if !isObject || !ok || u.ID != uid {
				t.Fatalf("access token %s accepted as user %d", claims, u.ID)
			}
			checkClaims(t, claims, m, u)
		}

		// The backend's access token, with numbers as JSON numbers.
		access := fmt.Appendf(nil, `{"user_id":%d,"exp":%d,"families":[%d,"%d"]}`, id, now.Unix()+60, family, family)
		r = httptest.NewRequest(http.MethodGet, "/", nil)
		r.AddCookie(&http.Cookie{Name: "access_token", Value: signHS256(secret, access)})
		u, err := a.Request(r)
		fam := strconv.FormatInt(family, 10)
		if err != nil || u.ID != id || !slices.Equal(u.Claims["families"], []string{fam, fam}) || !slices.Equal(u.Claims[ClaimUser], []string{strconv.FormatInt(id, 10)}) {
			t.Fatalf("access token %s read as %+v, %v", access, u, err)
		}
		// The WebSocket token the gateway mints from it says the same.
		ws, err := a.MintWS(u, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := a.WSToken(t.Context(), ws); err != nil || got.ID != id || !slices.Equal(got.Claims["families"], u.Claims["families"]) {
			t.Fatalf("minted token for %+v read as %+v, %v", u, got, err)
		}
	})
}

// checkClaims: the families claim values are the token's scalars, exactly,
// in order.
func checkClaims(t *testing.T, claims []byte, m map[string]any, u User) {
	t.Helper()
	var want []any
	switch v := m["families"].(type) {
	case []any:
		want = v
	case nil:
	default:
		want = []any{v}
	}
	got := u.Claims["families"]
	i := 0
	for _, w := range want {
		switch w := w.(type) {
		case string, bool, json.Number:
			if i >= len(got) {
				t.Fatalf("token %s: families %q lack %v", claims, got, w)
			}
			ok := false
			switch w := w.(type) {
			case string:
				ok = got[i] == w
			case bool:
				ok = got[i] == strconv.FormatBool(w)
			case json.Number:
				ok = sameNumber(got[i], w)
			}
			if !ok {
				t.Fatalf("token %s: family %v read as %q", claims, w, got[i])
			}
			i++
		}
	}
	if i != len(got) {
		t.Fatalf("token %s: families %q, want %d values", claims, got, i)
	}
}
