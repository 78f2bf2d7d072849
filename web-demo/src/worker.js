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

async function simulate({ id, policy, spec }) {
  await ready;
  const scheduler = await component(policy);
  let last = 0;
  const progress = (finished) => {
    const now = performance.now();
    if (now - last > 100) {
      last = now;
      postMessage({ type: 'progress', id, finished });
    }
  };
  const started = performance.now();
  const result = JSON.parse(waypoint.simulate(scheduler, `${policy}.wasm (jco)`, JSON.stringify(spec), progress));
  postMessage({ type: 'result', id, policy, result, elapsedMs: performance.now() - started });
}

async function live({ id, policy, spec }) {
  await ready;
  const scheduler = await component(policy);
  const progress = (finished) => postMessage({ type: 'progress', id, finished });
  const started = performance.now();
  const result = JSON.parse(await waypoint.live(scheduler, `${policy}.wasm (jco)`, JSON.stringify(spec), () => performance.now(), progress));
  postMessage({ type: 'result', id, policy, result, elapsedMs: performance.now() - started });
}

onmessage = async ({ data }) => {
  try {
    if (data.type === 'simulate') await simulate(data);
    else if (data.type === 'live') await live(data);
    else throw new Error(`unknown request ${data.type}`);
  } catch (error) {
    postMessage({ type: 'error', id: data.id, message: String(error?.message ?? error) });
  }
};
