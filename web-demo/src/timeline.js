// The timeline: one lane per request on a canvas (only the lanes in view are drawn, so
// thousands scroll smoothly), phases in colour, a marker per journey event, and a tooltip with
// the event's snapshot. Each lane also has a DOM label (`data-testid="request-lane"`).
// Ctrl+wheel zooms in time around the pointer, Shift+wheel pans, a double click shows it all.
import { PHASES } from './journeys.js';

export const COLORS = {
  waiting: '#b8c2cc',
  prefill: '#3b7ddd',
  decode: '#2f9e62',
  preempted: '#f08c00',
};

const MARKERS = {
  QUEUED: '#495057',
  SCHEDULED: '#1c3f94',
  FIRST_TOKEN: '#0b7a3e',
  PREEMPTED: '#d9480f',
  FINISHED: '#212529',
};

const LABEL_WIDTH = 96;
const AXIS_HEIGHT = 20;

export class Timeline {
  constructor(container, tooltip) {
    this.container = container;
    this.tooltip = tooltip;
    this.scroller = document.createElement('div');
    this.scroller.className = 'scroller';
    this.canvas = document.createElement('canvas');
    this.labels = document.createElement('div');
    this.labels.className = 'labels';
    this.scroller.append(this.canvas, this.labels);
    container.replaceChildren(this.scroller);
    this.journeys = null;
    this.scroller.addEventListener('scroll', () => this.draw(), { passive: true });
    this.canvas.addEventListener('mousemove', (event) => this.hover(event));
    this.canvas.addEventListener('mouseleave', () => { this.tooltip.hidden = true; });
    this.canvas.addEventListener('wheel', (event) => this.wheel(event), { passive: false });
    this.canvas.addEventListener('dblclick', () => this.onZoom?.(this.full));
    new ResizeObserver(() => this.draw()).observe(this.scroller);
  }

  /**
   * Show `journeys` (from parseJourneys). `range` aligns timelines being compared, and
   * `onZoom` hears every change of the time range, to apply it to them all.
   */
  show(journeys, range, onZoom) {
    this.journeys = journeys;
    this.full = range ?? { startNs: journeys.startNs, endNs: journeys.endNs };
    this.range = this.full;
    this.container.dataset.rangeNs = `${this.full.startNs}-${this.full.endNs}`;
    this.onZoom = onZoom ?? ((next) => this.zoom(next));
    const count = journeys.requests.length;
    const height = this.scroller.clientHeight || 420;
    this.laneHeight = Math.max(3, Math.min(18, Math.floor((height - AXIS_HEIGHT) / Math.max(count, 1))));
    const fragment = document.createDocumentFragment();
    for (const request of journeys.requests) {
      const label = document.createElement('div');
      label.dataset.testid = 'request-lane';
      label.dataset.requestId = request.id;
      label.style.height = `${this.laneHeight}px`;
      label.style.fontSize = `${Math.min(11, this.laneHeight - 2)}px`;
      label.textContent = this.laneHeight >= 9 ? request.id : '';
      label.title = `${request.id}: ${request.preemptions} preemption(s)`;
      fragment.append(label);
    }
    this.labels.style.top = `${AXIS_HEIGHT}px`;
    this.labels.replaceChildren(fragment);
    this.draw();
  }

  /** The x position of a time on the canvas. */
  x(ns) {
    const span = Math.max(this.range.endNs - this.range.startNs, 1);
    return LABEL_WIDTH + ((ns - this.range.startNs) / span) * this.plotWidth();
  }

  /** The time at an x position on the canvas. */
  time(x) {
    return this.range.startNs + ((x - LABEL_WIDTH) / this.plotWidth()) * (this.range.endNs - this.range.startNs);
  }

  plotWidth() {
    return Math.max(this.canvas.clientWidth - LABEL_WIDTH - 8, 1);
  }

  /** Show `range` (clamped to the run), redrawn. */
  zoom(range) {
    const span = Math.min(Math.max(range.endNs - range.startNs, 1000), this.full.endNs - this.full.startNs);
    const startNs = Math.min(Math.max(range.startNs, this.full.startNs), this.full.endNs - span);
    this.range = { startNs, endNs: startNs + span };
    this.container.dataset.rangeNs = `${Math.round(startNs)}-${Math.round(startNs + span)}`;
    this.draw();
  }

  wheel(event) {
    if (!this.journeys || !(event.ctrlKey || event.metaKey || event.shiftKey)) return;
    event.preventDefault();
    const span = this.range.endNs - this.range.startNs;
    if (event.shiftKey) {
      const shift = (event.deltaY || event.deltaX) / this.plotWidth() * span;
      this.onZoom({ startNs: this.range.startNs + shift, endNs: this.range.endNs + shift });
      return;
    }
    const pointer = event.clientX - this.canvas.getBoundingClientRect().left;
    const at = this.time(Math.max(pointer, LABEL_WIDTH));
    const factor = Math.exp(event.deltaY * 0.002);
    this.onZoom({ startNs: at - (at - this.range.startNs) * factor, endNs: at + (this.range.endNs - at) * factor });
  }

