// Budget real-time client, served by the gateway at /api/v1/budget/client.js.
// Plain JavaScript, no build step, no dependency:
//
//   <script src="/api/v1/budget/client.js"></script>
//   const rt = BudgetRealtime.connect();             // same origin, defaults below
//   rt.on('budget_fact_created', (ev) => addRow(ev.data));
//   rt.on('reset', (r) => refetchEverything(r.reason));
//
// It opens the WebSocket (/ws), resumes from the last event id after every
// disconnect (with capped, jittered exponential backoff), and falls back to
// Server-Sent Events (/events) when WebSockets keep failing, then to
// long-polling (/poll) when SSE does too; on a fallback it tries the better
// transport again every `upgradeMs`. Handlers get every event once, in
// commit order, whichever transport carries it. See the gateway's README.
(function (root) {
  'use strict';

  const DEFAULTS = {
    base: '/api/v1/budget', // URL prefix of the gateway's routes, relative to the page or absolute
    token: undefined,       // () => token or Promise of one, null for none; default: POST {base}/ws/token
    credentials: 'same-origin', // fetch credentials for /ws/token, /events and /poll (the access_token cookie)
    lastEventId: null,      // resume from this id (stored from an earlier page, say)
    transports: ['ws', 'sse', 'poll'], // in order of preference
    attempts: 3,            // failed opens in a row before falling back to the next transport
    backoffMs: 500,         // first reconnect delay; doubles per failure, jittered
    backoffMaxMs: 30000,    // reconnect delay cap
    staleMs: 45000,         // reconnect after this long without a byte (the gateway pings every 10-15 s)
    pollTimeout: 25,        // seconds a long-poll may be held
    upgradeMs: 300000,      // on a fallback transport, try the preferred one again after this long
  };

  class Unauthorized extends Error {
    constructor(route, status) {
      super(route + ' answered ' + status);
      this.route = route;
      this.status = status;
    }
  }

  // toMicros turns an event's timestamp (ISO-8601 with microseconds on the
  // WebSocket and SSE, unix seconds on /poll) into integer microseconds:
  // Date keeps only milliseconds, and /poll's `since` needs the exact value.
  function toMicros(ts) {
    if (typeof ts === 'number') return Math.round(ts * 1e6);
    const m = /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?Z$/.exec(ts || '');
    if (!m) return null;
    const ms = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]);
    return ms * 1000 + Number((m[7] || '').padEnd(6, '0'));
  }

  class Client {
    constructor(opts) {
      this.opts = Object.assign({}, DEFAULTS, opts || {});
      this.state = 'idle';        // idle, connecting, open, waiting, closed, unauthorized
      this.transport = null;      // 'ws', 'sse' or 'poll' while connecting or open
      this.lastEventId = this.opts.lastEventId || null;
      this._handlers = new Map();
      // The commit time of the last event and the ids delivered with it (one
      // transaction): /poll resumes by time, so it asks again from just
      // before that commit and these ids keep the overlap from repeating.
      this._lastMicros = null;
      this._lastGroup = new Set();
      this._level = 0;            // index into opts.transports
      this._failures = this.opts.transports.map(() => 0);
      this._retry = 0;            // reconnects since the last successful open
      this._stopped = false;
      this._upgrade = false;
      this._upgradeTimer = null;
      this._abort = () => {};
      this._wake = null;
    }

    // on registers fn for events of type, '*' for every event, 'reset' for
    // the gateway's resets ({reason, id}: refetch your state), 'state' for
    // connection changes ({state, transport}) and 'error' for a refusal
    // ({route, status}: the client has stopped).
    on(type, fn) {
      if (!this._handlers.has(type)) this._handlers.set(type, []);
      this._handlers.get(type).push(fn);
      return this;
    }

    off(type, fn) {
      const fns = this._handlers.get(type);
      if (fns) this._handlers.set(type, fns.filter((f) => f !== fn));
      return this;
    }

    // close stops the client for good.
    close() {
      this._stopped = true;
      this._abort();
      clearTimeout(this._upgradeTimer);
      if (this._wake) this._wake();
      this._setState('closed', null);
    }

    _emit(type, payload) {
      for (const fn of this._handlers.get(type) || []) {
        try {
          fn(payload);
        } catch (e) {
          // One failing handler must not stop the stream for the others.
          console.error('BudgetRealtime handler for ' + type + ':', e);
        }
      }
    }

    _setState(state, transport) {
      if (state === this.state && transport === this.transport) return;
      this.state = state;
      this.transport = transport;
      this._emit('state', { state: state, transport: transport });
    }

    _deliver(f, via) {
      const micros = toMicros(f.timestamp);
      if (f.id) {
        if (micros !== null && micros === this._lastMicros && this._lastGroup.has(f.id)) return; // already delivered
        if (micros !== this._lastMicros) {
          this._lastMicros = micros;
          this._lastGroup = new Set();
        }
        this._lastGroup.add(f.id);
        this.lastEventId = f.id;
      }
      const ev = { id: f.id, type: f.type, data: f.data, timestamp: f.timestamp, truncated: !!f.truncated, via: via };
      this._emit(f.type, ev);
      this._emit('*', ev);
    }

    _reset(reason, id) {
      // The reset carries the head's id (empty for an empty log): resuming
      // from it is exact. Its time is not a commit time, so /poll cannot
      // resume by time until the next event.
      this.lastEventId = id || null;
      this._lastMicros = null;
      this._lastGroup = new Set();
      this._emit('reset', { reason: reason, id: id || null });
    }

    _opened(transport) {
      this._retry = 0;
      this._failures[this._level] = 0;
      this._setState('open', transport);
      clearTimeout(this._upgradeTimer);
      if (this._level > 0 && this.opts.upgradeMs > 0) {
        this._upgradeTimer = setTimeout(() => {
          this._upgrade = true;
          this._abort();
        }, this.opts.upgradeMs);
      }
    }

    // _stale calls fn when touch has not been called for staleMs.
    _stale(fn) {
      let t = setTimeout(fn, this.opts.staleMs);
      return {
        touch: () => {
          clearTimeout(t);
          t = setTimeout(fn, this.opts.staleMs);
        },
        stop: () => clearTimeout(t),
      };
    }

    _sleep(ms) {
      return new Promise((resolve) => {
        const t = setTimeout(done, ms);
        const self = this;
        function done() {
          clearTimeout(t);
          self._wake = null;
          resolve();
        }
        this._wake = done;
      });
    }

    _delay() {
      const d = Math.min(this.opts.backoffMaxMs, this.opts.backoffMs * Math.pow(2, this._retry++));
      return d / 2 + Math.random() * (d / 2); // jitter: replicas are not hit by every page at once
    }

    _url(path) {
      return new URL(this.opts.base.replace(/\/$/, '') + path, root.location.href);
    }

    async _run() {
      const names = this.opts.transports;
      while (!this._stopped) {
        const name = names[this._level];
        this._setState('connecting', name);
        let opened = false;
        try {
          opened = await this['_' + name]();
        } catch (e) {
          if (!(e instanceof Unauthorized)) throw e;
          this._stopped = true;
          clearTimeout(this._upgradeTimer);
          this._setState('unauthorized', null);
          this._emit('error', { route: e.route, status: e.status });
          return;
        }
        this._abort = () => {};
        clearTimeout(this._upgradeTimer);
        if (this._stopped) return;
        if (this._upgrade) {
          // Try the preferred transports once each on the way back down.
          this._upgrade = false;
          for (let i = 0; i < this._level; i++) this._failures[i] = this.opts.attempts - 1;
          this._level = 0;
          continue;
        }
        if (!opened && ++this._failures[this._level] >= this.opts.attempts && this._level < names.length - 1) {
          this._level++;
          continue; // the next transport at once: this one is not coming back soon
        }
        this._setState('waiting', null);
        await this._sleep(this._delay());
      }
    }

    // _token gets the WebSocket token: from opts.token, or from POST
    // /ws/token with the cookie (404: the gateway runs without auth or does
    // not mint tokens, so none is sent).
    async _token() {
      if (this.opts.token === null) return null;
      if (typeof this.opts.token === 'function') return await this.opts.token();
      const resp = await fetch(this._url('/ws/token'), { method: 'POST', credentials: this.opts.credentials, cache: 'no-store' });
      if (resp.status === 401) throw new Unauthorized('ws/token', 401);
      if (resp.status === 404 || resp.status === 405) return null;
      if (!resp.ok) throw new Error('ws/token answered ' + resp.status);
      return (await resp.json()).token;
    }

    // Each transport resolves when its connection ends, with whether it
    // opened, and throws Unauthorized on a 401.
    async _ws() {
      let token;
      try {
        token = await this._token();
      } catch (e) {
        if (e instanceof Unauthorized) throw e;
        return false;
      }
      if (this._stopped) return false;
      const u = this._url('/ws');
      u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
      if (token) u.searchParams.set('token', token);
      if (this.lastEventId) u.searchParams.set('last_event_id', this.lastEventId);
      // Events queued together on the gateway come as one frame holding an
      // array of them (each frame is still handled below one by one).
      u.searchParams.set('batch', '1');
      return new Promise((resolve) => {
        let opened = false;
        let ws;
        try {
          ws = new WebSocket(u.toString());
        } catch (e) {
          resolve(false);
          return;
        }
        const stale = this._stale(() => ws.close(4000, 'stale'));
        this._abort = () => ws.close(1000, 'client');
        ws.onmessage = (m) => {
          stale.touch();
          let f;
          try {
            f = JSON.parse(m.data);
          } catch (e) {
            return;
          }
          for (const one of Array.isArray(f) ? f : [f]) {
            switch (one.type) {
              case 'connected':
                opened = true;
                this._opened('ws');
                break;
              case 'reset':
                this._reset(one.data && one.data.reason, one.id);
                break;
              case 'ping':
              case 'pong':
              case 'online_status':
                break;
              default:
                if (opened) this._deliver(one, 'ws');
            }
          }
        };
        ws.onclose = () => {
          stale.stop();
          resolve(opened);
        };
      });
    }

    async _sse() {
      const ctrl = new AbortController();
      this._abort = () => ctrl.abort();
      const headers = { Accept: 'text/event-stream' };
      if (this.lastEventId) headers['Last-Event-ID'] = this.lastEventId;
      let resp;
      try {
        resp = await fetch(this._url('/events'), { headers: headers, credentials: this.opts.credentials, cache: 'no-store', signal: ctrl.signal });
      } catch (e) {
        return false;
      }
      if (resp.status === 401) throw new Unauthorized('events', 401);
      if (!resp.ok || !(resp.headers.get('Content-Type') || '').startsWith('text/event-stream')) {
        ctrl.abort();
        return false;
      }
      this._opened('sse');
      const stale = this._stale(() => ctrl.abort());
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      let event = '';
      let data = [];
      try {
        for (;;) {
          const r = await reader.read();
          if (r.done) break;
          stale.touch();
          buf += r.value;
          let i;
          while ((i = buf.indexOf('\n')) >= 0) {
            let line = buf.slice(0, i);
            buf = buf.slice(i + 1);
            if (line.endsWith('\r')) line = line.slice(0, -1);
            if (line === '') {
              // A blank line ends a message; a message cut off by the end
              // of the stream is dropped, so its id is never taken.
              if (data.length > 0) this._sseMessage(event, data.join('\n'));
              event = '';
              data = [];
              continue;
            }
            if (line[0] === ':') continue; // heartbeat
            const c = line.indexOf(':');
            const field = c < 0 ? line : line.slice(0, c);
            let value = c < 0 ? '' : line.slice(c + 1);
            if (value[0] === ' ') value = value.slice(1);
            if (field === 'event') event = value;
            else if (field === 'data') data.push(value);
            // id: the same id is in the JSON data; retry: we keep our own backoff.
          }
        }
      } catch (e) {
        // aborted, or the connection broke: reconnect
      } finally {
        stale.stop();
      }
      return true;
    }

    _sseMessage(event, data) {
      let f;
      try {
        f = JSON.parse(data);
      } catch (e) {
        return;
      }
      if (event === 'reset' || f.type === 'reset') this._reset(f.data && f.data.reason, f.id);
      else this._deliver(f, 'sse');
    }

    async _poll() {
      const ctrl = new AbortController();
      this._abort = () => ctrl.abort();
      let opened = false;
      // /poll resumes by commit time, not by id. From a known commit time:
      // ask again from just before it (the overlap is filtered out). From
      // an id alone (after a reset): read the replay window and skip up to
      // that id. From nothing: start at the newest event.
      let since = null;
      let seek = null;
      if (this._lastMicros !== null) since = ((this._lastMicros - 1) / 1e6).toFixed(6);
      else if (this.lastEventId) {
        since = '0';
        seek = this.lastEventId;
      }
      for (;;) {
        // since=1e11 is beyond every commit: the answer is empty and its
        // server_time is the newest event's commit time.
        const q = since === null ? 'since=100000000000&timeout=0' : 'since=' + since + '&timeout=' + (seek ? 0 : this.opts.pollTimeout);
        let resp;
        let body;
        // A poll unanswered well past its timeout is on a dead link.
        const dead = setTimeout(() => ctrl.abort(), this.opts.pollTimeout * 1000 + 15000);
        try {
          resp = await fetch(this._url('/poll?' + q), { credentials: this.opts.credentials, cache: 'no-store', signal: ctrl.signal });
          if (resp.status === 401) throw new Unauthorized('poll', 401);
          if (!resp.ok) return opened;
          body = await resp.json();
        } catch (e) {
          if (e instanceof Unauthorized) throw e;
          return opened;
        } finally {
          clearTimeout(dead);
        }
        if (!opened) {
          opened = true;
          this._opened('poll');
        }
        let evs = body.events || [];
        if (seek) {
          const i = evs.findIndex((e) => e.id === seek);
          if (i >= 0) {
            evs = evs.slice(i + 1);
            seek = null;
          } else if (evs.length === 0) {
            seek = null; // the id has left the replay window
            this._reset('expired', null);
          } else {
            evs = [];
          }
        }
        for (const e of evs) this._deliver(e, 'poll');
        since = String(body.server_time);
        if (this._stopped || this._upgrade) return opened;
      }
    }
  }

  root.BudgetRealtime = {
    // connect starts a client on the next tick, so handlers registered right
    // after it see every event.
    connect(opts) {
      const c = new Client(opts);
      Promise.resolve().then(() => c._run()).catch((e) => console.error('BudgetRealtime:', e));
      return c;
    },
    Client: Client,
  };
})(typeof window !== 'undefined' ? window : this);
