// evp dashboard: polls the documented endpoints every 2 s with the key the user entered.
// The key lives in sessionStorage and travels only in the x-api-key header.
(() => {
  'use strict';
  const STORE = 'evp.dashboard.key';
  const POLL_MS = 2000;
  const HISTORY_S = 15 * 60;
  const $ = (id) => document.getElementById(id);
  const hist = { t: [], accepted: [], stored: [], backlog: [], lag: [] };
  let key = sessionStorage.getItem(STORE);
  let role = null; // 'admin' or 'tenant'
  let timer = null;
  let busy = false;
  let rates = null;
  let backlog = null;

  const fmt = (n, digits = 1) =>
    n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US', { maximumFractionDigits: digits });
  const idle = (ms) => (ms < 1000 ? `${ms} ms` : ms < 120000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 60000)} min`);

  function setStatus(text, bad) {
    const s = $('status');
    s.textContent = text;
    s.className = bad ? 'bad' : 'ok';
  }

  function stop() {
    if (timer) clearInterval(timer);
    timer = null;
  }

  function showLogin(message) {
    stop();
    sessionStorage.removeItem(STORE);
    key = null;
    role = null;
    $('board').hidden = true;
    $('forget').hidden = true;
    $('who').textContent = '';
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('new-key').textContent = '';
    $('new-key-box').hidden = true;
    setStatus('', false);
    $('key').focus();
  }

  function call(path, init) {
    const headers = { 'x-api-key': key };
    if (init && init.body) headers['content-type'] = 'application/json';
    return fetch(path, Object.assign({ cache: 'no-store' }, init, { headers }));
  }

  // The key's role from GET /whoami: 'admin' (an operator key), 'tenant', or null (refused).
  async function detectRole() {
    const r = await call('/whoami');
    if (r.status === 401) return null;
    if (r.status !== 200) throw new Error(`the ingest answered ${r.status}`);
    const me = await r.json();
    return me.role === 'operator' ? 'admin' : 'tenant';
  }

  async function start() {
    let found;
    try {
      found = await detectRole();
    } catch (e) {
      $('login').hidden = true;
      $('board').hidden = false;
      $('forget').hidden = false;
      setStatus('The ingest is unreachable; retrying every 2 s.', true);
      setTimeout(start, POLL_MS);
      return;
    }
    if (!found) {
      showLogin('That key was refused (401): check it and try again.');
      return;
    }
    role = found;
    sessionStorage.setItem(STORE, key);
    $('login').hidden = true;
    $('board').hidden = false;
    $('forget').hidden = false;
    $('who').textContent = role === 'admin' ? 'operator key: every tenant, dead letters' : 'tenant key';
    // The shared pipeline (consumers, stream, dead letters) is for operators only.
    for (const el of document.querySelectorAll('.operator, #dlq-card')) el.hidden = role !== 'admin';
    ensureCharts();
    await tick();
    stop();
    timer = setInterval(tick, POLL_MS);
  }

  function chart(el, labels, colors) {
    const opts = {
      width: Math.max(el.clientWidth, 300),
      height: 220,
      scales: { x: { time: true } },
      series: [{}].concat(labels.map((label, i) => ({ label, stroke: colors[i], width: 2 }))),
      axes: [
        { stroke: '#8a96a3', grid: { stroke: '#263240' } },
        { stroke: '#8a96a3', grid: { stroke: '#263240' } },
      ],
    };
    return new uPlot(opts, [[]].concat(labels.map(() => [])), el);
  }

  function ensureCharts() {
    if (rates) return;
    rates = chart($('chart-rates'), ['accepted/s', 'stored/s'], ['#58a6ff', '#3fb950']);
    backlog = chart($('chart-backlog'), ['not yet stored', 'group lag (operators)'], ['#d29922', '#f85149']);
    window.addEventListener('resize', () => {
      rates.setSize({ width: Math.max($('chart-rates').clientWidth, 300), height: 220 });
      backlog.setSize({ width: Math.max($('chart-backlog').clientWidth, 300), height: 220 });
    });
  }

  function windowQuery() {
    const spans = { '15m': [15 * 60, 'minute'], '1h': [3600, 'minute'], '24h': [86400, 'hour'], '7d': [7 * 86400, 'hour'] };
    const [seconds, bucket] = spans[$('window').value] || spans['1h'];
    const to = new Date();
    const from = new Date(to.getTime() - seconds * 1000);
    return `from=${from.toISOString()}&to=${to.toISOString()}&bucket=${bucket}`;
  }

  function rows(tbody, items, cells) {
    const fresh = document.createElement('tbody');
    fresh.id = tbody.id;
    for (const item of items) {
      const tr = document.createElement('tr');
      for (const [text, cls] of cells(item, tr)) {
        const td = document.createElement('td');
        if (text instanceof Node) td.appendChild(text);
        else td.textContent = text;
        if (cls) td.className = cls;
        tr.appendChild(td);
      }
      fresh.appendChild(tr);
    }
    tbody.replaceWith(fresh);
  }

  function render(m) {
    const p = m.pipeline;
    const now = Date.now() / 1000;
    hist.t.push(now);
    hist.accepted.push(p.ingest_rate);
    hist.stored.push(p.processing_rate);
    hist.backlog.push(p.unstored);
    hist.lag.push(p.lag ?? null);
    while (hist.t.length && hist.t[0] < now - HISTORY_S) {
      for (const k of Object.keys(hist)) hist[k].shift();
    }
    rates.setData([hist.t, hist.accepted, hist.stored]);
    backlog.setData([hist.t, hist.backlog, hist.lag]);
    $('ingest-rate').textContent = `${fmt(p.ingest_rate)} /s`;
    $('processing-rate').textContent = `${fmt(p.processing_rate)} /s`;
    $('unstored').textContent = fmt(p.unstored, 0);
    $('stream-length').textContent = fmt(p.stream_length, 0);
    $('pending').textContent = fmt(p.pending, 0);
    $('group-lag').textContent = fmt(p.lag, 0);
    $('dead-letters').textContent = fmt(p.dead_letters, 0);
    $('rollup-lag').textContent = `${fmt(m.rollup.lag_seconds)} s`;
    rows($('consumers'), p.consumers || [], (c, tr) => {
      tr.dataset.name = c.name;
      return [[c.name], [fmt(c.pending, 0), 'num'], [idle(c.idle_ms), 'num']];
    });
    $('total').textContent = fmt(m.total, 0);
    rows($('by-type'), m.by_type, (t, tr) => {
      tr.dataset.type = t.type;
      return [[t.type], [fmt(t.count, 0), 'num']];
    });
  }

  function renderHealth(report) {
    const deps = report && report.dependencies ? Object.entries(report.dependencies) : [];
    rows($('health'), deps, ([name, d], tr) => {
      tr.dataset.name = name;
      const detail = d.status === 'up' ? `${d.latency_ms} ms` : d.error || '';
      return [[name], [d.status, d.status === 'up' ? 'up' : 'down'], [detail]];
    });
  }

  async function act(action, body) {
    const r = await call(`/admin/dlq/${action}`, { method: 'POST', body: JSON.stringify(body) });
    const answer = await r.json().catch(() => ({}));
    $('dlq-message').textContent = r.ok
      ? `${action === 'replay' ? 'replayed' : 'purged'} ${answer.replayed ?? answer.purged}`
      : `${action} failed: ${(answer.error && answer.error.message) || r.status}`;
    await loadDlq();
  }

  async function loadKeys() {
    const r = await call('/admin/keys');
    if (!r.ok) return;
    const list = await r.json();
    rows($('keys'), list.keys, (k, tr) => {
      tr.dataset.id = k.id;
      const state = k.revoked_at ? 'revoked' : k.expires_at && Date.parse(k.expires_at) <= Date.now() ? 'expired' : 'active';
      const cell = document.createElement('span');
      if (k.source === 'api' && state === 'active') {
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'revoke danger';
        b.textContent = 'Revoke';
        b.addEventListener('click', () => revokeKey(k));
        cell.appendChild(b);
      }
      return [[k.id], [k.tenant || ''], [k.role], [k.name || ''], [k.source], [k.last_used_at || ''], [state], [cell]];
    });
  }

  async function revokeKey(k) {
    if (!confirm(`Revoke key ${k.id}${k.name ? ` (${k.name})` : ''}? Every request with it will get 401.`)) return;
    const r = await call(`/admin/keys/${encodeURIComponent(k.id)}`, { method: 'DELETE' });
    const answer = r.ok ? {} : await r.json().catch(() => ({}));
    $('key-message').textContent = r.ok ? `revoked ${k.id}` : `revoke failed: ${(answer.error && answer.error.message) || r.status}`;
    await loadKeys();
  }

  async function createKey(ev) {
    ev.preventDefault();
    const role = $('key-role').value;
    const body = { role };
    const tenant = $('key-tenant').value.trim();
    const name = $('key-name').value.trim();
    if (role === 'tenant') body.tenant = tenant;
    if (name) body.name = name;
    const r = await call('/admin/keys', { method: 'POST', body: JSON.stringify(body) });
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) {
      $('new-key-box').hidden = true;
      $('key-message').textContent = `create failed: ${(answer.error && answer.error.message) || r.status}`;
      return;
    }
    $('key-message').textContent = `created ${answer.id}: copy the key now, it is not shown again`;
    $('new-key').textContent = answer.key;
    $('new-key-box').hidden = false;
    await loadKeys();
  }

  async function copyNewKey() {
    try {
      await navigator.clipboard.writeText($('new-key').textContent);
      $('key-message').textContent = 'copied';
    } catch (e) {
      $('key-message').textContent = 'select the key and copy it by hand';
    }
  }

  async function loadSubscriptions() {
    const r = await call('/subscriptions');
    if (!r.ok) return;
    const list = await r.json();
    rows($('subscriptions'), list.subscriptions, (s, tr) => {
      tr.dataset.name = s.tenant ? `${s.tenant}/${s.name}` : s.name;
      const consumers = s.consumers.map((c) => `${c.name} (${c.partitions.join(', ')})`).join('; ');
      const error = s.last_error ? `${s.last_error.message} (${s.last_error.consumer}, ${s.last_error.at})` : '';
      return [[tr.dataset.name], [`${fmt(s.lag_seconds)} s`, 'num'], [fmt(s.pending, 0), 'num'], [consumers], [error, 'error']];
    });
  }

  async function loadDlq() {
    const r = await call('/admin/dlq?limit=100');
    if (!r.ok) return;
    const page = await r.json();
    rows($('dlq'), page.dead_letters, (d, tr) => {
      tr.dataset.id = d.id;
      const buttons = document.createElement('span');
      for (const action of ['replay', 'purge']) {
        const b = document.createElement('button');
        b.type = 'button';
        b.className = action;
        b.textContent = action === 'replay' ? 'Replay' : 'Purge';
        b.addEventListener('click', () => act(action, { ids: [d.id] }));
        buttons.appendChild(b);
      }
      const event = d.event ? JSON.stringify(d.event) : d.raw || '';
      return [[d.id], [d.reason || ''], [String(d.deliveries ?? ''), 'num'], [event, 'event'], [buttons]];
    });
  }

  async function tick() {
    if (busy || !key) return;
    busy = true;
    try {
      const [m, h] = await Promise.all([
        call(`/analytics/metrics?${windowQuery()}`),
        fetch('/health', { cache: 'no-store' }),
      ]);
      if (m.status === 401) {
        showLogin('The key was refused (401).');
        return;
      }
      if (m.ok) {
        render(await m.json());
        setStatus(`live · ${new Date().toLocaleTimeString()}`, false);
      } else {
        const body = await m.json().catch(() => ({}));
        setStatus(`Analytics unavailable: ${(body.error && body.error.message) || m.status}`, true);
      }
      renderHealth(await h.json().catch(() => null));
      await loadSubscriptions();
      if (role === 'admin') await Promise.all([loadDlq(), loadKeys()]);
    } catch (e) {
      setStatus('The ingest is unreachable; retrying every 2 s.', true);
    } finally {
      busy = false;
    }
  }

  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    key = $('key').value.trim();
    $('key').value = '';
    start();
  });
  $('forget').addEventListener('click', () => showLogin(''));
  $('window').addEventListener('change', tick);
  $('replay-all').addEventListener('click', () => act('replay', { all: true }));
  $('key-form').addEventListener('submit', createKey);
  $('new-key-copy').addEventListener('click', copyNewKey);
  $('purge-all').addEventListener('click', () => {
    if (confirm('Delete every dead letter for good?')) act('purge', { all: true });
  });

  if (key) start();
  else showLogin('');
})();
