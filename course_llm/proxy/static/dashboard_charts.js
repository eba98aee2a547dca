// course_llm dashboard, part 2 of 4: the stacked cost chart (inline SVG, no library).
"use strict";

(() => {
  const CL = (window.CourseLLM = window.CourseLLM || {});
  const { h, svg, $, usd } = CL;
  // Seven distinct hues for the biggest series; everything smaller is folded into grey "other".
  const PALETTE = ["#2f6fdf", "#e8833a", "#23a37a", "#c8372d", "#8a5cd1", "#d4b106", "#17a2b8"];
  const OTHER_COLOR = "#9aa1ad";

  function niceCeiling(value) {
    if (value <= 0) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  // Stacked bars: one bar per time bucket of the range (hour or day, UTC), one segment per series.
  // `chart` = { groups, seriesKey, bucketKey: "hour"|"day", buckets: [key, …] }.
  CL.renderStacked = (selector, chart) => {
    const { groups, seriesKey, bucketKey } = chart;
    const root = $(selector);
    root.replaceChildren();
    const byBucket = new Map();
    const totals = new Map();
    for (const group of groups) {
      const bucket = String(group[bucketKey]);
      const name = group[seriesKey] ?? "(none)";
      const cost = Number(group.cost_usd) || 0;
      if (!byBucket.has(bucket)) byBucket.set(bucket, new Map());
      byBucket.get(bucket).set(name, (byBucket.get(bucket).get(name) || 0) + cost);
      totals.set(name, (totals.get(name) || 0) + cost);
    }
    // Series that cost nothing (only failed attempts) have no bar, so no colour or legend entry.
    let names = [...totals.entries()].filter((e) => e[1] > 0).sort((a, b) => b[1] - a[1]).map((e) => e[0]);
    const folded = names.length > PALETTE.length ? new Set(names.slice(PALETTE.length - 1)) : new Set();
    if (folded.size) names = names.slice(0, PALETTE.length - 1).concat(["other"]);
    const seriesOf = (name) => (folded.has(name) ? "other" : name);
    const colorOf = (name) => (name === "other" && folded.size ? OTHER_COLOR : PALETTE[names.indexOf(name)]);
    const buckets = [...new Set([...chart.buckets, ...byBucket.keys()])].sort();
    root.dataset.bars = "0";
    root.dataset.buckets = String(buckets.length);
    root.dataset.unit = bucketKey;
    root.dataset.total = "0";
    if (!names.length) {
      // Nothing to draw: say so instead of an empty frame (or one lone bar at the right edge).
      root.append(h("p", { class: "chart-empty" }, "No cost recorded in this range."));
      return;
    }

    const stackOf = (b) => [...(byBucket.get(b) || new Map()).values()].reduce((a, c) => a + c, 0);
    const yMax = niceCeiling(Math.max(0, ...buckets.map(stackOf)));
    const width = Math.max(320, root.clientWidth || 560);
    const height = 210;
    const pad = { left: 58, right: 8, top: 10, bottom: 22 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const slot = plotW / buckets.length;
    const drawing = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": root.id });
    const y = (v) => pad.top + plotH - (v / yMax) * plotH;

    const axis = svg("g", { class: "axis" });
    const ticks = [0, 1, 2, 3, 4].map((i) => (yMax * i) / 4);
    // As few decimals as spell every tick exactly, and cents at least below $10.
    let decimals = 0;
    while (decimals < 8 && ticks.some((t) => Math.abs(Number(t.toFixed(decimals)) - t) > 1e-12)) decimals++;
    if (yMax < 10) decimals = Math.max(decimals, 2);
    for (const v of ticks) {
      axis.append(svg("line", { class: "grid-line", x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }));
      axis.append(svg("text", { x: pad.left - 6, y: y(v) + 4, "text-anchor": "end" }, usd(v, decimals)));
    }
    const labelEvery = Math.ceil(buckets.length / 8);
    buckets.forEach((bucket, i) => {
      if ((buckets.length - 1 - i) % labelEvery === 0) {
        axis.append(svg("text", { x: pad.left + slot * (i + 0.5), y: height - 6, "text-anchor": "middle" },
          CL.bucketLabel(bucket, bucketKey)));
      }
    });
    drawing.append(axis);

    const bars = svg("g", { class: "bars" });
    let barCount = 0;
    let grandTotal = 0;
    buckets.forEach((bucket, i) => {
      const costs = new Map();
      for (const [name, cost] of byBucket.get(bucket) || []) costs.set(seriesOf(name), (costs.get(seriesOf(name)) || 0) + cost);
      let base = 0;
      for (const name of names) {
        const cost = costs.get(name) || 0;
        if (cost <= 0) continue;
        const top = y(base + cost);
        const barHeight = Math.max(1, y(base) - top); // a tiny share still shows as a sliver
        bars.append(svg("rect", {
          x: (pad.left + slot * i + slot * 0.15).toFixed(2), y: (y(base) - barHeight).toFixed(2),
          width: Math.max(1, slot * 0.7).toFixed(2), height: barHeight.toFixed(2), fill: colorOf(name),
          "data-bucket": bucket, "data-series": name, "data-cost": cost,
        }, svg("title", {}, `${bucket} · ${name}: ${usd(cost)}`)));
        base += cost;
        barCount += 1;
        grandTotal += cost;
      }
    });
    drawing.append(bars);
    root.append(drawing);
    const legend = h("div", { class: "legend" });
    for (const name of names) {
      const total = folded.size && name === "other"
        ? [...folded].reduce((sum, n) => sum + totals.get(n), 0) : totals.get(name);
      const swatch = h("i");
      swatch.style.background = colorOf(name);
      legend.append(h("span", { "data-series": name }, swatch, `${name} ${usd(total)}`));
    }
    root.append(legend);
    root.dataset.bars = String(barCount);
    root.dataset.total = String(grandTotal);
    // Page coordinates of the plot, for the screenshot test (and handy when debugging layout).
    const box = drawing.getBoundingClientRect();
    root.dataset.layout = [box.left + scrollX, box.top + scrollY, box.width, box.height].map(Math.round).join(",");
  };
})();
