// The page: settings in, runs out to the worker, journeys onto timelines, a summary and charts;
// journey logs in and out as JSON Lines.
import { parseJourneys, summarize, loadFromJourneys } from './journeys.js';
import { Timeline, legend } from './timeline.js';
import { lineChart } from './charts.js';

const $ = (id) => document.getElementById(id);
const pending = new Map();
let worker = startWorker();
let nextId = 1;
/** The runs on screen: [{label, journeys, text, steps}], the first one is exported. */
let shown = [];
let gpu = null;

/**
 * The simulation thread. Stop terminates it — the only way to end a run inside a component
 * or a long live run — and starts a fresh one.
 */
function startWorker() {
  const thread = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  thread.onmessage = receive;
  return thread;
}

function stop() {
  worker.terminate();
  for (const job of pending.values()) job.reject(new Error('stopped'));
  pending.clear();
  worker = startWorker();
}

function receive({ data }) {
  const job = pending.get(data.id);
  if (!job) return;
  if (data.type === 'progress') {
    status(`${job.label}: ${data.finished} requests finished…`);
  } else if (data.type === 'result') {
    pending.delete(data.id);
    job.resolve(data);
  } else if (data.type === 'error') {
    pending.delete(data.id);
    job.reject(new Error(data.message));
  }
}

function request(message, label) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, label });
    worker.postMessage({ ...message, id });
  });
}

function status(text, error = false) {
  $('status').textContent = text;
  $('status').className = error ? 'error' : '';
}

/** A number field that may be left empty (null then). */
function optionalNumber(id) {
  const text = $(id).value.trim();
  return text === '' ? null : Number(text);
}

async function readFile(input) {
  const file = input.files?.[0];
  return file ? { name: file.name, text: await file.text() } : null;
}

/** The settings as `waypoint simulate` takes them, and that command line. */
async function settings() {
  const number = (id) => Number($(id).value);
  const rate = $('request-rate').value.trim();
  const workloadFile = await readFile($('workload-file'));
  const latencyFile = await readFile($('latency-file'));
  const synthetic = {
    num_requests: number('num-requests'),
    request_rate: rate === '' ? null : Number(rate),
    burstiness: 1.0,
    prompt_lengths: $('prompt-lengths').value.trim(),
    output_lengths: $('output-lengths').value.trim(),
    prefix_fraction: number('prefix-fraction'),
    prefix_groups: 8,
    prefix_len: 128,
    priorities: $('priorities').value.trim(),
    clients: $('clients').value.trim(),
    seed: number('seed'),
  };
  const engine = {
    max_num_seqs: number('max-num-seqs'),
    max_num_batched_tokens: number('max-num-batched-tokens'),
    max_model_len: number('max-model-len'),
    num_blocks: number('num-blocks'),
    block_size: number('block-size'),
    enable_prefix_caching: $('prefix-caching').checked,
    enable_chunked_prefill: true,
    long_prefill_token_threshold: 0,
  };
  const spec = {
    workload: workloadFile ? { jsonl: workloadFile.text } : { synthetic },
    latency_model: latencyFile?.text ?? null,
    slo_ttft_ms: optionalNumber('slo-ttft'),
    slo_tpot_ms: optionalNumber('slo-tpot'),
    engine,
  };
  const flags = workloadFile ? [`--workload ${workloadFile.name}`] : [
    `--num-requests ${synthetic.num_requests}`,
    ...(synthetic.request_rate === null ? [] : [`--request-rate ${synthetic.request_rate}`]),
    `--prompt-lengths ${synthetic.prompt_lengths}`, `--output-lengths ${synthetic.output_lengths}`,
    `--priorities ${synthetic.priorities}`, `--clients ${synthetic.clients}`,
    `--prefix-fraction ${synthetic.prefix_fraction}`, `--seed ${synthetic.seed}`,
  ];
  if (latencyFile) flags.push(`--latency-model ${latencyFile.name}`);
  flags.push(`--max-num-seqs ${engine.max_num_seqs}`, `--max-num-batched-tokens ${engine.max_num_batched_tokens}`,
    `--max-model-len ${engine.max_model_len}`, `--num-blocks ${engine.num_blocks}`, `--block-size ${engine.block_size}`);
  if (!engine.enable_prefix_caching) flags.push('--no-enable-prefix-caching');
  if (spec.slo_ttft_ms !== null) flags.push(`--slo-ttft-ms ${spec.slo_ttft_ms}`);
  if (spec.slo_tpot_ms !== null) flags.push(`--slo-tpot-ms ${spec.slo_tpot_ms}`);
  return { spec, flags };
}

