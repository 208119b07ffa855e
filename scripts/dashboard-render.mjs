// Renders docs/grafana/matchchat-dashboard.json without Grafana: runs every panel's own PromQL
// against a Prometheus (/api/v1/query_range), draws the panels where their gridPos puts them,
// as SVG charts in one self-contained HTML page in Grafana's dark style, and screenshots the
// page with headless Chromium (playwright-core from tests/browser/node_modules, Debian's
// chromium). scripts/dashboard-preview.sh runs it; by hand:
//
//   node scripts/dashboard-render.mjs --prometheus http://127.0.0.1:9090 \
//        --start UNIX_SECS --end UNIX_SECS --out docs/img/dashboard.png [--html page.html] \
//        [--dashboard docs/grafana/matchchat-dashboard.json] [--rate-interval 15s] [--width 1600]
//
// Grafana's variables are replaced as Grafana would for the whole range and every node:
// $__rate_interval by --rate-interval, $__interval by the query step, $__range by the range,
// $instance by `.*` (All). Any other `$` variable is an error, so the dashboard cannot use one
// that this preview silently gets wrong. Every request has a timeout; nothing here sleeps.

import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { execFileSync } from "node:child_process";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..");

function parseArgs(argv) {
  const args = {
    dashboard: join(REPO, "docs/grafana/matchchat-dashboard.json"),
    rateInterval: "15s",
    width: 1600,
  };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    const value = argv[++i];
    if (value === undefined) throw new Error(`${argv[i - 1]} needs a value`);
    args[key] = value;
  }
  for (const need of ["prometheus", "start", "end", "out"]) {
    if (!args[need]) throw new Error(`--${need} is required (see the comment at the top of this file)`);
  }
  args.start = Number(args.start);
  args.end = Number(args.end);
  args.width = Number(args.width);
  if (!(args.end > args.start)) throw new Error("--end must be after --start");
  return args;
}

// ---------------------------------------------------------------------------------------------
// Queries

function durationSecs(text) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(text);
  if (!m) throw new Error(`not a duration: ${text}`);
  return Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 }[m[2]];
}

/** The expression with Grafana's variables replaced; throws on one it does not know. */
export function substitute(expr, { rateInterval, step, range }) {
  const vars = {
    __rate_interval: rateInterval,
    __interval: `${step}s`,
    __range: `${Math.round(range)}s`,
    instance: ".*",
  };
  return expr.replace(/\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)/g, (whole, braced, bare) => {
    const name = braced ?? bare;
    if (!(name in vars)) throw new Error(`unknown variable ${whole} in: ${expr}`);
    return vars[name];
  });
}

async function queryRange(base, expr, start, end, step) {
  const url = new URL("/api/v1/query_range", base);
  url.search = new URLSearchParams({ query: expr, start: String(start), end: String(end), step: String(step) });
  const res = await fetch(url, { signal: AbortSignal.timeout(30_000) });
  const body = await res.json();
  if (body.status !== "success") throw new Error(`Prometheus refused ${expr}: ${body.error ?? res.status}`);
  return body.data.result.map((r) => ({
    metric: r.metric,
    points: r.values.map(([t, v]) => [Number(t), Number.isFinite(Number(v)) ? Number(v) : null]),
  }));
}

function legendName(format, metric) {
  if (format && format !== "__auto") {
    return format.replace(/\{\{\s*(\w+)\s*\}\}/g, (_, label) => metric[label] ?? "");
  }
  const labels = Object.entries(metric)
    .filter(([k]) => k !== "__name__")
    .map(([k, v]) => `${k}="${v}"`);
  return `${metric.__name__ ?? ""}{${labels.join(", ")}}`;
}

// ---------------------------------------------------------------------------------------------
// Units and numbers

const PALETTE = ["#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9", "#705DA0", "#37872D", "#FADE2A", "#447EBC", "#C15C17"];
const NAMED = { green: "#73BF69", red: "#F2495C", orange: "#FF9830", yellow: "#FADE2A", blue: "#5794F2", purple: "#B877D9", "text": "#ccccdc" };
const color = (c) => NAMED[c] ?? c;

function trimmed(x, decimals) {
  return Number(x.toFixed(decimals)).toString();
}

