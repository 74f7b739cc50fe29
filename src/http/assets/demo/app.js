// Ruyi demo chat: a real client of the server's WebSocket port, through the official JS
// SDK (wukongimjssdk 1.0.4, bundled as the global `WuKong`). The server has nothing
// demo-specific: the page registers a token with /user/token (loopback, or with the
// manager token), asks /route where to connect, joins groups with /channel/subscriber_add,
// and then speaks the binary protocol like any SDK user. `api`, `$` and `showError` come
// from /console/api.js.
'use strict';

const joined = new Set();

function randomToken() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function append(who, where, text, mine) {
  const line = document.createElement('div');
  line.className = mine ? 'msg mine' : 'msg';
  const name = document.createElement('span');
  name.className = 'who';
  name.textContent = `${who}${where}:`;
  line.append(name, document.createTextNode(text));
  $('log').append(line);
  $('log').scrollTop = $('log').scrollHeight;
}

let sdk = null;
let me = '';

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  me = $('login-uid').value.trim();
  const token = randomToken();
  try {
    await api('POST', '/user/token', { uid: me, token, device_flag: 1, device_level: 0 });
    const route = await api('GET', `/route?${new URLSearchParams({ uid: me })}`);
    // Where the server says clients connect (its advertised WebSocket address).
    const ws = route.ws_addr || `ws://${location.hostname}:5200`;
    start(ws, token);
    showError(null);
  } catch (e) { showError(e); }
});

function start(addr, token) {
  const { WKSDK, Channel, MessageText } = WuKong;
  sdk = WKSDK.shared();
  sdk.config.addr = addr;
  sdk.config.uid = me;
  sdk.config.token = token;
  sdk.connectManager.addConnectStatusListener((status, reasonCode) => {
    $('status').textContent = status === 1 ? 'connected' : `status ${status} (reason ${reasonCode})`;
    $('status').className = status === 1 ? 'ok' : 'muted';
  });
  sdk.chatManager.addMessageListener((m) => {
    const group = m.channel.channelType === 2;
    const where = group ? ` in ${m.channel.channelID}` : '';
    const text = m.content && m.content.text !== undefined ? m.content.text : '(not text)';
    append(m.fromUID, where, text, m.fromUID === me);
  });
  sdk.chatManager.addMessageStatusListener((ack) => {
    if (ack.reasonCode !== 1) showError(`a message was refused: reason ${ack.reasonCode}`);
  });
  $('me').textContent = me;
  $('login-panel').hidden = true;
  $('chat-panel').hidden = false;
  sdk.connectManager.connect();
  $('send-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const to = $('to').value.trim();
    const type = Number(document.querySelector('input[name=to-kind]:checked').value);
    const text = $('text').value;
    if (!to || !text) return;
    try {
      if (type === 2 && !joined.has(to)) {
        await api('POST', '/channel/subscriber_add', { channel_id: to, channel_type: 2, subscribers: [me] });
        joined.add(to);
      }
      sdk.chatManager.send(new MessageText(text), new Channel(to, type));
      $('text').value = '';
      showError(null);
    } catch (e) { showError(e); }
  });
}
