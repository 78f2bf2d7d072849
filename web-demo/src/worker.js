// The simulation's thread: the Rust simulator (wasm-bindgen) driving a policy component that
// jco turned into a JavaScript module — the same component files `waypoint` loads.
import init, * as waypoint from '../dist/pkg/waypoint_web.js';

const ready = init({ module_or_path: new URL('../dist/pkg/waypoint_web_bg.wasm', import.meta.url) });
const components = new Map();

/** The policy's `scheduler` interface; a fresh instance per run, so no run sees another's state. */
async function component(policy) {
  const base = new URL(`../dist/components/${policy}/`, import.meta.url);
  if (!components.has(policy)) {
    components.set(policy, import(new URL(`${policy}.js`, base).href));
  }
  const { instantiate } = await components.get(policy);
  const root = await instantiate((path) => WebAssembly.compileStreaming(fetch(new URL(path, base))), {});
  return root.scheduler;
}

/** A progress callback that posts the finished count at most every 100 ms. */
function progress(id) {
  let last = 0;
  return (finished) => {
    const now = performance.now();
    if (now - last > 100) {
      last = now;
      postMessage({ type: 'progress', id, finished });
    }
  };
}

/** A simulation (latency model) or a live run (the tiny model on WebGPU) of one policy. */
async function run({ id, type, policy, spec }) {
  await ready;
  const scheduler = await component(policy);
  const origin = `${policy}.wasm (jco)`;
  const settings = JSON.stringify(spec);
  const started = performance.now();
  const result = JSON.parse(type === 'live'
    ? await waypoint.live(scheduler, origin, settings, () => performance.now(), progress(id))
    : waypoint.simulate(scheduler, origin, settings, progress(id)));
  postMessage({ type: 'result', id, policy, result, elapsedMs: performance.now() - started });
}

/** The model runner's self-check on WebGPU: the paged forward against the dense one. */
async function checkModel({ id }) {
  await ready;
  postMessage({ type: 'model-check', id, result: JSON.parse(await waypoint.check_model()) });
}

onmessage = async ({ data }) => {
  try {
    if (data.type === 'model-check') {
      await checkModel(data);
      return;
    }
    if (data.type !== 'simulate' && data.type !== 'live') throw new Error(`unknown request ${data.type}`);
    await run(data);
  } catch (error) {
    postMessage({ type: 'error', id: data.id, message: String(error?.message ?? error) });
  }
};
