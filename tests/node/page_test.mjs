// Drives the chat page of a running `vadapt serve` in headless Chromium (Debian's, through
// playwright-core): load the page, attach an image (its thumbnail shows), ask a question, wait for
// the streamed answer, save a screenshot. Prints one JSON object with what it saw.
// Usage: node page_test.mjs URL IMAGE SCREENSHOT [CHROMIUM_BINARY]
import { chromium } from 'playwright-core';

const [url, image, screenshot, binary] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: binary || '/usr/bin/chromium', headless: true,
                                        args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
const out = {};
try {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', e => errors.push(String(e)));
  page.on('requestfailed', r => { if (!r.url().startsWith('data:')) errors.push('request failed: ' + r.url()); });
  const external = [];
  page.on('request', r => { const u = r.url(); if (!u.startsWith(url) && !u.startsWith('data:')) external.push(u); });
  await page.goto(url);
  await page.waitForFunction(() => document.querySelectorAll('#model option').length > 0, null, { timeout: 20000 });
  out.models = await page.$$eval('#model option', os => os.map(o => o.value));
  await page.setInputFiles('#file', image);
  await page.waitForFunction(() => !document.getElementById('preview').hidden, null, { timeout: 20000 });
  out.thumbnail = true;
  // Count how often the answer's text changes: a streamed answer arrives in several updates.
  await page.evaluate(() => {
    window.__updates = 0;
    new MutationObserver(ms => { for (const m of ms) if (m.target.closest && m.target.closest('.assistant') || (m.target.parentElement && m.target.parentElement.closest('.assistant'))) window.__updates++; })
      .observe(document.getElementById('log'), { subtree: true, childList: true, characterData: true });
  });
  await page.fill('#text', 'What colour is it?');
  await page.click('#send');
  await page.waitForFunction(() => {
    const s = document.querySelector('.msg.assistant span');
    return s && s.textContent.length > 0;
  }, null, { timeout: 60000 });
  // Wait until the answer stops growing (the stream ended).
  let last = '', same = 0;
  while (same < 5) {
    await page.waitForTimeout(200);
    const t = await page.$eval('.msg.assistant span', s => s.textContent);
    same = t === last ? same + 1 : 0;
    last = t;
  }
  out.answer = last;
  out.updates = await page.evaluate(() => window.__updates);
  out.user_thumbnail = await page.$$eval('.msg.user img.thumb', is => is.length);
  out.preview_hidden_after_send = await page.$eval('#preview', p => getComputedStyle(p).display === 'none');
  out.answer_fits = await page.$eval('#log', l => l.scrollWidth <= l.clientWidth + 1);
  out.errors_shown = await page.$$eval('.err', es => es.map(e => e.textContent));
  out.page_errors = errors;
  out.external_requests = external;
  await page.screenshot({ path: screenshot, fullPage: true });
  // Pasting an image (a ClipboardEvent carrying a PNG file) attaches it too.
  out.pasted_image_attached = await page.evaluate(async () => {
    const c = document.createElement('canvas');
    c.width = c.height = 8;
    c.getContext('2d').fillRect(0, 0, 8, 8);
    const blob = await new Promise(r => c.toBlob(r, 'image/png'));
    const dt = new DataTransfer();
    dt.items.add(new File([blob], 'pasted.png', { type: 'image/png' }));
    document.getElementById('preview').hidden = true;
    document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true }));
    for (let i = 0; i < 50 && document.getElementById('preview').hidden; i++) await new Promise(r => setTimeout(r, 100));
    return !document.getElementById('preview').hidden;
  });
  out.screenshot = screenshot;
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
