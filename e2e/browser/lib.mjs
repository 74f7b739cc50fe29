// What the browser scripts share: Chromium as this machine runs it headless, a polling
// wait, and the JSON lines tests/browser.rs reads.
import { chromium } from 'playwright-core';

export const out = (event) => process.stdout.write(JSON.stringify(event) + '\n');

/** Debian's Chromium (or CHROMIUM), headless, with nothing reaching the network. */
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** Polls `check` until it returns true; throws with its last answer after `ms`. */
export async function until(what, check, ms = 10000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await check();
    if (last === true) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out: ${what} (last: ${JSON.stringify(last)})`);
}

/** Runs `steps`; prints `done` and exits 0, or prints `failed` with why and exits 1. */
export async function run(browser, errors, steps) {
  try {
    await steps();
    if (errors.length) throw new Error(`script errors: ${errors.join(' | ')}`);
    out({ event: 'done' });
    await browser.close();
    process.exit(0);
  } catch (e) {
    out({ event: 'failed', error: String(e && e.message ? e.message : e), errors });
    await browser.close().catch(() => {});
    process.exit(1);
  }
}
