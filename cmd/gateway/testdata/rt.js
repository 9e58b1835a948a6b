// A real-time client that behaves as the budget app's client does (see the
// gateway README): it fetches a short-lived token with the access_token
// cookie, opens /api/v1/budget/ws?token=..., pings and watches for pongs,
// reconnects with capped, jittered exponential backoff (refetching the token
// each time), falls back to long-polling /api/v1/budget/poll when the socket
// cannot be opened, and disables itself on 401. Browser tests drive it
// through app.html; it exposes its state as window.__rt.
(function () {
  'use strict';

  class Disabled extends Error {}

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  class RealtimeClient {
    constructor(opts) {
      this.opts = Object.assign({
        pingMs: 15000,        // client ping interval
        pongTimeoutMs: 20000, // close the socket after this long without a pong
        staleMs: 45000,       // close the socket after this long without any server message
        attempts: 5,          // failed opens in a row before falling back to polling
        backoffMs: 1000,      // first reconnect delay
        backoffMaxMs: 30000,  // reconnect delay cap
        fallbackFast: false,  // fall back on the first failed open
        pollTimeout: 25,      // seconds the server may hold a poll
        pollGapMs: 100,       // pause between polls
        startWith: 'ws',      // 'poll' starts in long-poll mode
        resume: false,        // send ?last_event_id= when reconnecting (a gateway feature)
        firstToken: null,     // use this token for the first open instead of fetching one
      }, opts || {});
      this.handlers = new Map();
      this.state = 'idle';        // idle, connecting, open, waiting, polling, disabled
      this.transport = 'ws';      // 'ws' or 'poll'
      this.disabledReason = null;
      this.userId = null;
      this.connectionId = null;
      this.online = null;
      this.events = [];           // every event dispatched, in arrival order
      this.failures = 0;          // failed opens in a row
      this.opens = 0;             // sockets that reached 'connected'
      this.tokenFetches = 0;
      this.closes = [];           // {code, reason, opened}
      this.pongs = 0;
      this.serverPings = 0;
      this.polls = 0;             // completed polls
      this.pollInFlight = false;
      this.pollStartedAt = 0;
      this.since = null;
      this.lastEventId = null;
      this.log = [];
      this.ws = null;
      this.timers = [];
      this.retryTimer = null;
    }

    on(type, fn) {
      if (!this.handlers.has(type)) this.handlers.set(type, []);
      this.handlers.get(type).push(fn);
      return this;
    }

    note(...args) {
      const line = new Date().toISOString() + ' ' + args.map((a) => typeof a === 'string' ? a : JSON.stringify(a)).join(' ');
      this.log.push(line);
      if (this.log.length > 500) this.log.shift();
      console.log('[rt] ' + line);
    }

    start() {
      if (this.opts.startWith === 'poll') this.startPolling('asked to start with polling');
      else this.connect();
    }

    disable(reason) {
      this.note('disabled:', reason);
      this.state = 'disabled';
      this.disabledReason = reason;
      clearTimeout(this.retryTimer);
      this.stopTimers();
      if (this.ws) {
        const ws = this.ws;
        this.ws = null;
        ws.onclose = null;
        ws.close();
      }
    }

    async fetchToken() {
      this.tokenFetches++;
      let r;
      try {
        r = await fetch('/api/v1/budget/ws/token', { method: 'POST', credentials: 'same-origin', cache: 'no-store' });
      } catch (e) {
        throw new Error('ws/token: ' + e.message);
      }
      if (r.status === 401) throw new Disabled('ws/token answered 401');
      if (!r.ok) throw new Error('ws/token answered ' + r.status);
      const body = await r.json();
      if (!body || typeof body.token !== 'string') throw new Error('ws/token: no token in ' + JSON.stringify(body));
      return body.token;
    }

    async connect() {
      if (this.state === 'disabled' || this.transport !== 'ws') return;
      this.state = 'connecting';
      let token;
      try {
        if (this.opts.firstToken) {
          token = this.opts.firstToken;
          this.opts.firstToken = null;
        } else {
          token = await this.fetchToken();
        }
      } catch (e) {
        if (e instanceof Disabled) return this.disable(e.message);
        return this.openFailed(e.message);
      }
      if (this.state === 'disabled') return;
      const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
      let url = proto + '//' + location.host + '/api/v1/budget/ws?token=' + encodeURIComponent(token);
      if (this.opts.resume && this.lastEventId) url += '&last_event_id=' + encodeURIComponent(this.lastEventId);
      const ws = new WebSocket(url);
      this.ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        this.lastServerMessage = this.lastPong = Date.now();
        this.startTimers(ws);
      };
      ws.onmessage = (m) => {
        if (this.ws !== ws) return;
        this.lastServerMessage = Date.now();
        this.onFrame(m.data);
      };
      ws.onclose = (e) => {
        if (this.ws !== ws) return;
        this.ws = null;
        this.stopTimers();
        this.closes.push({ code: e.code, reason: e.reason, opened: opened });
        this.note('socket closed', e.code, e.reason, opened ? 'after open' : 'before open');
        if (this.state === 'disabled') return;
        if (e.code === 4001) return this.disable('closed with 4001'); // the app's "final" code
        if (!opened) return this.openFailed('socket closed before open: ' + e.code);
        this.scheduleReconnect(0);
      };
    }

    // abandon drops a socket that looks dead without waiting for a closing
    // handshake, and reconnects.
    abandon(ws, why) {
      if (this.ws !== ws) return;
      this.note('abandoning socket:', why);
      this.ws = null;
      this.stopTimers();
      ws.onclose = null;
      ws.close();
      this.closes.push({ code: 0, reason: why, opened: true });
      this.scheduleReconnect(0);
    }

    startTimers(ws) {
      this.stopTimers();
      this.timers.push(setInterval(() => {
        if (this.ws !== ws || ws.readyState !== WebSocket.OPEN) return;
        const now = Date.now();
        if (now - this.lastPong > this.opts.pongTimeoutMs) return this.abandon(ws, 'no pong for ' + (now - this.lastPong) + ' ms');
        ws.send(JSON.stringify({ type: 'ping' }));
      }, this.opts.pingMs));
      this.timers.push(setInterval(() => {
        if (Date.now() - this.lastServerMessage > this.opts.staleMs) this.abandon(ws, 'stale: no server message');
      }, Math.max(50, Math.min(1000, this.opts.staleMs / 4))));
    }

    stopTimers() {
      this.timers.forEach(clearInterval);
      this.timers = [];
    }

    checkOnline() {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: 'check_online' }));
    }

    onFrame(text) {
      let msg;
      try {
        msg = JSON.parse(text);
      } catch (e) {
        this.note('ignored invalid JSON', text);
        return;
      }
      const type = msg.type || msg.event;
      switch (type) {
        case 'connected':
          this.userId = msg.data && msg.data.user_id;
          this.connectionId = msg.data && msg.data.connection_id;
          this.failures = 0;
          this.opens++;
          this.state = 'open';
          this.note('connected', this.userId, this.connectionId);
          return;
        case 'ping':
          this.serverPings++;
          return;
        case 'pong':
          this.pongs++;
          this.lastPong = Date.now();
          return;
        case 'online_status':
          this.online = !!(msg.data && msg.data.online);
          return;
        case 'reset':
          if (msg.id) this.lastEventId = msg.id;
          this.note('reset', msg.data);
          return;
      }
      if (msg.id) this.lastEventId = msg.id;
      this.dispatch(msg, 'ws');
    }

    dispatch(msg, via) {
      const ev = { id: msg.id || null, type: msg.type || msg.event, data: msg.data, timestamp: msg.timestamp, via: via };
      this.events.push(ev);
      const fns = this.handlers.get(ev.type) || this.handlers.get('*') || [];
      for (const fn of fns) {
        try {
          fn(ev);
        } catch (e) {
          this.note('handler for', ev.type, 'threw', e.message);
        }
      }
    }

    openFailed(why) {
      this.failures++;
      this.note('open failed (' + this.failures + ' in a row):', why);
      if (this.opts.fallbackFast || this.failures >= this.opts.attempts) return this.startPolling('after ' + this.failures + ' failed opens');
      this.scheduleReconnect(this.failures);
    }

    // scheduleReconnect waits backoffMs * 2^n, capped, with jitter (half to
    // all of it), then reconnects.
    scheduleReconnect(n) {
      if (this.state === 'disabled') return;
      const full = Math.min(this.opts.backoffMaxMs, this.opts.backoffMs * Math.pow(2, n));
      const delay = Math.round(full / 2 + Math.random() * full / 2);
      this.state = 'waiting';
      this.note('reconnecting in', delay, 'ms');
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => this.connect(), delay);
    }

    startPolling(why) {
      if (this.transport === 'poll' || this.state === 'disabled') return;
      this.note('falling back to long-polling:', why);
      this.transport = 'poll';
      this.state = 'polling';
      clearTimeout(this.retryTimer);
      this.pollLoop();
    }

    async pollLoop() {
      if (this.since === null) this.since = Date.now() / 1000;
      let errors = 0;
      while (this.state === 'polling') {
        const url = '/api/v1/budget/poll?since=' + encodeURIComponent(String(this.since)) + '&timeout=' + this.opts.pollTimeout;
        this.pollInFlight = true;
        this.pollStartedAt = Date.now();
        let r, body;
        try {
          r = await fetch(url, { credentials: 'same-origin', cache: 'no-store' });
          if (r.ok) body = await r.json();
        } catch (e) {
          r = null;
          this.note('poll failed:', e.message);
        }
        this.pollInFlight = false;
        if (this.state !== 'polling') return;
        if (r && r.status === 401) return this.disable('poll answered 401');
        if (!r || !r.ok || !body || !Array.isArray(body.events)) {
          errors++;
          if (r) this.note('poll answered', r.status);
          await sleep(Math.min(this.opts.backoffMaxMs, this.opts.backoffMs * Math.pow(2, Math.min(errors, 10))));
          continue;
        }
        errors = 0;
        this.polls++;
        for (const ev of body.events) {
          if (ev.id) this.lastEventId = ev.id;
          this.dispatch(ev, 'poll');
        }
        if (typeof body.server_time === 'number') this.since = body.server_time;
        await sleep(this.opts.pollGapMs);
      }
    }

    snapshot() {
      return {
        state: this.state, transport: this.transport, disabledReason: this.disabledReason,
        userId: this.userId, connectionId: this.connectionId, online: this.online,
        failures: this.failures, opens: this.opens, tokenFetches: this.tokenFetches, closes: this.closes,
        pongs: this.pongs, serverPings: this.serverPings, polls: this.polls, pollInFlight: this.pollInFlight,
        events: this.events.length, log: this.log.slice(-40),
      };
    }
  }

  window.RealtimeClient = RealtimeClient;
})();
