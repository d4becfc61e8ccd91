// Drives Debian's chromium through the status page for tests/integration/console.rs.
// Usage: node status_page.js URL ENTRY TOKEN|- CLICK(yes|no) [SCREENSHOT.png]
// Prints one JSON line: the entries listed, whether buttons are shown, and the reply the
// page showed after clicking trigger on ENTRY (typing TOKEN first unless it is "-").
const { chromium } = require('playwright-core');

(async () => {
  const [url, entry, token, click, shot] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.BEATD_CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const resp = await page.goto(url, { waitUntil: 'load' });
    const entries = await page.$$eval('#entries tr[data-entry]', (rows) => rows.map((r) => r.dataset.entry));
    const buttons = await page.$$eval('button[data-action]', (b) => b.length);
    const timeline = await page.$$eval('#timeline line', (l) => l.length);
    let reply = null;
    if (click === 'yes') {
      if (token !== '-') await page.fill('#token', token);
      await page.click(`tr[data-entry="${entry}"] button[data-action="trigger"]`);
      await page.waitForFunction(() => /^\d{3} /.test(document.getElementById('out').textContent), null, { timeout: 20000 });
      reply = await page.textContent('#out');
    }
    if (shot) await page.screenshot({ path: shot, fullPage: true });
    console.log(JSON.stringify({ status: resp.status(), entries, buttons, timeline, reply }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
