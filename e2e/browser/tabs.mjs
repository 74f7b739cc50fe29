// The console behind a manager token, every tab, in headless Chromium: it asks for the
// token once, then the Users, Channels, Connections and Nodes tabs work with it. Prints one JSON
// line per step for tests/browser.rs.
//
//   node tabs.mjs <http-base-url> <manager-token> <screenshot-dir>
import { launch, out, run, until } from './lib.mjs';
import { mkdirSync } from 'node:fs';

const [base, token, shots] = process.argv.slice(2);
const errors = [];
mkdirSync(shots, { recursive: true });

const browser = await launch();

await run(browser, errors, async () => {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => {
    // The 401s before the token is typed are the point of this test.
    if (m.type() === 'error' && !m.text().includes('status of 401')) errors.push(m.text());
  });
  const noError = async () => (await page.textContent('#api-error')) === '';

  await page.goto(`${base}/console/`);
  await page.waitForSelector('#token-box.on', { timeout: 10000 });
  out({ event: 'asked' });
  await page.fill('#token-input', token);
  await page.click('#token-save');
  await until('the overview loads with the token', async () =>
    (await page.textContent('#stat-connections')) === '0' && await noError());

  await page.click('nav button[data-tab=users]');
  await page.fill('#tok-uid', 'tina');
  await page.fill('#tok-token', 'tina-secret');
  await page.click('#token-form button');
  await until('the token is registered', async () => (await page.textContent('#tok-result')) === 'registered');
  await page.fill('#user-uid', 'tina');
  await page.click('#user-form button');
  await until('tina is looked up', async () => (await page.textContent('#user-result')).includes('tina is offline'));
  if (!(await noError())) throw new Error(await page.textContent('#api-error'));
  out({ event: 'users' });

  await page.click('nav button[data-tab=channels]');
  await page.fill('#chan-id', 'crew');
  await page.selectOption('#chan-type', '2');
  await page.click('#chan-form button');
  await until('a new channel is shown', async () => (await page.textContent('#chan-info')).includes('no such channel yet'));
  await page.fill('#list-uids', 'tina, tom');
  await page.click('#list-form button[data-op=add]');
  await until('the subscribers are listed', async () =>
    (await page.textContent('#chan-info')).includes('subscribers (2): tina, tom'));
  await page.fill('#send-text', 'hello crew');
  await page.click('#send-form button');
  await until('the system message is sent', async () => (await page.textContent('#send-result')) === 'sent (seq 1)');
  await until('it is in the history', async () => (await page.textContent('#hist-rows')).includes('hello crew'));
  if (!(await noError())) throw new Error(await page.textContent('#api-error'));
  await page.screenshot({ path: `${shots}/console-channel.png` });
  out({ event: 'channels' });

  await page.click('nav button[data-tab=connections]');
  await until('the connections table loads', async () => (await page.textContent('#connz-total')).includes('none here (0 in all)'));
  if (!(await noError())) throw new Error(await page.textContent('#api-error'));
  out({ event: 'connections' });

  await page.click('nav button[data-tab=nodes]');
  await until('the nodes table shows this node', async () =>
    (await page.textContent('#nodes-info')) === 'a single node (no cluster)'
      && (await page.textContent('#nodes-rows')).includes('single'));
  if (!(await noError())) throw new Error(await page.textContent('#api-error'));
  out({ event: 'nodes' });

});
