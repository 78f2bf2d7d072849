// Journey JSON Lines — as `waypoint simulate --journey-log` and `waypoint serve --journey-log`
// write them — turned into one lane of phases and events per request, and the summary figures.

/** Phases a lane is drawn in, in the order of the legend. */
export const PHASES = ['waiting', 'prefill', 'decode', 'preempted'];

/**
 * Parse a journey log. Lines that are not journey events are counted, not fatal: a log cut off
 * mid-line (a server still writing) still shows what it holds.
 */
export function parseJourneys(text) {
  const byId = new Map();
  let skipped = 0;
  let start = Infinity;
  let end = -Infinity;
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    let event;
    try {
      event = JSON.parse(line);
    } catch {
      skipped++;
      continue;
    }
    if (typeof event?.request_id !== 'string' || typeof event.event_type !== 'string'
        || typeof event.ts_monotonic_ns !== 'number') {
      skipped++;
      continue;
    }
    let request = byId.get(event.request_id);
    if (!request) {
      request = { id: event.request_id, client: event.client_index, events: [] };
      byId.set(event.request_id, request);
    }
    request.events.push(event);
    start = Math.min(start, event.ts_monotonic_ns);
    end = Math.max(end, event.ts_monotonic_ns);
  }
  const requests = [...byId.values()];
  for (const request of requests) lane(request, end);
  requests.sort((a, b) => a.arrivalNs - b.arrivalNs || a.order - b.order);
  return { requests, startNs: Number.isFinite(start) ? start : 0, endNs: Number.isFinite(end) ? end : 0, skipped };
}

/** A request's phases as segments [phase, fromNs, toNs], and its key times. */
function lane(request, endNs) {
  const events = request.events;
  request.order = events[0].ts_monotonic_ns;
  request.arrivalNs = events[0].ts_monotonic_ns;
  request.segments = [];
  request.preemptions = 0;
  let phase = 'waiting';
  let since = request.arrivalNs;
  const enter = (next, at) => {
    if (at > since || next !== phase) request.segments.push([phase, since, at]);
    phase = next;
    since = at;
  };
  for (const event of events) {
    const at = event.ts_monotonic_ns;
    switch (event.event_type) {
      case 'QUEUED':
        request.arrivalNs = at;
        since = at;
        break;
      case 'SCHEDULED':
        request.firstScheduledNs ??= at;
        enter(event.decode_done_tokens > 0 && event.prefill_done_tokens >= event.prefill_total_tokens
          ? 'decode' : 'prefill', at);
        break;
      case 'FIRST_TOKEN':
        request.firstTokenNs ??= at;
        enter('decode', at);
        break;
      case 'PREEMPTED':
        request.preemptions++;
        enter('preempted', at);
        break;
      case 'FINISHED':
        request.finishNs = at;
        request.finishStatus = event.finish_status;
        request.outputTokens = event.decode_done_tokens;
        enter(phase, at);
        phase = null;
        break;
      default:
        break;
    }
  }
  if (phase !== null) request.segments.push([phase, since, Math.max(since, endNs)]);
  request.segments = request.segments.filter(([, from, to]) => to > from);
}

/** The nearest-rank percentile, as `waypoint simulate`'s report computes it. */
export function percentile(sorted, q) {
  if (sorted.length === 0) return 0;
  const rank = Math.min(Math.max(Math.ceil(q * sorted.length), 1), sorted.length);
  return sorted[rank - 1];
}

function percentiles(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mean = sorted.length ? sorted.reduce((a, b) => a + b, 0) / sorted.length : 0;
  return { p50: percentile(sorted, 0.5), p90: percentile(sorted, 0.9), p99: percentile(sorted, 0.99), mean };
}

/** TTFT, TPOT, end-to-end and queueing percentiles (ms), preemptions and goodput. */
export function summarize(journeys, slo = {}) {
  const ms = (ns) => ns / 1e6;
  const ttft = [];
  const tpot = [];
  const e2e = [];
  const queue = [];
  let preemptions = 0;
  let finished = 0;
  let good = 0;
  for (const request of journeys.requests) {
    preemptions += request.preemptions;
    if (request.firstScheduledNs !== undefined) queue.push(ms(request.firstScheduledNs - request.arrivalNs));
    const requestTtft = request.firstTokenNs === undefined ? undefined : ms(request.firstTokenNs - request.arrivalNs);
    if (requestTtft !== undefined) ttft.push(requestTtft);
    if (request.finishNs === undefined) continue;
    finished++;
    e2e.push(ms(request.finishNs - request.arrivalNs));
    let requestTpot;
    if (request.outputTokens > 1) {
      requestTpot = ms(request.finishNs - (request.firstTokenNs ?? request.finishNs)) / (request.outputTokens - 1);
      tpot.push(requestTpot);
    }
    const meets = (value, limit) => limit == null || value === undefined || value <= limit;
    if (meets(requestTtft, slo.ttftMs) && meets(requestTpot, slo.tpotMs)) good++;
  }
  const firstArrival = Math.min(...journeys.requests.map((r) => r.arrivalNs));
  const seconds = Math.max((journeys.endNs - (Number.isFinite(firstArrival) ? firstArrival : 0)) / 1e9, Number.MIN_VALUE);
  return {
    requests: journeys.requests.length,
    finished,
    durationS: seconds,
    ttftMs: percentiles(ttft),
    tpotMs: percentiles(tpot),
    e2eMs: percentiles(e2e),
    queueMs: percentiles(queue),
    preemptions,
    goodputRps: good / seconds,
  };
}

/** Running and waiting counts over time, from journeys alone (for imported logs). */
export function loadFromJourneys(journeys) {
  const changes = [];
  for (const request of journeys.requests) {
    for (const [phase, from, to] of request.segments) {
      const running = phase === 'prefill' || phase === 'decode';
      changes.push([from, running ? 1 : 0, running ? 0 : 1], [to, running ? -1 : 0, running ? 0 : -1]);
    }
  }
  changes.sort((a, b) => a[0] - b[0]);
  const series = { t_ms: [], num_running: [], num_waiting: [] };
  let running = 0;
  let waiting = 0;
  for (let i = 0; i < changes.length; i++) {
    running += changes[i][1];
    waiting += changes[i][2];
    if (i + 1 < changes.length && changes[i + 1][0] === changes[i][0]) continue;
    series.t_ms.push(changes[i][0] / 1e6);
    series.num_running.push(running);
    series.num_waiting.push(waiting);
  }
  return series;
}
