// The policy components the host loads, run under jco in JavaScript: the contract holds there
// too (journeys, typed errors, state moving between policies).
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';

async function load(policy) {
  const base = new URL(`../dist/components/${policy}/`, import.meta.url);
  const { instantiate } = await import(new URL(`${policy}.js`, base));
  const root = await instantiate(
    async (path) => WebAssembly.compile(await readFile(new URL(path, base))), {});
  return root.scheduler;
}

function config(overrides = {}) {
  return {
    maxNumSeqs: 4, maxNumBatchedTokens: 64, maxModelLen: 128, blockSize: 4, numBlocks: 64,
    enablePrefixCaching: true, enableChunkedPrefill: true, longPrefillTokenThreshold: 0,
    reserveFullPrompt: false, journey: { enabled: true },
    stepTracing: { enabled: false, sampleRate: 0, richSubsampleRate: 0, closureInterval: 100, seed: 0n },
    ...overrides,
  };
}

function request(id, promptLen, maxTokens, priority = 0) {
  return {
    id, clientIndex: 0, promptTokenIds: Uint32Array.from({ length: promptLen }, (_, i) => 10 + i),
    maxTokens, minTokens: 0, stopTokenIds: new Uint32Array(), priority, arrivalNs: 0n,
    journeySampled: true,
  };
}

/** Step until every request finished, sampling token 7 wherever the scheduler asks for one. */
function runToCompletion(scheduler, count, startNs = 0n) {
  const events = [];
  let now = startNs;
  let finished = 0;
  for (let step = 0; step < 1000 && finished < count; step++) {
    now += 1_000_000n;
    const output = scheduler.schedule(now);
    events.push(...output.journeyEvents);
    const sampled = output.batch.sample;
    const tokenIds = Uint32Array.from(sampled, () => 7);
    const missing = Uint32Array.from([...sampled.keys()].filter((i) => !sampled[i]));
    const result = scheduler.updateFromOutput({ tokenIds, missing }, now);
    events.push(...result.journeyEvents);
    finished += result.finishes.length;
  }
  assert.equal(finished, count, 'every request finished');
  return { events, now };
}

for (const policy of ['fcfs', 'priority', 'fair']) {
  test(`${policy}: requests run to completion with their journeys`, async () => {
    const { Scheduler, describePolicy } = await load(policy);
    assert.equal(describePolicy().name, policy);
    const scheduler = Scheduler.create(config());
    const queued = ['a', 'b', 'c'].flatMap((id, i) =>
      scheduler.addRequest(request(id, 9 + i, 5), 0n).journeyEvents);
    assert.deepEqual(queued.map((e) => e.eventType), ['queued', 'queued', 'queued']);
    const { events } = runToCompletion(scheduler, 3);
    for (const id of ['a', 'b', 'c']) {
      const journey = events.filter((e) => e.requestId === id);
      assert.deepEqual(journey.map((e) => e.eventType), ['scheduled', 'first-token', 'finished']);
      assert.equal(journey.at(-1).finishStatus, 'length-capped');
      assert.equal(journey.at(-1).decodeDoneTokens, 5);
    }
    assert.equal(scheduler.stats(0n).numRunning, 0);
  });
}

test('bad input comes back as typed errors', async () => {
  const { Scheduler } = await load('fcfs');
  assert.throws(() => Scheduler.create(config({ numBlocks: 1 })),
    (error) => typeof error.payload?.tag === 'string');
  const scheduler = Scheduler.create(config());
  scheduler.addRequest(request('x', 4, 2), 0n);
  assert.throws(() => scheduler.addRequest(request('x', 4, 2), 0n),
    (error) => error.payload?.tag === 'duplicate-id');
  assert.throws(() => scheduler.addRequest(request('long', 200, 2), 0n),
    (error) => error.payload?.tag === 'prompt-too-long');
});

test('state exported by fcfs continues under priority', async () => {
  const fcfs = await load('fcfs');
  const priority = await load('priority');
  const source = fcfs.Scheduler.create(config());
  source.addRequest(request('p', 12, 6), 0n);
  source.addRequest(request('q', 8, 6, 1), 0n);
  const output = source.schedule(1_000_000n);
  const sampled = output.batch.sample;
  source.updateFromOutput({
    tokenIds: Uint32Array.from(sampled, () => 7),
    missing: Uint32Array.from([...sampled.keys()].filter((i) => !sampled[i])),
  }, 1_000_000n);
  const state = source.exportState(2_000_000n);
  const target = priority.Scheduler.importState(state, 2_000_000n);
  assert.deepEqual(target.liveRequests(2_000_000n).map((r) => r.requestId).sort(), ['p', 'q']);
  runToCompletion(target, 2, 2_000_000n);
});