async function updateCommand() {
  const { flags } = await settings();
  const compare = $('compare').value;
  const scheduler = compare ? `--compare ${$('policy').value},${compare}` : `--scheduler ${$('policy').value} --journey-log journeys.jsonl`;
  $('command').textContent = `waypoint simulate ${flags.join(' ')} ${scheduler}`;
  $('command-label').textContent = $('mode').value === 'live'
    ? 'The same workload simulated on the command line:'
    : 'Same run on the command line:';
}

async function run(event) {
  event.preventDefault();
  // Before anything is awaited: the click shows at once, and a second click cannot start a run.
  $('run').disabled = true;
  $('stop').disabled = false;
  status('reading the settings…');
  try {
    const { spec } = await settings();
    const policies = [$('policy').value, $('compare').value].filter(Boolean);
    const live = $('mode').value === 'live';
    const runs = [];
    for (const policy of policies) {
      const label = live ? `${policy} · live on WebGPU` : policy;
      status(`${label}: starting…`);
      const message = live
        ? { type: 'live', policy, spec }
        : { type: 'simulate', policy, spec };
      const { result, elapsedMs } = await request(message, label);
      runs.push({ label, text: result.journeys, journeys: parseJourneys(result.journeys), steps: result.steps, elapsedMs, generated: result.generated });
    }
    show(runs);
    status(`done: ${runs.map((r) => `${r.label} in ${(r.elapsedMs / 1000).toFixed(2)} s`).join(', ')}`);
  } catch (error) {
    status(String(error.message ?? error), true);
  } finally {
    $('run').disabled = false;
    $('stop').disabled = true;
  }
}

function show(runs) {
  shown = runs;
  $('export').disabled = runs.length === 0;
  const range = {
    startNs: Math.min(...runs.map((r) => r.journeys.startNs)),
    endNs: Math.max(...runs.map((r) => r.journeys.endNs)),
  };
  const container = $('timelines');
  container.replaceChildren();
  const timelines = [];
  const zoomAll = (next) => timelines.forEach((timeline) => timeline.zoom(next));
  for (const run of runs) {
    const section = document.createElement('div');
    section.className = 'timeline';
    const title = document.createElement('h3');
    title.textContent = `${run.label} — ${run.journeys.requests.length} requests`;
    const body = document.createElement('div');
    section.append(title, body);
    container.append(section);
    const timeline = new Timeline(body, $('tooltip'));
    timelines.push(timeline);
    timeline.show(run.journeys, range, zoomAll);
  }
  summaryTable(runs);
  charts(runs);
}

function summaryTable(runs) {
  const slo = { ttftMs: optionalNumber('slo-ttft'), tpotMs: optionalNumber('slo-tpot') };
  const summaries = runs.map((r) => summarize(r.journeys, slo));
  const f = (value, digits = 1) => (Number.isFinite(value) ? value.toFixed(digits) : '—');
  const pct = (key) => (s) => `${f(s[key].p50)} / ${f(s[key].p90)} / ${f(s[key].p99)}`;
  const rows = [
    ['requests (finished)', (s) => `${s.requests} (${s.finished})`],
    ['TTFT p50 / p90 / p99 (ms)', pct('ttftMs')],
    ['TPOT p50 / p90 / p99 (ms)', pct('tpotMs')],
    ['e2e p50 / p90 / p99 (ms)', pct('e2eMs')],
    ['queue p50 / p90 / p99 (ms)', pct('queueMs')],
    ['preemptions', (s) => `${s.preemptions}`],
    [slo.ttftMs === null && slo.tpotMs === null ? 'goodput (req/s)' : 'goodput (req/s within the objectives)', (s) => f(s.goodputRps, 3)],
    ['duration (s)', (s) => f(s.durationS, 3)],
  ];
  const table = $('summary');
  table.replaceChildren();
  const head = table.insertRow();
  head.append(...['', ...runs.map((r) => r.label)].map((text) => Object.assign(document.createElement('th'), { textContent: text })));
  for (const [name, value] of rows) {
    const row = table.insertRow();
    row.append(Object.assign(document.createElement('th'), { textContent: name }));
    for (const summary of summaries) row.insertCell().textContent = value(summary);
  }
  const generated = runs.filter((r) => r.generated);
  if (generated.length) {
    const row = table.insertRow();
    row.append(Object.assign(document.createElement('th'), { textContent: 'tokens generated on WebGPU' }));
    for (const run of runs) row.insertCell().textContent = run.generated ? `${run.generated.tokens} (${run.generated.steps} steps)` : '—';
  }
}

