package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// ErrUnauthorized is any failure to authenticate; the wrapped error says why
// (for logs only: clients get a bare 401 or 403).
var ErrUnauthorized = errors.New("unauthorized")

// User is an authenticated user of the app.
type User struct {
	ID int64
	// Claims holds the values of the claims visibility rules read (see
	// Rule), canonical; "user" is the id.
	Claims map[string][]string
}

// Auth checks the app's HS256 tokens: the short-lived WebSocket token
// (claims sub, type "ws", exp) and the access_token cookie or Bearer token
// (claims user_id, exp). A nil Secret means open mode: every request is
// user 0.
type Auth struct {
	Secret []byte
	// Active, when set, is asked whether the user may still connect (the app
	// requires t_d_user.is_active); an error refuses the request.
	Active func(ctx context.Context, userID int64) (bool, error)
	// Now defaults to time.Now; tests move it.
	Now func() time.Time
	// Claims are the token claims visibility rules read, besides the user's
	// id; they are kept in User.Claims.
	Claims []string
}

// Open reports whether the gateway runs without authentication.
func (a *Auth) Open() bool { return a == nil || len(a.Secret) == 0 }

func (a *Auth) parse(token string) (jwt.MapClaims, error) {
	// Numbers stay as written (json.Number): through float64, a user id
	// above 2^53 would read as its neighbour's.
	opts := []jwt.ParserOption{jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithJSONNumber()}
	if a.Now != nil {
		opts = append(opts, jwt.WithTimeFunc(a.Now))
	}
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(token, claims, func(*jwt.Token) (any, error) { return a.Secret, nil }, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnauthorized, err)
	}
	return claims, nil
}

// WSToken authenticates the ?token= of a WebSocket upgrade.
func (a *Auth) WSToken(ctx context.Context, token string) (User, error) {
	if a.Open() {
		return User{}, nil
	}
	if token == "" {
		return User{}, fmt.Errorf("%w: no token", ErrUnauthorized)
	}
	claims, err := a.parse(token)
	if err != nil {
		return User{}, err
	}
	if typ, _ := claims["type"].(string); typ != "ws" {
		return User{}, fmt.Errorf("%w: token type %q, want ws", ErrUnauthorized, typ)
	}
	id, err := userID(claims["sub"])
	if err != nil {
		return User{}, fmt.Errorf("%w: sub: %w", ErrUnauthorized, err)
	}
	return a.check(ctx, a.user(id, claims))
}

// Request authenticates a cookie route: the access_token cookie, or an
// Authorization: Bearer header.
func (a *Auth) Request(r *http.Request) (User, error) {
	if a.Open() {
		return User{}, nil
	}
	token := ""
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, rest, _ := strings.Cut(h, " ")
		if strings.EqualFold(scheme, "Bearer") {
			token = strings.TrimSpace(rest)
		}
	}
	if token == "" {
		if c, err := r.Cookie("access_token"); err == nil {
			token = c.Value
		}
	}
	if token == "" {
		return User{}, fmt.Errorf("%w: no access token", ErrUnauthorized)
	}
	claims, err := a.parse(token)
	if err != nil {
		return User{}, err
	}
	id, err := userID(claims["user_id"])
	if err != nil {
		return User{}, fmt.Errorf("%w: user_id: %w", ErrUnauthorized, err)
	}
	return a.check(r.Context(), a.user(id, claims))
}

// user builds the authenticated user with the claims rules need.
func (a *Auth) user(id int64, claims jwt.MapClaims) User {
	u := User{ID: id, Claims: map[string][]string{ClaimUser: {strconv.FormatInt(id, 10)}}}
	for _, name := range a.Claims {
		if name != ClaimUser {
			u.Claims[name] = claimValues(claims[name])
		}
	}
	return u
}

func (a *Auth) check(ctx context.Context, u User) (User, error) {
	if a.Active == nil {
		return u, nil
	}
	ok, err := a.Active(ctx, u.ID)
	if err != nil {
		return User{}, fmt.Errorf("%w: check user %d: %w", ErrUnauthorized, u.ID, err)
	}
	if !ok {
		return User{}, fmt.Errorf("%w: user %d is not active", ErrUnauthorized, u.ID)
	}
	return u, nil
}

// MintWS signs a WebSocket token for u, as the backend's /ws/token does.
func (a *Auth) MintWS(u User, ttl time.Duration) (string, error) {
	now := time.Now()
	if a.Now != nil {
		now = a.Now()
	}
	claims := jwt.MapClaims{
		"sub": strconv.FormatInt(u.ID, 10), "type": "ws",
		"iat": now.Unix(), "exp": now.Add(ttl).Unix(),
	}
	// The claims visibility rules read travel on, so the socket sees what
	// the cookie's owner may see.
	for _, name := range a.Claims {
		if vs, ok := u.Claims[name]; ok && name != ClaimUser {
			claims[name] = vs
		}
	}
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	s, err := t.SignedString(a.Secret)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return s, nil
}

// userID accepts the id as a decimal string or a JSON number whose exact
// value is an integer (7, 7.0, 7e0).
func userID(v any) (int64, error) {
	switch v := v.(type) {
	case string:
		return strconv.ParseInt(v, 10, 64)
	case json.Number:
		if n, ok := exactInt64(v); ok {
			return n, nil
		}
		return 0, fmt.Errorf("%s is not a 64-bit integer", v)
	}
	return 0, fmt.Errorf("missing or not an id: %v", v)
}

// exactInt64 is the value of a JSON number when it is exactly an integer in
// int64's range.
func exactInt64(n json.Number) (int64, bool) {
	s := string(n)
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return i, true
	}
	// 7.0 or 7e0 are exact only as rationals; bound the exponent first, or
	// 1e999999999 would cost gigabytes.
	if len(s) > 64 {
		return 0, false
	}
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		if e, err := strconv.Atoi(s[i+1:]); err != nil || e < -64 || e > 64 {
			return 0, false
		}
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok || !r.IsInt() || !r.Num().IsInt64() {
		return 0, false
	}
	return r.Num().Int64(), true
}
