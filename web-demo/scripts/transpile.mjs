// Turns the policy components the host loads (../components/*.wasm, built by `cargo xtask
// components`) into browser modules with jco: dist/components/<policy>/<policy>.js.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const demo = join(dirname(fileURLToPath(import.meta.url)), '..');
const components = join(demo, '..', 'components');
const jco = join(demo, 'node_modules', '.bin', 'jco');

for (const policy of ['fcfs', 'priority', 'fair']) {
  const input = join(components, `${policy}.wasm`);
  if (!existsSync(input)) {
    throw new Error(`${input} is missing: run \`cargo xtask components\` first`);
  }
  const output = join(demo, 'dist', 'components', policy);
  mkdirSync(output, { recursive: true });
  // `--instantiation async`: the page instantiates (and re-instantiates) explicitly;
  // `--strict`: bad numbers are errors instead of being wrapped silently.
  execFileSync(jco, ['transpile', input, '-o', output, '--instantiation', 'async',
    '--no-nodejs-compat', '--strict', '--quiet'], { stdio: 'inherit' });
  writeFileSync(join(output, 'package.json'), '{"type": "module"}\n');
  console.log(`transpiled ${policy} into ${output}`);
}