function charts(runs) {
  // All canvases are placed before any is drawn: the grid sizes them by how many there are.
  const pending = [];
  $('charts').replaceChildren();
  for (const run of runs) {
    const steps = run.steps ?? loadFromJourneys(run.journeys);
    const add = (title, series, options) => {
      const canvas = document.createElement('canvas');
      pending.push(() => lineChart(canvas, `${run.label}: ${title}`, steps.t_ms, series, options));
      return canvas;
    };
    $('charts').append(
      add('KV cache usage', steps.kv_cache_usage ? [{ label: 'kv', values: steps.kv_cache_usage }] : [], { max: 1 }),
      add('requests', [{ label: 'running', values: steps.num_running }, { label: 'waiting', values: steps.num_waiting }]),
      add('tokens scheduled per step', steps.scheduled_tokens ? [{ label: 'tokens', values: steps.scheduled_tokens }] : []),
    );
  }
  for (const draw of pending) draw();
}

function importLog(name, text) {
  const journeys = parseJourneys(text);
  if (journeys.requests.length === 0) {
    status(`${name}: no journey events found`, true);
    return;
  }
  show([{ label: name, text, journeys, steps: null }]);
  status(`${name}: ${journeys.requests.length} requests` + (journeys.skipped ? `, ${journeys.skipped} lines skipped` : ''));
}

function exportLog() {
  const [run] = shown;
  if (!run) return;
  const url = URL.createObjectURL(new Blob([run.text], { type: 'application/x-ndjson' }));
  const link = Object.assign(document.createElement('a'), { href: url, download: `journeys-${run.label.split(' ')[0]}.jsonl` });
  link.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** Whether WebGPU gives an adapter; without one, live mode is off and the latency model runs. */
async function probeGpu() {
  const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
  gpu = adapter ?? null;
  const live = $('mode').querySelector('option[value=live]');
  if (gpu) {
    $('backend').textContent = 'webgpu';
    const info = gpu.info ?? {};
    $('backend-detail').textContent = `(${[info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'adapter found'}; live mode runs the tiny model here)`;
  } else {
    $('backend').textContent = 'latency-model';
    $('backend-detail').textContent = navigator.gpu
      ? '(WebGPU gave no adapter: steps take the latency model\'s time; live mode is off)'
      : '(this browser has no WebGPU: steps take the latency model\'s time; live mode is off)';
    live.disabled = true;
  }
}

$('controls').addEventListener('submit', run);
$('controls').addEventListener('input', updateCommand);
$('export').addEventListener('click', exportLog);
$('stop').addEventListener('click', stop);
$('import').addEventListener('change', async () => {
  const file = await readFile($('import'));
  if (file) importLog(file.name, file.text);
});
document.addEventListener('dragover', (event) => { event.preventDefault(); $('drop').hidden = false; });
document.addEventListener('dragleave', (event) => { if (!event.relatedTarget) $('drop').hidden = true; });
document.addEventListener('drop', async (event) => {
  event.preventDefault();
  $('drop').hidden = true;
  const file = event.dataTransfer?.files?.[0];
  if (file) importLog(file.name, await file.text());
});
$('legend').append(...legend().map(([name, color]) => {
  const item = document.createElement('span');
  item.innerHTML = `<i style="background:${color}"></i>`;
  item.append(name);
  return item;
}));
updateCommand();
probeGpu();
