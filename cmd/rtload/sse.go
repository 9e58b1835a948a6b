package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// sseTransport opens /api/v1/budget/events streams. The parser is a line
// reader over a reused buffer rather than go-sse's, which allocates per
// event: the tool must stay cheap per delivery. It takes what the count
// needs, the data line (whose JSON carries the id too).
type sseTransport struct {
	url    string
	token  string
	batch  bool
	client *http.Client
}

func newSSETransport(base, token string, batch bool, src *net.TCPAddr) *sseTransport {
	nd := dialer(src)
	return &sseTransport{
		url: strings.TrimRight(base, "/") + "/api/v1/budget/events", token: token, batch: batch,
		client: &http.Client{Transport: &http.Transport{
			DialContext: nd.DialContext, DisableCompression: true, MaxIdleConnsPerHost: -1,
			ForceAttemptHTTP2: false,
		}},
	}
}

func (t *sseTransport) open(ctx context.Context, lastID string) (stream, error) {
	q := url.Values{}
	if t.token != "" {
		q.Set("token", t.token)
	}
	if t.batch {
		q.Set("batch", "1")
	}
	u := t.url
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	// The stream outlives ctx, which bounds only the connect; it is closed
	// by close.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, u, nil)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("build request: %w", err)
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open stream: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		return nil, statusError(resp)
	}
	return &sseStream{body: resp.Body, r: bufio.NewReaderSize(resp.Body, 4096), cancel: cancel}, nil
}

type sseStream struct {
	body   io.ReadCloser
	r      *bufio.Reader
	cancel context.CancelFunc
	long   []byte // a line longer than the reader's buffer, assembled
}

var dataField = []byte("data: ")

func (s *sseStream) read(fn func([]byte)) error {
	for {
		line, err := s.r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			s.long = append(s.long[:0], line...)
			for err == bufio.ErrBufferFull {
				line, err = s.r.ReadSlice('\n')
				s.long = append(s.long, line...)
			}
			line = s.long
		}
		if err != nil {
			return err
		}
		// An event's JSON has no newline (it is compact), so it is one data
		// line; an event cut by a broken connection never gets here.
		if bytes.HasPrefix(line, dataField) {
			fn(line[len(dataField):])
		}
	}
}

func (s *sseStream) close() {
	s.cancel()
	_ = s.body.Close()
}
