// One SDK user (the SDK is a singleton: one process per user). Drives the official
// wukongimjssdk 1.0.4 against a server and prints one JSON line per event.
//
//   node --import ./register.mjs client.mjs <ws-url> <uid> <token> '<plan json>'
//
// plan: {"sends": [{"to": "bob", "type": 1, "text": "hi"}], "expect": 2, "timeoutMs": 15000}
// After "connected" it waits for a line "go" on stdin, sends, and exits 0 once every send
// was acknowledged and `expect` messages from others arrived (exit 1 on timeout).
import WebSocket from 'ws';
import readline from 'node:readline';

globalThis.WebSocket = WebSocket;
const { WKSDK, Channel, MessageText } = await import('wukongimjssdk/lib/sdk.js');

const [url, uid, token, planJson] = process.argv.slice(2);
const plan = JSON.parse(planJson);
const out = (event) => process.stdout.write(JSON.stringify(event) + '\n');

const sdk = WKSDK.shared();
sdk.config.addr = url;
sdk.config.uid = uid;
sdk.config.token = token;

let acked = 0;
let received = 0;
const done = () => {
  if (acked >= plan.sends.length && received >= plan.expect) {
    out({ event: 'done' });
    process.exit(0);
  }
};

sdk.connectManager.addConnectStatusListener((status, reasonCode) => {
  out({ event: 'status', status, reasonCode });
  if (status === 1) {
    out({ event: 'connected' });
  }
});
sdk.chatManager.addMessageStatusListener((ack) => {
  out({ event: 'sendack', reasonCode: ack.reasonCode, clientSeq: ack.clientSeq, messageSeq: ack.messageSeq });
  if (ack.reasonCode === 1) acked += 1;
  done();
});
sdk.chatManager.addMessageListener((message) => {
  if (message.fromUID === uid) return; // the SDK echoes our own sends to this listener
  received += 1;
  out({
    event: 'recv',
    from: message.fromUID,
    channelID: message.channel.channelID,
    channelType: message.channel.channelType,
    text: message.content && message.content.text,
    messageSeq: message.messageSeq,
  });
  done();
});

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (line.trim() !== 'go') return;
  for (const s of plan.sends) {
    sdk.chatManager.send(new MessageText(s.text), new Channel(s.to, s.type));
  }
  done();
});

setTimeout(() => {
  out({ event: 'timeout', acked, received });
  process.exit(1);
}, plan.timeoutMs || 15000);

sdk.connectManager.connect();
