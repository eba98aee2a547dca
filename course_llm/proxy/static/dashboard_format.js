// course_llm dashboard, part 1 of 4: DOM helpers and number formats, shared as window.CourseLLM.
//
// Every value from the API is inserted with textContent or setAttribute (through `h`/`svg`),
// never as HTML: error messages come from LLM providers, tenant names and tags from callers.
"use strict";

(() => {
  const CL = (window.CourseLLM = window.CourseLLM || {});
  const SVG_NS = "http://www.w3.org/2000/svg";

  function build(element, attrs, children) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) element.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return element;
  }
  CL.h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
  CL.svg = (tag, attrs, ...children) => build(document.createElementNS(SVG_NS, tag), attrs, children);
  CL.$ = (selector) => document.querySelector(selector);

  const isNum = (v) => v !== null && v !== undefined && Number.isFinite(Number(v));
  CL.isNum = isNum;
  // Cents above a dollar; below it up to four decimals, because single calls cost fractions of a cent.
  CL.usd = (v, decimals) => {
    if (!isNum(v)) return "—";
    const n = Number(v);
    if (decimals === undefined && n !== 0 && Math.abs(n) < 0.0001) return "$" + n.toPrecision(2);
    const digits = decimals ?? (Math.abs(n) >= 1 ? 2 : 4);
    const text = n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
    return "$" + (decimals === undefined ? text.replace(/(\.\d\d\d?)0+$/, "$1").replace(/(\.\d\d)0$/, "$1") : text);
  };
  CL.pct = (v) => (isNum(v) ? (Number(v) * 100).toFixed(1) + "%" : "—");
  CL.int = (v) => (isNum(v) ? Number(v).toLocaleString("en-US") : "—");
  CL.ms = (v) => {
    if (!isNum(v)) return "—";
    const n = Number(v);
    return n < 1000 ? Math.round(n) + " ms" : (n / 1000).toFixed(n < 10000 ? 2 : 1) + " s";
  };
  CL.utcTime = (iso) => {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().slice(0, 19).replace("T", " ");
  };
  // "ok", or the HTTP status and error class of a failure.
  CL.statusText = (row) =>
    row.success ? "ok" : [row.status_code, row.error_class].filter((v) => v !== null && v !== undefined).join(" ") || "error";
  CL.strategyText = (row) =>
    row.served_strategy && row.served_strategy !== row.strategy ? `${row.strategy} → ${row.served_strategy}` : String(row.strategy ?? "");

  // ---- time buckets: hourly under 3 days, daily otherwise (UTC) --------------------------------

  const HOUR = 3600 * 1000;
  const DAY = 24 * HOUR;
  CL.HOUR = HOUR;
  CL.DAY = DAY;
  CL.bucketUnit = (since, until) => (until - since < 3 * DAY ? "hour" : "day");
  CL.bucketKey = (date, unit) =>
    unit === "hour" ? date.toISOString().slice(0, 13) + ":00:00Z" : date.toISOString().slice(0, 10);
  // Every bucket key from `since` to `until` (Dates), oldest first.
  CL.bucketKeys = (since, until, unit) => {
    const step = unit === "hour" ? HOUR : DAY;
    const keys = [];
    let t = Math.floor(since.getTime() / step) * step;
    for (; t <= until.getTime() && keys.length < 2000; t += step) keys.push(CL.bucketKey(new Date(t), unit));
    return keys;
  };
  // An axis label: "14:00" for an hour (with the date at midnight), "03-07" for a day.
  CL.bucketLabel = (key, unit) =>
    unit === "hour" ? (key.slice(11, 13) === "00" ? key.slice(5, 10) : key.slice(11, 16)) : key.slice(5, 10);
})();