/** Formats `v` as Grafana does for the units this dashboard uses. */
export function formatValue(v, unit, decimals) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const d = (x) => (decimals !== undefined ? x.toFixed(decimals) : trimmed(x, Math.abs(x) >= 100 ? 0 : Math.abs(x) >= 10 ? 1 : 2));
  if (unit === "s") {
    const a = Math.abs(v);
    if (a === 0) return "0 s";
    if (a < 1e-3) return `${d(v * 1e6)} µs`;
    if (a < 1) return `${d(v * 1e3)} ms`;
    if (a < 60) return `${d(v)} s`;
    return `${d(v / 60)} min`;
  }
  let suffix = "";
  if (unit && unit.startsWith("suffix:")) suffix = unit.slice("suffix:".length);
  const a = Math.abs(v);
  let text;
  if (a >= 1e9) text = `${d(v / 1e9)} Bil`;
  else if (a >= 1e6) text = `${d(v / 1e6)} Mil`;
  else if (a >= 1e3) text = `${d(v / 1e3)} K`;
  else text = d(v);
  return text + suffix;
}

/** Round tick values covering [lo, hi]. */
function niceTicks(lo, hi, count) {
  if (hi <= lo) hi = lo + 1;
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const first = Math.floor(lo / step + 1e-9);
  const last = Math.ceil(hi / step - 1e-9);
  const ticks = [];
  for (let k = first; k <= last; k++) ticks.push(Number((k * step).toPrecision(12)));
  return { ticks, min: ticks[0], max: ticks[ticks.length - 1] };
}

function timeTicks(start, end, maxTicks) {
  const steps = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
  const step = steps.find((s) => (end - start) / s <= maxTicks) ?? 7200;
  const ticks = [];
  for (let t = Math.ceil(start / step) * step; t <= end; t += step) ticks.push(t);
  return ticks;
}

const hhmmss = (t) => new Date(t * 1000).toISOString().slice(11, 19);
const hhmm = (t) => new Date(t * 1000).toISOString().slice(11, 16);

const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

// ---------------------------------------------------------------------------------------------
// Panels

/** The override properties of the series called `name`. */
function overridesFor(panel, name) {
  const out = {};
  for (const o of panel.fieldConfig?.overrides ?? []) {
    const { id, options } = o.matcher;
    const hit = id === "byName" ? name === options : id === "byRegexp" ? new RegExp(options).test(name) : false;
    if (!hit) continue;
    for (const p of o.properties) out[p.id] = p.value;
  }
  return out;
}

