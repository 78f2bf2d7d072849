// `npm run bench`: the page's own figures in headless Chromium — simulation time per policy and
// workload size (the component through jco, in the worker), and the timeline's redraw time
// after a scroll at that many lanes. Prints medians; needs `npm run build` first.
import { chromium } from 'playwright-core';
import { serve } from './serve.mjs';

const SIZES = [200, 2000];
const POLICIES = ['fcfs', 'priority', 'fair'];
const ROUNDS = 3;

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

const server = await serve({ port: 0 });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic', '--disable-dev-shm-usage'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  await page.getByTestId('backend').filter({ hasNotText: 'probing' }).waitFor();
  console.log('requests  policy    simulate ms (median of 3)  redraw ms median / p90 / max (60 scrolls)');
  for (const size of SIZES) {
    for (const policy of POLICIES) {
      await page.getByTestId('workload-size').fill(String(size));
      await page.getByTestId('policy-select').selectOption(policy);
      const times = [];
      for (let round = 0; round < ROUNDS; round++) {
        await page.getByTestId('run').click();
        const done = page.getByTestId('status').filter({ hasText: /^done/ });
        await done.waitFor({ timeout: 600_000 });
        times.push(1000 * Number((await done.textContent()).match(/in ([\d.]+) s/)[1]));
      }
      const redraw = await page.evaluate(async () => {
        const scroller = document.querySelector('.scroller');
        const samples = [];
        for (let i = 0; i < 60; i++) {
          scroller.scrollTop = (i * 97) % Math.max(scroller.scrollHeight - scroller.clientHeight, 1);
          const start = performance.now();
          scroller.dispatchEvent(new Event('scroll'));
          samples.push(performance.now() - start);
          await new Promise((resolve) => requestAnimationFrame(resolve));
        }
        return samples.sort((a, b) => a - b);
      });
      console.log(`${String(size).padEnd(10)}${policy.padEnd(10)}${String(median(times)).padEnd(27)}`
        + `${redraw[30].toFixed(2)} / ${redraw[54].toFixed(2)} / ${redraw[59].toFixed(2)}`);
    }
  }
} finally {
  await browser.close();
  server.close();
}
