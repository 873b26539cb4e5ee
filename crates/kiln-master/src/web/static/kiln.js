// Kiln's web UI: live updates over /api/v1/ws, the log viewer, the upload
// form. Every page works without this script; it only makes pages live.
// No inline script, no eval, no HTML built from data (textContent only).
'use strict';
(function () {
  const body = document.body;
  const page = body.dataset.page;
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  // ---------------------------------------------------------------- live
  // One websocket per page. Subscriptions are sent again after every
  // reconnect, then `resume` with the last event id seen: the master sends
  // exactly the events missed meanwhile, or `reload` when it no longer
  // has them.
  const live = {
    ws: null, subs: [], last: Number(body.dataset.lastEvent || 0), tries: 0,
    onEvent: null, onLog: null, onLogEnd: null,
    subscribe(topic) { this.subs.push(topic); this.send({ subscribe: topic }); },
    send(m) { if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(m)); },
    start() {
      const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
      const ws = new WebSocket(proto + '//' + location.host + '/api/v1/ws');
      this.ws = ws;
      const dot = $('#live');
      ws.onopen = () => {
        this.tries = 0;
        if (dot) { dot.hidden = false; dot.classList.remove('off'); dot.title = 'live'; }
        for (const s of this.subs) {
          const t = typeof s === 'function' ? s() : s;
          if (t) ws.send(JSON.stringify({ subscribe: t }));
        }
        if (this.last) ws.send(JSON.stringify({ resume: this.last }));
      };
      ws.onmessage = (e) => {
        let m;
        try { m = JSON.parse(e.data); } catch (_) { return; }
        if (m.reload) { location.reload(); return; }
        if (m.event) {
          if (m.event.id <= this.last) return;
          this.last = m.event.id;
          if (this.onEvent) this.onEvent(m.event);
        } else if (m.log && this.onLog) this.onLog(m.log);
        else if (m.log_end && this.onLogEnd) this.onLogEnd(m.log_end);
      };
      ws.onclose = () => {
        if (dot) { dot.hidden = false; dot.classList.add('off'); dot.title = 'reconnecting'; }
        const wait = Math.min(30000, 1000 * 2 ** this.tries++) * (0.5 + Math.random() / 2);
        setTimeout(() => this.start(), wait);
      };
    },
  };

  // What an event changes on any page: state badges and data-state.
  function applyEvent(e) {
    if (e.kind === 'build') {
      for (const el of $$('[data-build="' + e.build + '"] .bstate, #build-state[data-build="' + e.build + '"]')) setState(el, e.state);
    } else if (e.kind === 'job') {
      for (const row of $$('[data-job="' + e.job + '"]')) {
        if (row.dataset.state) row.dataset.state = e.state;
        for (const el of $$('.jstate', row)) setState(el, e.state);
        const w = $('.worker', row);
        if (w && e.worker) w.textContent = e.worker;
        const a = $('.attempt', row);
        if (a) a.textContent = e.attempt;
      }
      const js = $('#job-state[data-job="' + e.job + '"]');
      if (js) setState(js, e.state);
    } else if (e.kind === 'publish') {
      for (const el of $$('[data-build="' + e.build + '"] .pstate')) setState(el, e.state);
    }
  }
  function setState(el, s) {
    el.textContent = s;
    el.className = el.className.replace(/\bst-\S+/, 'st-' + s);
  }

  // The page's main part made again by the master (after events): the
  // structure (new rows, durations, artifacts) follows without a reload.
  let refreshTimer = null;
  function refreshSoon(ms) {
    if (refreshTimer) return;
    refreshTimer = setTimeout(async () => {
      refreshTimer = null;
      if (document.activeElement && document.activeElement.closest('main form')) return;
      try {
        const r = await fetch(location.href, { credentials: 'same-origin' });
        if (!r.ok) return;
        const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
        const fresh = doc.querySelector('main');
        if (fresh) { document.querySelector('main').replaceWith(fresh); tick(); }
      } catch (_) { /* the next event tries again */ }
    }, ms);
  }

  // Running jobs' progress moves on between events (display only).
  let ticking = null;
  function fmtDur(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
    if (s < 86400) return Math.floor(s / 3600) + 'h ' + Math.floor(s / 60) % 60 + 'm';
    return Math.floor(s / 86400) + 'd ' + Math.floor(s / 3600) % 24 + 'h';
  }
  function tick() {
    const els = $$('.progress[data-started]');
    if (!els.length) { if (ticking) { clearInterval(ticking); ticking = null; } return; }
    const now = Date.now();
    for (const el of els) {
      const elapsed = now - Number(el.dataset.started);
      const exp = Number(el.dataset.expected || 0);
      const e = $('.elapsed', el);
      if (e) e.textContent = fmtDur(elapsed);
      if (!exp) continue;
      const pct = Math.min(99, Math.floor(elapsed * 100 / exp));
      const p = $('progress', el);
      if (p) p.value = Math.min(elapsed, exp);
      const pc = $('.pct', el);
      if (pc) pc.textContent = pct + '%';
      const eta = $('.eta', el);
      if (eta) eta.textContent = exp > elapsed ? 'ETA ' + fmtDur(exp - elapsed) : 'longer than last time (' + fmtDur(exp) + ')';
    }
    if (!ticking) ticking = setInterval(tick, 1000);
  }

  // ---------------------------------------------------------------- the log
  // The lines live in an array; only those in view (and a margin) are in
  // the DOM, so a 50 MB log scrolls as smoothly as a short one.
  function logView(pre) {
    const job = Number(pre.dataset.job);
    let expect = Number(pre.dataset.next);   // the byte the next piece starts at
    let streaming = pre.dataset.active === '1';
    let first = Number(pre.dataset.firstLine);
    const lines = [];
    let partial = null;                      // the last line while it has no newline
    for (const l of $$('.l', pre)) {
      const a = l.firstElementChild;
      lines.push(l.textContent.slice(a ? a.textContent.length : 0).replace(/\n$/, ''));
    }
    if (lines.length && pre.dataset.openLine === '1') partial = lines.pop();

    // Measure a line, then go virtual.
    let lh = 0;
    const probe = $('.l', pre);
    lh = probe ? probe.getBoundingClientRect().height : 0;
    pre.textContent = '';
    pre.classList.add('virtual');
    const spacer = document.createElement('div');
    spacer.className = 'spacer';
    const win = document.createElement('div');
    win.className = 'win';
    pre.append(spacer, win);
    if (!lh) {
      const t = document.createElement('span');
      t.className = 'l';
      t.textContent = 'x';
      win.append(t);
      lh = t.getBoundingClientRect().height || 18;
      win.textContent = '';
    }
    const tools = $('#logtools');
    tools.hidden = false;
    const follow = $('#log-follow');
    let hit = -1;
    const count = () => lines.length + (partial !== null ? 1 : 0);
    const lineAt = (i) => (i < lines.length ? lines[i] : partial || '');
    const MAXH = 8e6;
    let scale = 1;
    let queued = false;

    function render() {
      queued = false;
      const n = count();
      scale = Math.min(1, MAXH / Math.max(1, n * lh));
      spacer.style.height = Math.ceil(n * lh * scale) + 'px';
      if (follow.checked) pre.scrollTop = pre.scrollHeight;
      const top = pre.scrollTop;
      const view = Math.ceil(pre.clientHeight / lh) + 1;
      let start;
      if (scale === 1) { start = Math.max(0, Math.floor(top / lh) - 40); win.style.top = start * lh + 'px'; }
      else { start = Math.min(Math.max(0, n - view), Math.floor(top / (lh * scale))); win.style.top = top + 'px'; }
      const end = Math.min(n, start + view + (scale === 1 ? 80 : 0));
      const frag = document.createDocumentFragment();
      for (let i = start; i < end; i++) {
        const no = first + i;
        const s = document.createElement('span');
        s.className = i === hit ? 'l hit' : 'l';
        s.id = 'L' + no;
        const a = document.createElement('a');
        a.href = '#L' + no;
        a.textContent = no;
        s.append(a, lineAt(i) + '\n');
        frag.append(s);
      }
      win.replaceChildren(frag);
    }
    const soon = () => { if (!queued) { queued = true; requestAnimationFrame(render); } };

    function add(t) {
      const parts = ((partial || '') + t).split('\n');
      partial = parts.pop();
      if (partial === '') partial = null;
      for (const p of parts) lines.push(p);
      const empty = $('#log-empty');
      if (empty && count()) empty.remove();
      soon();
    }
    function scrollToLine(i) {
      follow.checked = false;
      hit = i;
      pre.scrollTop = Math.max(0, i * lh * scale - pre.clientHeight / 3);
      soon();
    }
    let wantLine = 0;
    function gotoHash() {
      const m = /^#L(\d+)$/.exec(location.hash);
      if (!m) return;
      const no = Number(m[1]);
      if (no < first) { wantLine = no; loadAll(); return; }
      if (no - first < count()) scrollToLine(no - first);
      else wantLine = no;
    }
    function loadAll() {
      lines.length = 0; partial = null; first = 1; expect = 0; hit = -1;
      const cut = $('#log-cut');
      if (cut) cut.remove();
      $('#log-all').hidden = true;
      streaming = true;
      live.send({ subscribe: { log: job, offset: 0 } });
      soon();
    }

    pre.addEventListener('scroll', () => {
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 2 * lh;
      if (follow.checked !== atEnd) follow.checked = atEnd;
      soon();
    }, { passive: true });
    window.addEventListener('resize', soon);
    window.addEventListener('hashchange', gotoHash);
    follow.addEventListener('change', soon);
    $('#log-all').addEventListener('click', loadAll);

    // Search: the next (or previous) line holding the text, any case.
    const search = $('#log-search');
    const found = $('#log-found');
    function find(dir) {
      const q = search.value.toLowerCase();
      if (!q) { hit = -1; found.textContent = ''; soon(); return; }
      const n = count();
      for (let k = 1; k <= n; k++) {
        const i = ((hit < 0 ? (dir > 0 ? -1 : 0) : hit) + dir * k + n * 2) % n;
        if (lineAt(i).toLowerCase().includes(q)) { found.textContent = 'line ' + (first + i); scrollToLine(i); return; }
      }
      found.textContent = 'not found';
    }
    search.addEventListener('keydown', (e) => { if (e.key === 'Enter') { e.preventDefault(); find(e.shiftKey ? -1 : 1); } });
    $('#log-next').addEventListener('click', () => find(1));
    $('#log-prev').addEventListener('click', () => find(-1));

    live.onLog = (c) => {
      if (c.job !== job || c.offset !== expect) return;   // a piece of a replaced subscription
      expect = c.next;
      add(c.text);
      const size = $('#log-size');
      if (size) size.textContent = fmtSize(expect);
      if (wantLine && wantLine - first < count()) { const w = wantLine; wantLine = 0; scrollToLine(w - first); }
    };
    live.onLogEnd = (e) => {
      if (e.job !== job) return;
      if (partial !== null) { lines.push(partial); partial = null; soon(); }
    };
    // Follow the log from where the page ends (again after a reconnect);
    // the log of an ended job is only read when earlier lines are asked for.
    live.subs.push(() => (streaming ? { log: job, offset: expect } : null));
    render();
    if (location.hash) gotoHash();
    else if (follow.checked) { pre.scrollTop = pre.scrollHeight; soon(); }
  }
  function fmtSize(b) {
    const u = ['B', 'KiB', 'MiB', 'GiB'];
    let v = b, i = 0;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return i ? v.toFixed(1) + ' ' + u[i] : b + ' B';
  }

  // ---------------------------------------------------------------- submit
  // Hash the SRPM in the browser, upload it only if the master lacks it
  // (with a progress bar), then ask for the build.
  function sha256js() {
    const K = new Uint32Array([0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
      0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
      0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
      0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb,
      0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
      0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f,
      0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2]);
    const H = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
    const W = new Uint32Array(64);
    const buf = new Uint8Array(64);
    let fill = 0, total = 0;
    const rot = (x, n) => (x >>> n) | (x << (32 - n));
    function block(b) {
      for (let i = 0; i < 16; i++) W[i] = (b[i * 4] << 24) | (b[i * 4 + 1] << 16) | (b[i * 4 + 2] << 8) | b[i * 4 + 3];
      for (let i = 16; i < 64; i++) {
        const s0 = rot(W[i - 15], 7) ^ rot(W[i - 15], 18) ^ (W[i - 15] >>> 3);
        const s1 = rot(W[i - 2], 17) ^ rot(W[i - 2], 19) ^ (W[i - 2] >>> 10);
        W[i] = W[i - 16] + s0 + W[i - 7] + s1;
      }
      let [a, b2, c, d, e, f, g, h] = H;
      for (let i = 0; i < 64; i++) {
        const t1 = (h + (rot(e, 6) ^ rot(e, 11) ^ rot(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + W[i]) >>> 0;
        const t2 = ((rot(a, 2) ^ rot(a, 13) ^ rot(a, 22)) + ((a & b2) ^ (a & c) ^ (b2 & c))) >>> 0;
        h = g; g = f; f = e; e = (d + t1) >>> 0; d = c; c = b2; b2 = a; a = (t1 + t2) >>> 0;
      }
      H[0] += a; H[1] += b2; H[2] += c; H[3] += d; H[4] += e; H[5] += f; H[6] += g; H[7] += h;
    }
    return {
      update(data) {
        total += data.length;
        let i = 0;
        if (fill) { while (fill < 64 && i < data.length) buf[fill++] = data[i++]; if (fill === 64) { block(buf); fill = 0; } }
        for (; i + 64 <= data.length; i += 64) block(data.subarray(i, i + 64));
        while (i < data.length) buf[fill++] = data[i++];
      },
      hex() {
        const bits = total * 8;
        this.update(new Uint8Array([0x80]));
        while (fill !== 56) this.update(new Uint8Array([0]));
        const len = new Uint8Array(8);
        for (let i = 0; i < 8; i++) len[7 - i] = Math.floor(bits / 2 ** (8 * i)) & 0xff;
        this.update(len);
        return Array.from(H, (x) => x.toString(16).padStart(8, '0')).join('');
      },
    };
  }
  async function hashFile(file, status) {
    if (window.crypto && crypto.subtle && file.size < 512 * 1024 * 1024) {
      const d = await crypto.subtle.digest('SHA-256', await file.arrayBuffer());
      return Array.from(new Uint8Array(d), (x) => x.toString(16).padStart(2, '0')).join('');
    }
    // Not a secure context (plain http to another host): hash it here, a
    // piece at a time.
    const h = sha256js();
    const step = 4 << 20;
    for (let at = 0; at < file.size; at += step) {
      h.update(new Uint8Array(await file.slice(at, at + step).arrayBuffer()));
      status('hashing… ' + Math.floor(Math.min(at + step, file.size) * 100 / file.size) + '%');
    }
    return h.hex();
  }
  function submitPage() {
    const form = $('#submit-form');
    if (!form) return;
    const csrf = form.dataset.csrf;
    const st = $('#submit-status');
    const bar = $('#upload-progress');
    const status = (t) => { st.textContent = t; };
    const target = $('#target');
    function arches() {
      const allowed = (target.selectedOptions[0] || {}).dataset?.arches?.split(' ') || [];
      for (const cb of $$('#arches input')) { const ok = allowed.includes(cb.value); cb.disabled = !ok; if (!ok) cb.checked = false; }
    }
    target.addEventListener('change', arches);
    arches();
    const api = (method, url, json) => fetch(url, {
      method, credentials: 'same-origin',
      headers: Object.assign({ 'X-CSRF-Token': csrf }, json ? { 'Content-Type': 'application/json' } : {}),
      body: json ? JSON.stringify(json) : undefined,
    });
    async function error(r) {
      try { const b = await r.json(); return b.error || r.statusText; } catch (_) { return r.status + ' ' + r.statusText; }
    }
    function upload(file, sha) {
      return new Promise((ok, fail) => {
        const x = new XMLHttpRequest();
        x.open('PUT', '/api/v1/blobs/' + sha);
        x.setRequestHeader('X-CSRF-Token', csrf);
        x.withCredentials = true;
        bar.hidden = false;
        x.upload.onprogress = (e) => { if (e.lengthComputable) { bar.value = e.loaded * 100 / e.total; status('uploading… ' + Math.floor(bar.value) + '%'); } };
        x.onload = () => (x.status === 200 || x.status === 201 ? ok() : fail(new Error(x.status + ': ' + x.responseText.slice(0, 300))));
        x.onerror = () => fail(new Error('the upload failed'));
        x.send(file);
      });
    }
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const file = $('#srpm').files[0];
      if (!file) return;
      const go = $('#submit-go');
      go.disabled = true;
      try {
        status('hashing…');
        const sha = await hashFile(file, status);
        const have = await api('GET', '/api/v1/blobs/' + sha);
        if (have.status === 404) await upload(file, sha);
        else if (!have.ok) throw new Error(await error(have));
        else status('the master has this SRPM already');
        const req = { srpm_sha256: sha, srpm_name: file.name, target: target.value,
          scratch: $('#scratch').checked, ci: $('#ci').checked, priority: Number($('#priority').value || 0) };
        const archs = $$('#arches input:checked').map((c) => c.value);
        if (archs.length) req.arches = archs;
        status('submitting…');
        const r = await api('POST', '/api/v1/builds', req);
        if (!r.ok) throw new Error(await error(r));
        const b = await r.json();
        location.href = '/builds/' + b.id;
      } catch (err) {
        status('error: ' + err.message);
        go.disabled = false;
      }
    });
  }

  // ---------------------------------------------------------------- pages
  live.onEvent = (e) => {
    applyEvent(e);
    if (page === 'dashboard' || page === 'workers') refreshSoon(1000);
    else if (page === 'build') refreshSoon(400);
  };
  if (page === 'dashboard' || page === 'builds' || page === 'workers') live.subscribe('dashboard');
  else if (page === 'build') live.subscribe({ build: Number(body.dataset.build) });
  else if (page === 'log') {
    live.subscribe({ build: Number(body.dataset.build) });
    const pre = $('#log');
    if (pre) logView(pre);
  } else if (page === 'submit') submitPage();
  tick();
  if (live.subs.length) live.start();
})();