function drawTimeseries(panel, series, box, range) {
  const defaults = panel.fieldConfig?.defaults ?? {};
  const custom = defaults.custom ?? {};
  const unit = defaults.unit;
  const legendOpts = panel.options?.legend ?? {};
  const shown = legendOpts.showLegend !== false;
  const table = legendOpts.displayMode === "table";
  const calcs = shown && table ? legendOpts.calcs ?? [] : [];
  const W = box.w - 16;
  // Legend height: a table has a header row and a row per series; a list wraps its items.
  let legendH = 0;
  if (shown && series.length) {
    if (table) legendH = 8 + (series.length + 1) * 18;
    else {
      const widths = series.map((s) => 40 + s.name.length * 7.5);
      let lines = 1;
      let used = 0;
      for (const w of widths) {
        if (used + w > W && used > 0) {
          lines++;
          used = 0;
        }
        used += w;
      }
      legendH = 8 + lines * 18;
    }
    legendH = Math.min(legendH, Math.round((box.h - 36) * 0.45));
  }
  const H = box.h - 36 - legendH;

  const values = series.flatMap((s) => s.points.map(([, v]) => v)).filter((v) => v !== null);
  if (!values.length) {
    return `<div class="nodata" style="height:${box.h - 36}px">${esc(defaults.noValue ?? "No data")}</div>`;
  }
  let lo = defaults.min ?? Math.min(...values);
  let hi = defaults.max ?? Math.max(...values);
  if (hi === lo) hi = lo + (lo === 0 ? 1 : Math.abs(lo));
  const { ticks, min, max } = niceTicks(lo, hi, Math.max(2, Math.floor((H - 32) / 40)));
  const labels = ticks.map((t) => formatValue(t, unit, defaults.decimals));
  const axisW = 12 + Math.max(...labels.map((l) => l.length)) * 6.4;
  const plot = { x: axisW, y: 6, w: W - axisW - 6, h: H - 26 };
  const X = (t) => plot.x + ((t - range.start) / (range.end - range.start)) * plot.w;
  const Y = (v) => plot.y + plot.h - ((v - min) / (max - min)) * plot.h;

  let svg = `<svg width="${W}" height="${H}" xmlns="http://www.w3.org/2000/svg">`;
  ticks.forEach((t, i) => {
    svg += `<line x1="${plot.x}" x2="${plot.x + plot.w}" y1="${Y(t)}" y2="${Y(t)}" class="grid"/>`;
    svg += `<text x="${plot.x - 6}" y="${Y(t) + 4}" class="axis" text-anchor="end">${esc(labels[i])}</text>`;
  });
  const tt = timeTicks(range.start, range.end, Math.max(2, Math.floor(plot.w / 80)));
  for (const t of tt) {
    // A label too close to an edge would run into the axis or out of the panel.
    if (X(t) - plot.x < 28 || plot.x + plot.w - X(t) < 28) continue;
    svg += `<line x1="${X(t)}" x2="${X(t)}" y1="${plot.y}" y2="${plot.y + plot.h}" class="grid"/>`;
    svg += `<text x="${X(t)}" y="${plot.y + plot.h + 16}" class="axis" text-anchor="middle">${range.end - range.start > 1800 ? hhmm(t) : hhmmss(t)}</text>`;
  }
  // Thresholds drawn as lines (thresholdsStyle "line" or "dashed"), when inside the axis.
  const tmode = custom.thresholdsStyle?.mode ?? "off";
  if (tmode === "line" || tmode === "dashed") {
    for (const step of defaults.thresholds?.steps ?? []) {
      if (step.value === null || step.value < min || step.value > max) continue;
      svg += `<line x1="${plot.x}" x2="${plot.x + plot.w}" y1="${Y(step.value)}" y2="${Y(step.value)}" stroke="${color(step.color)}" stroke-width="1" ${tmode === "dashed" ? 'stroke-dasharray="10 10"' : ""}/>`;
    }
  }
  series.forEach((s, i) => {
    const ov = overridesFor(panel, s.name);
    const stroke = ov.color?.fixedColor ? color(ov.color.fixedColor) : PALETTE[i % PALETTE.length];
    s.color = stroke;
    const fill = (ov["custom.fillOpacity"] ?? custom.fillOpacity ?? 0) / 100;
    const dash = ov["custom.lineStyle"]?.fill === "dash" ? `stroke-dasharray="${(ov["custom.lineStyle"].dash ?? [10, 10]).join(" ")}"` : "";
    // Runs of non-null points (gaps stay gaps, as spanNulls: false draws them).
    const runs = [];
    let run = [];
    for (const [t, v] of s.points) {
      if (v === null) {
        if (run.length) runs.push(run);
        run = [];
      } else run.push([X(t), Y(Math.min(Math.max(v, min), max))]);
    }
    if (run.length) runs.push(run);
    for (const r of runs) {
      const d = r.map(([x, y], j) => `${j ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join("");
      if (fill > 0 && r.length > 1) {
        const base = Y(Math.max(min, 0)).toFixed(1);
        svg += `<path d="${d}L${r[r.length - 1][0].toFixed(1)},${base}L${r[0][0].toFixed(1)},${base}Z" fill="${stroke}" fill-opacity="${fill}" stroke="none"/>`;
      }
      if (r.length === 1) svg += `<circle cx="${r[0][0]}" cy="${r[0][1]}" r="1.5" fill="${stroke}"/>`;
      else svg += `<path d="${d}" fill="none" stroke="${stroke}" stroke-width="${custom.lineWidth ?? 1}" ${dash}/>`;
    }
  });
  svg += `</svg>`;

  let legend = "";
  if (shown && !table) {
    const items = series.map((s) => `<span class="item"><span class="swatch" style="background:${s.color}"></span>${esc(s.name)}</span>`).join("");
    legend = `<div class="legend list" style="max-height:${legendH}px">${items}</div>`;
  } else if (shown) {
    const head = calcs.map((c) => `<th>${{ lastNotNull: "Last *", max: "Max", mean: "Mean", min: "Min" }[c] ?? c}</th>`).join("");
    const rows = series
      .map((s) => {
        const vals = s.points.map(([, v]) => v).filter((v) => v !== null);
        const calc = {
          lastNotNull: vals.length ? vals[vals.length - 1] : null,
          max: vals.length ? Math.max(...vals) : null,
          min: vals.length ? Math.min(...vals) : null,
          mean: vals.length ? vals.reduce((a, b) => a + b, 0) / vals.length : null,
        };
        const cells = calcs.map((c) => `<td>${esc(formatValue(calc[c], unit, defaults.decimals))}</td>`).join("");
        return `<tr><td class="name"><span class="swatch" style="background:${s.color}"></span>${esc(s.name)}</td>${cells}</tr>`;
      })
      .join("");
    legend = `<div class="legend" style="max-height:${legendH}px"><table><tr><th class="name"></th>${head}</tr>${rows}</table></div>`;
  }
  return svg + legend;
}

function thresholdColor(defaults, v) {
  let c = "green";
  for (const step of defaults.thresholds?.steps ?? []) {
    if (step.value === null || v >= step.value) c = step.color;
  }
  return color(c);
}

function drawStat(panel, series, box, range) {
  const defaults = panel.fieldConfig?.defaults ?? {};
  const s = series.find((x) => x.points.some(([, v]) => v !== null));
  if (!s) return `<div class="nodata" style="height:${box.h - 36}px">${esc(defaults.noValue ?? "No data")}</div>`;
  const vals = s.points.filter(([, v]) => v !== null);
  const last = vals[vals.length - 1][1];
  const c = thresholdColor(defaults, last);
  const W = box.w - 16;
  const H = box.h - 36;
  let spark = "";
  if (panel.options?.graphMode === "area" && vals.length > 1) {
    const lo = Math.min(0, ...vals.map(([, v]) => v));
    const hi = Math.max(...vals.map(([, v]) => v));
    const X = (t) => ((t - range.start) / (range.end - range.start)) * W;
    const Y = (v) => H - 4 - ((v - lo) / (hi - lo || 1)) * (H * 0.45);
    const d = vals.map(([t, v], j) => `${j ? "L" : "M"}${X(t).toFixed(1)},${Y(v).toFixed(1)}`).join("");
    spark = `<svg class="spark" width="${W}" height="${H}"><path d="${d}L${X(vals[vals.length - 1][0]).toFixed(1)},${H}L${X(vals[0][0]).toFixed(1)},${H}Z" fill="${c}" fill-opacity="0.15"/><path d="${d}" fill="none" stroke="${c}" stroke-width="1"/></svg>`;
  }
  return `<div class="stat" style="height:${H}px">${spark}<span style="color:${c}">${esc(formatValue(last, defaults.unit, defaults.decimals))}</span></div>`;
}

// ---------------------------------------------------------------------------------------------
// The page

const CELL_H = 30;
const MARGIN = 8;

async function render(args) {
  const dashboard = JSON.parse(readFileSync(args.dashboard, "utf8"));
  const range = { start: args.start, end: args.end };
  const span = range.end - range.start;
  const step = Math.max(1, Math.ceil(span / 400));
  const ctx = { rateInterval: args.rateInterval, step, range: span };
  durationSecs(args.rateInterval);

  const pad = 16;
  const colW = (args.width - 2 * pad + MARGIN) / 24;
  let bottom = 0;
  let html = "";
  let queries = 0;
  for (const panel of dashboard.panels) {
    const g = panel.gridPos;
    const box = {
      x: pad + g.x * colW,
      y: 64 + g.y * (CELL_H + MARGIN),
      w: g.w * colW - MARGIN,
      h: g.h * CELL_H + (g.h - 1) * MARGIN,
    };
    bottom = Math.max(bottom, box.y + box.h);
    if (panel.type === "row") {
      html += `<div class="row" style="left:${box.x}px;top:${box.y}px;width:${box.w}px;height:${box.h}px">⌄ ${esc(panel.title)}</div>`;
      continue;
    }
    const series = [];
    for (const t of panel.targets ?? []) {
      if (t.hide) continue;
      const result = await queryRange(args.prometheus, substitute(t.expr, ctx), range.start, range.end, step);
      queries++;
      for (const r of result) series.push({ ...r, name: legendName(t.legendFormat, r.metric) });
    }
    const body = panel.type === "stat" ? drawStat(panel, series, box, range) : drawTimeseries(panel, series, box, range);
    html += `<div class="panel" style="left:${box.x}px;top:${box.y}px;width:${box.w}px;height:${box.h}px"><div class="title">${esc(panel.title)}</div>${body}</div>`;
  }
  const height = Math.ceil(bottom + 40);
  const minutes = Math.round(span / 60);
  const page = `<!doctype html><html><head><meta charset="utf-8"><style>
  body { margin:0; background:#111217; color:#ccccdc; font-family: Inter, "Helvetica Neue", Arial, sans-serif; font-size:12px; width:${args.width}px; height:${height}px; position:relative; overflow:hidden; }
  .top { position:absolute; left:0; top:0; right:0; height:48px; border-bottom:1px solid rgba(204,204,220,0.12); background:#181b1f; display:flex; align-items:center; padding:0 ${pad}px; gap:16px; }
  .crumb { font-size:16px; color:#ccccdc; } .crumb b { font-weight:500; color:#fff; }
  .pill { border:1px solid rgba(204,204,220,0.2); border-radius:2px; padding:5px 9px; background:#111217; }
  .pill i { font-style:normal; color:rgba(204,204,220,0.65); margin-right:6px; }
  .spacer { flex:1; }
  .note { color:rgba(204,204,220,0.65); font-size:11px; }
  .row { position:absolute; font-size:14px; font-weight:500; color:#ccccdc; line-height:${CELL_H}px; }
  .panel { position:absolute; background:#181b1f; border:1px solid rgba(204,204,220,0.12); border-radius:2px; box-sizing:border-box; padding:0 8px; overflow:hidden; }
  .title { height:32px; line-height:32px; font-size:14px; font-weight:500; color:#ccccdc; white-space:nowrap; overflow:hidden; text-overflow:ellipsis; }
  .grid { stroke:rgba(204,204,220,0.09); stroke-width:1; }
  .axis { fill:rgba(204,204,220,0.65); font-size:11px; font-family:inherit; }
  .nodata { display:flex; align-items:center; justify-content:center; color:rgba(204,204,220,0.65); font-size:14px; }
  .legend { overflow:hidden; }
  .legend table { width:100%; border-collapse:collapse; font-size:12px; }
  .legend th { text-align:right; font-weight:500; color:#6e9fff; padding:1px 6px; white-space:nowrap; }
  .legend.list { display:flex; flex-wrap:wrap; padding-top:4px; }
  .legend.list .item { margin-right:16px; line-height:18px; white-space:nowrap; }
  .legend td { text-align:right; padding:1px 6px; white-space:nowrap; }
  .legend .name { text-align:left; width:99%; max-width:0; overflow:hidden; text-overflow:ellipsis; }
  .swatch { display:inline-block; width:14px; height:4px; border-radius:2px; margin:0 8px 2px 0; vertical-align:middle; }
  .stat { position:relative; display:flex; align-items:center; justify-content:center; font-size:34px; font-weight:500; }
  .stat span { position:relative; }
  .spark { position:absolute; left:0; top:0; }
</style></head><body>
<div class="top"><span class="crumb">Dashboards › <b>${esc(dashboard.title)}</b></span>
<span class="pill"><i>Node</i>All</span><span class="spacer"></span>
<span class="note">preview: the dashboard's own queries against a real Prometheus, drawn by scripts/dashboard-render.mjs</span>
<span class="pill">${hhmmss(range.start)} to ${hhmmss(range.end)} UTC (${minutes} min)</span></div>
${html}
</body></html>`;
  if (args.html) writeFileSync(args.html, page);
  await screenshot(page, args.width, height, args.out);
  console.error(`dashboard-render: ${queries} queries, ${dashboard.panels.length} panels, ${args.width}x${height} -> ${args.out}`);
}

async function screenshot(html, width, height, out) {
  const require = createRequire(join(REPO, "tests/browser/package.json"));
  const { chromium } = require("playwright-core");
  const executablePath = process.env.CHROMIUM || execFileSync("sh", ["-c", "command -v chromium"], { encoding: "utf8" }).trim();
  const browser = await chromium.launch({
    executablePath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: 60_000,
  });
  try {
    const page = await browser.newPage({ viewport: { width, height }, deviceScaleFactor: 1 });
    await page.setContent(html, { waitUntil: "load", timeout: 30_000 });
    await page.screenshot({ path: out, fullPage: true, timeout: 30_000 });
  } finally {
    await browser.close();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  render(parseArgs(process.argv.slice(2))).catch((e) => {
    console.error(`dashboard-render: ${e.stack ?? e}`);
    process.exit(1);
  });
}
