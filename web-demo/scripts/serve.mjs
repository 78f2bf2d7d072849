// Serves the demo on 127.0.0.1 (`npm run serve -- --port 8080`); the tests start it in-process.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const demo = join(dirname(fileURLToPath(import.meta.url)), '..');

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.jsonl': 'application/x-ndjson',
};

/** Start serving the demo folder; resolves to the server once it listens. */
export function serve({ port = 8080, host = '127.0.0.1' } = {}) {
  const server = createServer(async (request, response) => {
    const path = decodeURIComponent(new URL(request.url, 'http://localhost').pathname);
    const file = normalize(join(demo, path.endsWith('/') ? `${path}index.html` : path));
    const inside = file.startsWith(demo + sep) && !file.includes(`${sep}node_modules${sep}`);
    const info = inside && request.method === 'GET' ? await stat(file).catch(() => null) : null;
    if (!info?.isFile()) {
      response.writeHead(request.method === 'GET' ? 404 : 405, { 'content-type': 'text/plain' });
      response.end(request.method === 'GET' ? 'not found\n' : 'method not allowed\n');
      return;
    }
    response.writeHead(200, {
      'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
      'content-length': info.size,
      'cache-control': 'no-cache',
    });
    createReadStream(file).pipe(response);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const index = process.argv.indexOf('--port');
  const port = index > 0 ? Number(process.argv[index + 1]) : 8080;
  const server = await serve({ port });
  const { address, port: bound } = server.address();
  console.log(`Waypoint demo on http://${address}:${bound}/ (Ctrl-C stops it)`);
}
