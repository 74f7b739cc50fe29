// Ruyi console: plain JavaScript over the server's own HTTP API (no build step); `api`,
// `$` and `showError` come from api.js.
'use strict';

/** Builds an element: el('td', {className: 'x'}, 'text', child...). */
function el(tag, props, ...children) {
  const node = Object.assign(document.createElement(tag), props || {});
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function duration(seconds) {
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${seconds % 60}s`;
  return `${Math.floor(seconds / 3600)}h${Math.floor((seconds % 3600) / 60)}m`;
}

const DEVICES = ['APP', 'WEB', 'PC'];

// ---- tabs ----
for (const b of document.querySelectorAll('nav button')) {
  b.addEventListener('click', () => {
    for (const o of document.querySelectorAll('nav button')) o.classList.toggle('on', o === b);
    for (const s of document.querySelectorAll('section')) s.classList.toggle('on', s.id === b.dataset.tab);
    if (b.dataset.tab === 'connections') loadConnz();
    if (b.dataset.tab === 'nodes') loadNodes();
  });
}
// ---- overview: /varz every second, rates from the difference of two samples ----
const WINDOW = 300; // points kept: five minutes at one a second
const series = { t: [], conns: [], sends: [], deliveries: [] };
let last = null;
let charts = null;

function makeCharts() {
  const width = Math.max(300, $('chart-conns').clientWidth || 500);
  const opts = (label, extra) => ({
    width, height: 180, legend: { show: true },
    series: [{}, ...extra],
    axes: [{}, { label }],
  });
  return {
    conns: new uPlot(opts('connections', [{ label: 'connections', stroke: '#1f6feb' }]),
      [series.t, series.conns], $('chart-conns')),
    rates: new uPlot(opts('per second', [
      { label: 'sends/s', stroke: '#1a7f37' }, { label: 'deliveries/s', stroke: '#bf8700' }]),
      [series.t, series.sends, series.deliveries], $('chart-rates')),
  };
}

async function poll() {
  let v;
  try {
    v = await api('GET', '/varz');
  } catch (e) { showError(e); return; }
  const now = performance.now() / 1000;
  $('server-meta').textContent = `node ${v.server_id} · ${v.version} · up ${v.uptime}`;
  $('stat-connections').textContent = v.connections;
  $('stat-users').textContent = v.ruyi_online_users;
  $('stat-slow').textContent = v.slow_clients;
  $('stat-webhook').textContent = v.ruyi_webhook_on ? `${v.ruyi_webhook_queue} / ${v.ruyi_webhook_dropped}` : 'off';
  $('loops').replaceChildren(...(v.ruyi_loops || []).map((l, i) =>
    el('span', { className: 'card' }, el('span', { className: 'k' }, `loop ${i} `), el('b', {}, l.connections))));
  if (last) {
    const dt = Math.max(0.001, now - last.at);
    const rate = (k) => Math.max(0, (v[k] - last.v[k]) / dt);
    const commits = v.ruyi_commit_count - last.v.ruyi_commit_count;
    $('stat-sends').textContent = rate('in_msgs').toFixed(0);
    $('stat-deliveries').textContent = rate('out_msgs').toFixed(0);
    $('stat-retries').textContent = rate('ruyi_retries').toFixed(1);
    $('stat-commit').textContent = commits > 0
      ? ((v.ruyi_commit_sum_us - last.v.ruyi_commit_sum_us) / commits / 1000).toFixed(2) : '–';
    series.t.push(Date.now() / 1000);
    series.conns.push(v.connections);
    series.sends.push(rate('in_msgs'));
    series.deliveries.push(rate('out_msgs'));
    for (const k of Object.keys(series)) if (series[k].length > WINDOW) series[k].shift();
    if (!charts && typeof uPlot === 'function') charts = makeCharts();
    if (charts) {
      charts.conns.setData([series.t, series.conns]);
      charts.rates.setData([series.t, series.sends, series.deliveries]);
    }
  }
  last = { at: now, v };
  showError(null);
}
poll();
setInterval(poll, 1000);

// ---- connections: /connz, paged and sorted by the server ----
const connz = { offset: 0, limit: 50, sort: 'uptime' };

function connRows(list, target) {
  target.replaceChildren(...list.map((c) => {
    const kick = el('button', { className: 'act bad', textContent: 'Kick' });
    kick.dataset.uid = c.uid;
    kick.dataset.flag = c.device_flag;
    kick.addEventListener('click', async () => {
      try {
        await api('POST', '/user/device_quit', { uid: c.uid, device_flag: c.device_flag });
        kick.textContent = 'kicked';
        kick.disabled = true;
      } catch (e) { showError(e); }
    });
    return el('tr', {},
      el('td', {}, c.id), el('td', {}, c.uid),
      el('td', {}, `${DEVICES[c.device_flag] || c.device_flag}${c.device_level === 1 ? ' (master)' : ''}`),
      el('td', {}, `${c.ip}:${c.port}`), el('td', {}, duration(c.uptime)), el('td', {}, duration(c.idle)),
      el('td', {}, c.pending_bytes), el('td', {}, c.in_msgs), el('td', {}, c.out_msgs), el('td', {}, kick));
  }));
}

async function loadConnz() {
  try {
    const q = new URLSearchParams({ offset: connz.offset, limit: connz.limit, sort: connz.sort });
    const r = await api('GET', `/connz?${q}`);
    $('connz-total').textContent = r.connections.length
      ? `${r.offset + 1}–${r.offset + r.connections.length} of ${r.total}, by ${r.sort}`
      : `none here (${r.total} in all)`;
    connRows(r.connections, $('connz-rows'));
    showError(null);
  } catch (e) { showError(e); }
}
for (const th of document.querySelectorAll('th.sort')) {
  th.addEventListener('click', () => { connz.sort = th.dataset.sort; connz.offset = 0; loadConnz(); });
}
$('connz-next').addEventListener('click', () => { connz.offset += connz.limit; loadConnz(); });
$('connz-prev').addEventListener('click', () => { connz.offset = Math.max(0, connz.offset - connz.limit); loadConnz(); });

// ---- users ----
$('user-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const uid = $('user-uid').value.trim();
  try {
    const r = await api('GET', `/connz?${new URLSearchParams({ uid, limit: 100 })}`);
    const tbody = el('tbody');
    connRows(r.connections, tbody);
    $('user-result').replaceChildren(
      el('p', {}, r.total ? `${uid}: ${r.total} device connection(s) online` : `${uid} is offline`),
      el('table', {}, el('thead', {}, el('tr', {}, ...['id', 'uid', 'device', 'address', 'uptime', 'idle',
        'pending bytes', 'in msgs', 'out msgs', ''].map((h) => el('th', {}, h)))), tbody));
    showError(null);
  } catch (e) { showError(e); }
});
$('token-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    await api('POST', '/user/token', {
      uid: $('tok-uid').value.trim(), token: $('tok-token').value,
      device_flag: Number($('tok-flag').value), device_level: Number($('tok-level').value),
    });
    $('tok-result').textContent = 'registered';
    $('tok-result').className = 'ok';
  } catch (e) { $('tok-result').textContent = e.message; $('tok-result').className = 'error'; }
});

// ---- channels ----
const chan = { id: '', type: 2, newest: 0, oldest: 0 };

function decodePayload(b64) {
  try {
    const text = new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
    try { const j = JSON.parse(text); return j.content !== undefined ? String(j.content) : text; } catch (_) { return text; }
  } catch (_) { return `(${b64.length} base64 chars)`; }
}

async function loadChannel() {
  const q = new URLSearchParams({ channel_id: chan.id, channel_type: chan.type });
  const info = await api('GET', `/console/api/channel?${q}`);
  const flags = ['ban', 'disband', 'send_ban'].filter((f) => info[f]);
  const list = (name, uids) => el('p', {}, el('b', {}, `${name} (${uids.length}): `), uids.join(', ') || '—');
  $('chan-info').replaceChildren(
    el('p', {}, info.exists ? `last seq ${info.last_seq}; ${flags.length ? flags.join(', ') : 'no flags set'}` : 'no such channel yet'),
    list('subscribers', info.subscribers), list('blacklist', info.denylist), list('whitelist', info.allowlist));
  $('chan-lists').hidden = false;
  $('chan-history').hidden = chan.type === 1;
  chan.newest = info.last_seq;
  if (chan.type !== 1) await loadHistory(info.last_seq);
}

async function loadHistory(start) {
  const r = await api('POST', '/channel/messagesync', {
    login_uid: 'console', channel_id: chan.id, channel_type: chan.type,
    start_message_seq: start, end_message_seq: 0, limit: 20, pull_mode: 0,
  });
  const msgs = r.messages || [];
  chan.oldest = msgs.length ? msgs[0].message_seq : 0;
  $('hist-range').textContent = msgs.length
    ? `seqs ${msgs[0].message_seq}–${msgs[msgs.length - 1].message_seq}` : 'no messages';
  $('hist-rows').replaceChildren(...msgs.slice().reverse().map((m) => el('tr', {},
    el('td', {}, m.message_seq), el('td', {}, m.from_uid || '(system)'),
    el('td', {}, new Date(m.timestamp * 1000).toLocaleString()), el('td', {}, decodePayload(m.payload)))));
}

$('chan-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  chan.id = $('chan-id').value.trim();
  chan.type = Number($('chan-type').value);
  try { await loadChannel(); showError(null); } catch (e) { showError(e); }
});
$('hist-newer').addEventListener('click', () => loadChannel().catch(showError));
$('hist-older').addEventListener('click', () => {
  if (chan.oldest > 1) loadHistory(chan.oldest - 1).catch(showError);
});
for (const b of document.querySelectorAll('#list-form button')) {
  b.addEventListener('click', async (ev) => {
    ev.preventDefault();
    const uids = $('list-uids').value.split(',').map((s) => s.trim()).filter(Boolean);
    const kind = $('list-kind').value;
    const op = b.dataset.op;
    const path = kind === 'subscriber' ? `/channel/subscriber_${op}` : `/channel/${kind}_${op}`;
    const body = { channel_id: chan.id, channel_type: chan.type };
    if (kind === 'subscriber') body.subscribers = uids; else body.uids = uids;
    try {
      await api('POST', path, body);
      $('list-result').textContent = 'done';
      $('list-result').className = 'ok';
      await loadChannel();
    } catch (e) { $('list-result').textContent = e.message; $('list-result').className = 'error'; }
  });
}
$('send-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const text = $('send-text').value;
  const bytes = new TextEncoder().encode(JSON.stringify({ type: 1, content: text }));
  const payload = btoa(String.fromCharCode(...bytes));
  try {
    const r = await api('POST', '/message/send', {
      header: { no_persist: 0, red_dot: 1, sync_once: 0 }, from_uid: '',
      channel_id: chan.id, channel_type: chan.type, payload,
    });
    const seq = r && r.data ? r.data.message_seq : (r && r.message_seq);
    $('send-result').textContent = `sent (seq ${seq})`;
    $('send-result').className = 'ok';
    await loadChannel();
  } catch (e) { $('send-result').textContent = e.message; $('send-result').className = 'error'; }
});

// ---- nodes: /cluster/nodes, refreshed every second while the tab is open ----
async function loadNodes() {
  let r;
  try {
    r = await api('GET', '/cluster/nodes');
  } catch (e) { showError(e); return; }
  $('nodes-info').textContent = r.cluster
    ? `cluster ${r.name} · this is node ${r.node} · ${r.leader ? `node ${r.leader} leads` : 'no leader'}` +
      ` · NATS ${r.nats_connected ? 'connected' : 'away'}`
    : 'a single node (no cluster)';
  $('nodes-rows').replaceChildren(...r.nodes.map((n) => el('tr', {},
    el('td', {}, n.node),
    el('td', {}, !r.cluster ? 'single' : n.node === r.leader ? 'leader' : 'follower'),
    el('td', {}, n.tcp_addr), el('td', {}, n.ws_addr), el('td', {}, n.connections),
    el('td', {}, n.batches ?? '–'),
    el('td', {}, n.seen ? `${n.seen[2]} of node ${n.seen[0]}'s` : '–'))));
}
setInterval(() => { if ($('nodes').classList.contains('on')) loadNodes(); }, 1000);
