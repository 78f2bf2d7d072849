// The page in real headless Chromium (Debian's, driven by playwright-core): runs, lanes, policy
// swaps, journey import and export byte-identical to `waypoint simulate`, and WebGPU through
// Chromium's SwiftShader. Needs `npm run build` and the debug `waypoint` binary (cargo build).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from '../scripts/serve.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const targetDir = JSON.parse(execFileSync('cargo', ['metadata', '--format-version', '1', '--no-deps'],
  { cwd: root, maxBuffer: 1 << 26 })).target_directory;
const waypoint = process.env.WAYPOINT_BIN ?? join(targetDir, 'debug', 'waypoint');
const artifacts = join(root, 'target', 'web-demo');
const scratch = mkdtempSync(join(tmpdir(), 'waypoint-web-'));

// Chromium as root on a closed network: no sandbox, no background connections.
const FLAGS = ['--no-sandbox', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-quic', '--disable-dev-shm-usage'];

let server;
let url;
const browsers = [];

before(async () => {
  server = await serve({ port: 0 });
  url = `http://127.0.0.1:${server.address().port}/`;
  mkdirSync(artifacts, { recursive: true });
});

after(async () => {
  await Promise.all(browsers.map((browser) => browser.close()));
  server?.close();
  rmSync(scratch, { recursive: true, force: true });
});

async function open({ webgpu = true } = {}) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: webgpu ? [...FLAGS, '--enable-unsafe-webgpu'] : FLAGS,
  });
  browsers.push(browser);
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 }, acceptDownloads: true });
  const problems = [];
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(message.text());
  });
  page.on('pageerror', (error) => problems.push(String(error)));
  await page.goto(url);
  await page.getByTestId('backend').filter({ hasNotText: 'probing' }).waitFor();
  return { page, problems };
}

async function runAndWait(page, timeout = 120_000) {
  await page.getByTestId('run').click();
  await page.getByTestId('status').filter({ hasText: /^done|error|failed/ }).waitFor({ timeout });
  const status = await page.getByTestId('status').textContent();
  assert.match(status, /^done/, status);
}

async function summaryText(page) {
  return page.getByTestId('summary').textContent();
}

let shared;
async function page() {
  shared ??= await open();
  return shared;
}

test('the page loads without console errors and finds WebGPU (SwiftShader)', async () => {
  const { page: tab, problems } = await page();
  assert.equal(await tab.getByTestId('backend').textContent(), 'webgpu');
  assert.deepEqual(problems, []);
});

test('a 200-request run draws 200 lanes', async () => {
  const { page: tab, problems } = await page();
  await tab.getByTestId('workload-size').fill('200');
  await tab.getByTestId('policy-select').selectOption('fcfs');
  await runAndWait(tab);
  assert.equal(await tab.getByTestId('request-lane').count(), 200);
  assert.match(await summaryText(tab), /requests \(finished\)200 \(200\)/);
  // The first lane's QUEUED marker sits at the time axis' origin, right of the labels.
  await tab.locator('.scroller canvas').first().hover({ position: { x: 97, y: 21 } });
  await tab.locator('#tooltip').filter({ hasText: /^req-0 · QUEUED\nt = 0\.000 ms · step 0\nphase WAITING/ }).waitFor();
  await tab.screenshot({ path: join(artifacts, 'finished-run.png'), fullPage: true });
  assert.deepEqual(problems, []);
});

test('swapping the policy changes the summary', async () => {
  const { page: tab } = await page();
  await tab.getByTestId('workload-size').fill('200');
  await tab.getByTestId('policy-select').selectOption('fcfs');
  await runAndWait(tab);
  const fcfs = await summaryText(tab);
  await tab.getByTestId('policy-select').selectOption('priority');
  await runAndWait(tab);
  const priority = await summaryText(tab);
  assert.notEqual(priority, fcfs);
  assert.match(priority, /priority/);
});

test('two policies run side by side on the same workload', async () => {
  const { page: tab, problems } = await page();
  await tab.getByTestId('workload-size').fill('200');
  await tab.getByTestId('policy-select').selectOption('fcfs');
  await tab.getByTestId('compare-select').selectOption('priority');
  await runAndWait(tab);
  assert.equal(await tab.locator('.timeline').count(), 2);
  assert.equal(await tab.getByTestId('request-lane').count(), 400);
  const header = await tab.getByTestId('summary').locator('tr').first().textContent();
  assert.match(header, /fcfs.*priority/);
  await tab.screenshot({ path: join(artifacts, 'compare.png'), fullPage: true });

  // Zooming one timeline zooms both; a double click shows the whole run again.
  const ranges = () => tab.locator('.timeline > div').evaluateAll((nodes) => nodes.map((n) => n.dataset.rangeNs));
  const [whole] = await ranges();
  const canvas = tab.locator('.scroller canvas').first();
  await canvas.hover({ position: { x: 400, y: 100 } });
  await tab.keyboard.down('Control');
  await tab.mouse.wheel(0, -500);
  await tab.keyboard.up('Control');
  const zoomed = await ranges();
  const span = (range) => range.split('-').map(Number).reduce((start, end) => end - start);
  assert.equal(zoomed[0], zoomed[1]);
  assert.ok(span(zoomed[0]) < span(whole) / 2, `${zoomed[0]} vs ${whole}`);
  await canvas.dblclick({ position: { x: 400, y: 100 } });
  assert.deepEqual(await ranges(), [whole, whole]);
  await tab.getByTestId('compare-select').selectOption('');
  assert.deepEqual(problems, []);
});

