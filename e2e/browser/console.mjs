// Drives Ruyi's console and demo chat in headless Chromium (Debian's package) with
// playwright-core, and prints one JSON line per step for tests/browser.rs to check.
//
//   node console.mjs <http-base-url> <expected-connections> <uid-to-kick> <screenshot-dir>
//
// Steps: the overview shows the live connection count that /varz reports; the
// Connections tab's kick button for <uid-to-kick> is clicked (the Rust side checks that
// the real connection closes); two browser contexts sign in to the demo, chat person to
// person and in a group, and each sees the other's messages in order. Any uncaught script
// error on any page fails the run. Exits 0 only when every step passed.
import { launch, out, run, until } from './lib.mjs';
import { mkdirSync } from 'node:fs';

const [base, expectedArg, kickUid, shots] = process.argv.slice(2);
const expected = Number(expectedArg);
const errors = [];
mkdirSync(shots, { recursive: true });

const browser = await launch();

function watch(page, name) {
  page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name} console: ${m.text()}`); });
}


await run(browser, errors, async () => {
  // ---- the console: overview ----
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  watch(page, 'console');
  await page.goto(`${base}/`); // redirects to /console/
  await until('the overview matches /varz', async () => {
    const varz = await (await fetch(`${base}/varz`)).json();
    const shown = await page.textContent('#stat-connections');
    return (String(varz.connections) === shown && varz.connections === expected)
      || { varz: varz.connections, shown, expected };
  });
  await page.waitForTimeout(2500); // a few samples for the charts
  await page.screenshot({ path: `${shots}/console-overview.png` });
  out({ event: 'overview', connections: expected });

  // ---- the console: connections, kick ----
  await page.click('nav button[data-tab=connections]');
  const kick = page.locator(`#connz-rows button[data-uid="${kickUid}"]`);
  await kick.first().waitFor({ timeout: 10000 });
  await page.screenshot({ path: `${shots}/console-connections.png` });
  await kick.first().click();
  await until('the kick is done', async () => (await kick.first().textContent()) === 'kicked');
  out({ event: 'kicked', uid: kickUid });

  // ---- the demo: two people in two contexts ----
  const people = {};
  for (const name of ['alice', 'bob']) {
    const c = await browser.newContext({ viewport: { width: 1000, height: 700 } });
    const p = await c.newPage();
    watch(p, `demo ${name}`);
    await p.goto(`${base}/demo/`);
    await p.fill('#login-uid', name);
    await p.click('#login-form button');
    await p.waitForSelector('#status.ok', { timeout: 15000 });
    people[name] = p;
  }
  const log = async (p) => p.$$eval('#log .msg', (ms) => ms.map((m) => m.textContent));
  const send = async (p, kind, to, text) => {
    await p.check(`input[name=to-kind][value="${kind}"]`);
    await p.fill('#to', to);
    await p.fill('#text', text);
    await p.click('#send-form button');
  };
  const { alice, bob } = people;
  for (const text of ['one', 'two', 'three']) await send(alice, 1, 'bob', text);
  await until('bob sees alice in order', async () => {
    const got = (await log(bob)).filter((l) => l.startsWith('alice:'));
    return JSON.stringify(got) === JSON.stringify(['alice:one', 'alice:two', 'alice:three']) || got;
  });
  await send(bob, 1, 'alice', 'hi alice');
  await until('alice sees bob', async () => (await log(alice)).includes('bob:hi alice') || await log(alice));
  // The group: each joins by writing to it first.
  await send(bob, 2, 'room', 'bob is here');
  await until('bob sees his own group message', async () => (await log(bob)).includes('bob in room:bob is here'));
  await send(alice, 2, 'room', 'alice too');
  await send(alice, 2, 'room', 'and again');
  await until('bob sees alice in the group, in order', async () => {
    const got = (await log(bob)).filter((l) => l.startsWith('alice in room:'));
    return JSON.stringify(got) === JSON.stringify(['alice in room:alice too', 'alice in room:and again']) || got;
  });
  await alice.screenshot({ path: `${shots}/demo-alice.png` });
  await bob.screenshot({ path: `${shots}/demo-bob.png` });
  out({ event: 'chatted' });
});
