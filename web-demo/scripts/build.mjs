// Builds everything the page loads, into dist/: the policy components as browser modules (jco)
// and the Rust side (simulator, model runner) as a wasm-bindgen module. One command:
// `npm run build`. wasm-bindgen's command-line tool must match the crate's version exactly; when
// none is found it is installed once into $WAYPOINT_TOOLS_DIR (default ~/.cache/waypoint-tools).
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const demo = join(dirname(fileURLToPath(import.meta.url)), '..');
const root = join(demo, '..');
const run = (command, args, options = {}) => {
  console.log(`$ ${command} ${args.join(' ')}`);
  execFileSync(command, args, { stdio: 'inherit', cwd: root, ...options });
};

run('cargo', ['xtask', 'components']);
run('node', [join(demo, 'scripts', 'transpile.mjs')]);
run('cargo', ['build', '--package', 'waypoint-web', '--target', 'wasm32-unknown-unknown', '--profile', 'web']);

const metadata = JSON.parse(execFileSync('cargo', ['metadata', '--format-version', '1', '--no-deps'], { cwd: root, maxBuffer: 1 << 26 }));
const wasm = join(metadata.target_directory, 'wasm32-unknown-unknown', 'web', 'waypoint_web.wasm');
const out = join(demo, 'dist', 'pkg');
rmSync(out, { recursive: true, force: true });
run(wasmBindgen(), ['--target', 'web', '--no-typescript', '--out-dir', out, wasm]);
console.log(`built ${out}`);

/** A wasm-bindgen of the exact version in Cargo.lock: on PATH, in the tools folder, or installed there. */
function wasmBindgen() {
  const lock = readFileSync(join(root, 'Cargo.lock'), 'utf8');
  const version = lock.match(/name = "wasm-bindgen"\nversion = "([^"]+)"/)?.[1];
  if (!version) throw new Error('Cargo.lock names no wasm-bindgen version');
  const tools = process.env.WAYPOINT_TOOLS_DIR ?? join(homedir(), '.cache', 'waypoint-tools');
  const candidates = [process.env.WASM_BINDGEN, 'wasm-bindgen', join(tools, 'bin', 'wasm-bindgen')].filter(Boolean);
  for (const candidate of candidates) {
    const probe = spawnSync(candidate, ['--version'], { encoding: 'utf8' });
    if (probe.status === 0 && probe.stdout.trim() === `wasm-bindgen ${version}`) return candidate;
  }
  console.log(`wasm-bindgen ${version} not found: installing it into ${tools} (a few minutes, once)`);
  // Not --locked: one of its pinned dependency versions is missing from the registry.
  run('cargo', ['install', 'wasm-bindgen-cli', '--version', version, '--root', tools], {
    env: {
      ...process.env,
      CARGO_TARGET_DIR: join(tools, 'target'),
      // A build tool: quick to compile matters more than its own speed.
      CARGO_PROFILE_RELEASE_OPT_LEVEL: '1',
    },
  });
  const installed = join(tools, 'bin', 'wasm-bindgen');
  if (!existsSync(installed)) throw new Error(`installing wasm-bindgen ${version} left no ${installed}`);
  return installed;
}
