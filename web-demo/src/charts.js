// Small line charts of the scheduler's load per step: KV usage, running and waiting requests,
// tokens scheduled.

const PALETTE = ['#3b7ddd', '#f08c00', '#2f9e62', '#ae3ec9'];

/**
 * Draw `series` ({label, values}) against `t` (ms) on `canvas`, with a title. Many steps
 * collapse to the extremes of each pixel column, so a long run draws as fast as a short one.
 */
export function lineChart(canvas, title, t, series, { max } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const context = canvas.getContext('2d');
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  context.font = '11px system-ui, sans-serif';
  context.fillStyle = '#212529';
  context.fillText(title, 4, 12);
  if (!t || t.length === 0) {
    context.fillStyle = '#868e96';
    context.fillText('not in a journey log', 4, 30);
    return;
  }
  const top = 30;
  const plotHeight = height - top - 4;
  const t0 = t[0];
  const span = Math.max(t[t.length - 1] - t0, 1e-9);
  const peak = max ?? Math.max(1, ...series.flatMap((s) => s.values));
  context.fillStyle = '#868e96';
  context.textAlign = 'right';
  context.fillText(`max ${+peak.toFixed(2)}`, width - 4, 12);
  context.textAlign = 'left';
  series.forEach((line, index) => {
    context.strokeStyle = PALETTE[index % PALETTE.length];
    context.beginPath();
    let column = -1;
    let low = 0;
    let high = 0;
    const flush = () => {
      if (column < 0) return;
      context.lineTo(column, top + plotHeight * (1 - low / peak));
      context.lineTo(column, top + plotHeight * (1 - high / peak));
    };
    for (let i = 0; i < t.length; i++) {
      const x = Math.round(((t[i] - t0) / span) * (width - 1));
      const value = line.values[i];
      if (x !== column) {
        flush();
        column = x;
        low = value;
        high = value;
      } else {
        low = Math.min(low, value);
        high = Math.max(high, value);
      }
    }
    flush();
    context.stroke();
    context.fillStyle = PALETTE[index % PALETTE.length];
    context.fillText(`— ${line.label}`, 4 + 80 * index, 26);
  });
}
