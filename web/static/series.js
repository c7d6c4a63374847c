// How series look and how their numbers read: ten colours that stay apart on the dark page, a dash
// pattern per index so overlapping lines are told apart without colour, EMA smoothing, number format.

// Ten hues spread around the wheel, bright enough for the dark background (after Tableau 10).
export const PALETTE = [
  "#4c9aff", // blue
  "#ff8c42", // orange
  "#3ecf8e", // green
  "#ff5f7e", // rose
  "#b48cff", // violet
  "#f5d142", // yellow
  "#4dd8e6", // cyan
  "#e07bd8", // pink
  "#a3d468", // lime
  "#c9a27a", // tan
];
// Solid first; then patterns that differ in rhythm, not only in length.
export const DASHES = [null, [8, 4], [2, 3], [12, 3, 2, 3], [4, 4], [16, 5], [2, 7], [7, 2, 2, 2, 2, 2], [10, 8], [3, 3, 10, 3]];

export function colour(index) {
  return PALETTE[index % PALETTE.length];
}

export function dash(index) {
  return DASHES[index % DASHES.length];
}

// "#rrggbb" at the given opacity, for the faint raw series behind a smoothed one.
export function faint(hex, alpha = 0.28) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

/**
 * Exponential moving average with start-up bias correction, as TensorBoard smooths scalars:
 * m_t = w·m_{t-1} + (1-w)·x_t with m_0 = 0, shown as m_t / (1 - w^t), so the first points are not
 * pulled towards zero. Missing values (null) stay missing and do not advance t.
 * @param {(number|null)[]} values
 * @param {number} weight in [0, 1); 0 returns the values unchanged
 */
export function smooth(values, weight) {
  if (!(weight > 0)) return values.slice();
  let mean = 0;
  let count = 0;
  return values.map((v) => {
    if (v == null || !Number.isFinite(v)) return v ?? null;
    mean = weight * mean + (1 - weight) * v;
    count += 1;
    return mean / (1 - weight ** count);
  });
}

// Four significant digits, so a loss of 0.0003 reads 0.0003000 → "3.000e-4", not "0.000".
export function formatNumber(value) {
  if (value == null || !Number.isFinite(value)) return "–";
  const size = Math.abs(value);
  if (size === 0) return "0";
  if (size < 1e-3 || size >= 1e5) return value.toExponential(3);
  return Number(value.toPrecision(4)).toString();
}

// "m:ss", or "Hh Mm" from an hour on.
export function formatDuration(seconds) {
  if (seconds == null || !Number.isFinite(seconds) || seconds < 0) return "–";
  const s = Math.round(seconds);
  const m = Math.floor(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)}h ${m % 60}m` : `${m}:${String(s % 60).padStart(2, "0")}`;
}