test('the exported journeys equal `waypoint simulate` for the same settings, and import (picker or drop) draws them', async () => {
  const { page: tab, problems } = await page();
  await tab.getByTestId('workload-size').fill('150');
  await tab.getByTestId('policy-select').selectOption('fair');
  await runAndWait(tab);
  await tab.locator('#slo-ttft').fill('8000');
  await runAndWait(tab);
  const download = tab.waitForEvent('download');
  await tab.getByTestId('export-journeys').click();
  const exported = join(scratch, 'exported.jsonl');
  await (await download).saveAs(exported);

  // The command line the page shows, run by the host binary.
  const command = (await tab.getByTestId('command').textContent()).trim().split(/\s+/);
  assert.equal(command[0], 'waypoint');
  const expected = join(scratch, 'expected.jsonl');
  const args = command.slice(1).map((arg) => (arg === 'journeys.jsonl' ? expected : arg));
  assert.ok(args.includes('--slo-ttft-ms'));
  const reportPath = join(scratch, 'report.json');
  execFileSync(waypoint, [...args, '--report', reportPath], { stdio: ['ignore', 'ignore', 'inherit'] });
  const want = readFileSync(expected, 'utf8');
  assert.ok(want.length > 0);
  assert.ok(readFileSync(exported, 'utf8') === want, 'exported journeys differ from waypoint simulate');

  // The page's summary, computed from the journeys, agrees with the command's report.
  const report = JSON.parse(readFileSync(reportPath, 'utf8'));
  const summary = await summaryText(tab);
  const triple = (p) => `${p.p50.toFixed(1)} / ${p.p90.toFixed(1)} / ${p.p99.toFixed(1)}`;
  for (const expectedText of [triple(report.ttft_ms), triple(report.e2e_ms), triple(report.queue_ms),
    `preemptions${report.preemptions}`, `within the objectives)${report.goodput_rps.toFixed(3)}`]) {
    assert.ok(summary.includes(expectedText), `summary lacks ${expectedText}: ${summary}`);
  }
  await tab.locator('#slo-ttft').fill('');

  await tab.getByTestId('import-journeys').setInputFiles(expected);
  await tab.getByTestId('status').filter({ hasText: 'expected.jsonl: 150 requests' }).waitFor();
  assert.equal(await tab.getByTestId('request-lane').count(), 150);

  // Drag and drop takes the same path.
  await tab.evaluate((text) => {
    const transfer = new DataTransfer();
    transfer.items.add(new File([text], 'dropped.jsonl'));
    document.dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, bubbles: true, cancelable: true }));
  }, want);
  await tab.getByTestId('status').filter({ hasText: 'dropped.jsonl: 150 requests' }).waitFor();
  assert.deepEqual(problems, []);
});

test('live mode generates tokens with the tiny model on WebGPU, the component deciding each step', async () => {
  const { page: tab, problems } = await page();
  await tab.getByTestId('mode-select').selectOption('live');
  await tab.getByTestId('policy-select').selectOption('fcfs');
  await tab.getByTestId('workload-size').fill('6');
  await tab.locator('#prompt-lengths').fill('uniform:8-40');
  await tab.locator('#output-lengths').fill('fixed:6');
  await runAndWait(tab, 300_000);
  assert.equal(await tab.getByTestId('request-lane').count(), 6);
  assert.match(await summaryText(tab), /tokens generated on WebGPU36 \(\d+ steps\)/);
  await tab.screenshot({ path: join(artifacts, 'live-run.png'), fullPage: true });
  await tab.getByTestId('mode-select').selectOption('simulate');
  await tab.locator('#prompt-lengths').fill('sharegpt');
  await tab.locator('#output-lengths').fill('sharegpt');
  assert.deepEqual(problems, []);
});

test('the paged-attention kernel on WebGPU matches the dense forward', async () => {
  const { page: tab, problems } = await page();
  // A worker of the page's own script, beside the one the page runs.
  const check = await tab.evaluate(() => new Promise((resolve, reject) => {
    const worker = new Worker(new URL('src/worker.js', document.baseURI), { type: 'module' });
    worker.onmessage = ({ data }) => {
      worker.terminate();
      if (data.type === 'model-check') resolve(data.result);
      else reject(new Error(data.message));
    };
    worker.onerror = (event) => reject(new Error(event.message));
    worker.postMessage({ type: 'model-check', id: 0 });
  }));
  assert.equal(check.rows, 4);
  assert.ok(check.max_relative_error < 1e-4, `relative error ${check.max_relative_error}`);
  assert.deepEqual(problems, []);
});