  draw() {
    if (!this.journeys) return;
    const ratio = window.devicePixelRatio || 1;
    const width = this.scroller.clientWidth;
    const height = this.scroller.clientHeight;
    if (this.canvas.width !== width * ratio || this.canvas.height !== height * ratio) {
      this.canvas.width = width * ratio;
      this.canvas.height = height * ratio;
      this.canvas.style.width = `${width}px`;
      this.canvas.style.height = `${height}px`;
    }
    const context = this.canvas.getContext('2d');
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);
    const lane = this.laneHeight;
    const top = this.scroller.scrollTop;
    const requests = this.journeys.requests;
    const first = Math.max(0, Math.floor(top / lane));
    const last = Math.min(requests.length, Math.ceil((top + height) / lane) + 1);
    context.save();
    context.beginPath();
    context.rect(LABEL_WIDTH, 0, width - LABEL_WIDTH, height);
    context.clip();
    for (let index = first; index < last; index++) {
      const request = requests[index];
      const y = AXIS_HEIGHT + index * lane - top;
      const bar = Math.max(lane - 1, 1);
      for (const [phase, from, to] of request.segments) {
        if (to < this.range.startNs || from > this.range.endNs) continue;
        context.fillStyle = COLORS[phase];
        const x0 = this.x(from);
        context.fillRect(x0, y, Math.max(this.x(to) - x0, 1), bar);
      }
      if (lane >= 6) {
        for (const event of request.events) {
          context.fillStyle = MARKERS[event.event_type] ?? '#000';
          context.fillRect(this.x(event.ts_monotonic_ns) - 1, y, 2, bar);
        }
      }
    }
    context.restore();
    this.axis(context, width);
  }

  axis(context, width) {
    context.fillStyle = '#fff';
    context.fillRect(0, 0, width, AXIS_HEIGHT);
    context.fillStyle = '#495057';
    context.font = '11px system-ui, sans-serif';
    // Ticks at round times since the run's start, whatever the zoom.
    const from = (this.range.startNs - this.full.startNs) / 1e9;
    const to = (this.range.endNs - this.full.startNs) / 1e9;
    const step = niceStep((to - from) / 8);
    for (let t = step > 0 ? Math.ceil(from / step) * step : to + 1; t <= to + 1e-12; t += step) {
      const x = this.x(this.full.startNs + t * 1e9);
      context.fillRect(x, AXIS_HEIGHT - 5, 1, 5);
      context.fillText(`${+t.toFixed(6)} s`, x + 2, AXIS_HEIGHT - 7);
    }
  }

  /** The event under the pointer (or the phase), with its snapshot. */
  hover(pointer) {
    if (!this.journeys) return;
    const bounds = this.canvas.getBoundingClientRect();
    const px = pointer.clientX - bounds.left;
    const py = pointer.clientY - bounds.top - AXIS_HEIGHT + this.scroller.scrollTop;
    const request = this.journeys.requests[Math.floor(py / this.laneHeight)];
    if (!request || px < LABEL_WIDTH) {
      this.tooltip.hidden = true;
      return;
    }
    let nearest = null;
    for (const event of request.events) {
      const distance = Math.abs(this.x(event.ts_monotonic_ns) - px);
      if (distance <= 4 && (!nearest || distance < nearest.distance)) nearest = { event, distance };
    }
    let text;
    if (nearest) {
      const e = nearest.event;
      text = `${request.id} · ${e.event_type}\n`
        + `t = ${(e.ts_monotonic_ns / 1e6).toFixed(3)} ms · step ${e.scheduler_step}\n`
        + `phase ${e.phase} · prefill ${e.prefill_done_tokens}/${e.prefill_total_tokens}`
        + ` · decode ${e.decode_done_tokens}/${e.decode_max_tokens}\n`
        + `preemptions so far ${e.num_preemptions_so_far}`
        + (e.schedule_kind ? ` · ${e.schedule_kind}` : '')
        + (e.finish_status ? ` · ${e.finish_status}` : '')
        + ` · client ${e.client_index}`;
    } else {
      const ns = this.time(px);
      const segment = request.segments.find(([, from, to]) => ns >= from && ns <= to);
      if (!segment) {
        this.tooltip.hidden = true;
        return;
      }
      text = `${request.id} · ${segment[0]} for ${((segment[2] - segment[1]) / 1e6).toFixed(2)} ms`;
    }
    this.tooltip.textContent = text;
    this.tooltip.hidden = false;
    this.tooltip.style.left = `${pointer.pageX + 12}px`;
    this.tooltip.style.top = `${pointer.pageY + 12}px`;
  }
}

function niceStep(raw) {
  if (!(raw > 0)) return 0;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
}

/** The legend's entries: phases, then event markers. */
export function legend() {
  return [...PHASES.map((phase) => [phase, COLORS[phase]]),
    ...Object.entries(MARKERS).map(([name, color]) => [`${name.toLowerCase().replace('_', ' ')} event`, color])];
}