test('bad settings and a file that is no journey log get clear errors, and the page keeps working', async () => {
  const { page: tab } = await page();
  await tab.getByTestId('mode-select').selectOption('simulate');
  await tab.getByTestId('workload-size').fill('10');
  await tab.locator('#prompt-lengths').fill('lognormal');
  await tab.getByTestId('run').click();
  await tab.getByTestId('status').filter({ hasText: 'bad length distribution "lognormal"' }).waitFor();
  assert.equal(await tab.getByTestId('status').getAttribute('class'), 'error');
  const notJourneys = join(scratch, 'not-journeys.jsonl');
  writeFileSync(notJourneys, '{"hello": 1}\nnot json\n');
  await tab.getByTestId('import-journeys').setInputFiles(notJourneys);
  await tab.getByTestId('status').filter({ hasText: 'no journey events found' }).waitFor();
  await tab.locator('#prompt-lengths').fill('sharegpt');
  await runAndWait(tab);
  assert.equal(await tab.getByTestId('request-lane').count(), 10);
});

test('workload files as users write them: named prefix groups run as on the command line; out-of-order lines and oversized prompts are line-numbered errors', async () => {
  const { page: tab, problems } = await page();
  await tab.getByTestId('mode-select').selectOption('simulate');
  await tab.getByTestId('policy-select').selectOption('fcfs');
  const line = (id, arrival, promptLen, group) => JSON.stringify({
    id, arrival_ms: arrival, prompt_len: promptLen, output_len: 6,
    ...(group === undefined ? {} : { prefix_group: group, prefix_len: 48 }),
  });
  const named = join(scratch, 'named-groups.jsonl');
  writeFileSync(named, Array.from({ length: 12 }, (_, i) => line(`r${i}`, i * 40, 80, `system-prompt-${i % 3}`)).join('\n'));
  await tab.locator('#workload-file').setInputFiles(named);
  await runAndWait(tab);
  assert.equal(await tab.getByTestId('request-lane').count(), 12);
  const download = tab.waitForEvent('download');
  await tab.getByTestId('export-journeys').click();
  const exported = join(scratch, 'named-exported.jsonl');
  await (await download).saveAs(exported);
  const command = (await tab.getByTestId('command').textContent()).trim().split(/\s+/);
  const expected = join(scratch, 'named-expected.jsonl');
  const args = command.slice(1).map((arg) => (arg === 'journeys.jsonl' ? expected : arg === 'named-groups.jsonl' ? named : arg));
  execFileSync(waypoint, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  assert.ok(readFileSync(exported, 'utf8') === readFileSync(expected, 'utf8'), 'journeys differ from waypoint simulate');

  for (const [name, lines, reason] of [
    ['out-of-order.jsonl', [line('a', 40, 8), '', line('b', 0, 8)],
      'workload line 3: request "b" arrives before the request on line 1'],
    ['oversized.jsonl', [line('a', 0, 8), line('huge', 1, 4000000000)],
      'workload line 2: a prompt of 4000000000 tokens does not fit max_model_len'],
  ]) {
    const path = join(scratch, name);
    writeFileSync(path, lines.join('\n'));
    await tab.locator('#workload-file').setInputFiles(path);
    await tab.getByTestId('run').click();
    await tab.getByTestId('status').filter({ hasText: reason }).waitFor({ timeout: 30_000 });
    assert.equal(await tab.getByTestId('status').getAttribute('class'), 'error');
  }
  await tab.locator('#workload-file').setInputFiles([]);
  await tab.getByTestId('workload-size').fill('10');
  await runAndWait(tab);
  assert.equal(await tab.getByTestId('request-lane').count(), 10);
  assert.deepEqual(problems, []);
});

test('Stop ends a long live run and the next run works', async () => {
  const { page: tab, problems } = await page();
  await tab.getByTestId('mode-select').selectOption('live');
  await tab.getByTestId('workload-size').fill('200');
  await tab.getByTestId('run').click();
  await tab.getByTestId('status').filter({ hasText: 'live on WebGPU' }).waitFor();
  await tab.getByTestId('stop').click();
  await tab.getByTestId('status').filter({ hasText: /^stopped$/ }).waitFor();
  await tab.getByTestId('mode-select').selectOption('simulate');
  await tab.getByTestId('workload-size').fill('30');
  await runAndWait(tab);
  assert.equal(await tab.getByTestId('request-lane').count(), 30);
  assert.deepEqual(problems, []);
});

test('without WebGPU the page says so and runs the latency model', async () => {
  const { page: tab, problems } = await open({ webgpu: false });
  assert.equal(await tab.getByTestId('backend').textContent(), 'latency-model');
  assert.ok(await tab.locator('#mode option[value=live]').evaluate((option) => option.disabled));
  await tab.getByTestId('workload-size').fill('20');
  await runAndWait(tab);
  assert.equal(await tab.getByTestId('request-lane').count(), 20);
  assert.deepEqual(problems, []);
});
