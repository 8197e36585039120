// The charts of loadgen's --report page: uPlot (inlined before this script) over the
// summary JSON the page carries in #summary. Nothing is fetched.
(function () {
  "use strict";
  var s = JSON.parse(document.getElementById("summary").textContent);
  var root = document.getElementById("charts");
  var tl = s.timeline || [];
  var phases = s.phases || [];
  if (typeof uPlot === "undefined" || !tl.length) {
    root.textContent = "No timeline was recorded.";
    return;
  }

  var C = {
    total: "#333333", published: "#2ca02c", delivered: "#e6550d", errors: "#d62728",
    p50: "#3182bd", p99: "#e6550d", max: "#d62728",
    ws: "#3182bd", poll: "#9467bd", sse: "#17a589",
  };
  // The same colours as the phase table (report.rs phase_colour).
  var PHASE = {
    baseline: "#9e9e9e", settle: "#9e9e9e", ramp: "#3182bd", hold: "#31a354",
    publish: "#31a354", churn: "#9467bd", drain: "#e6550d", close: "#d62728",
  };
  var lanes = (s.by_transport || []).map(function (t) { return t.transport; });
  var perTransport = lanes.length > 1;

  // x: seconds since the start. Each tick closes the second ending at t; a leading 0
  // makes the first second a full step. The last tick of one process ends with the run,
  // within its second: it is drawn there, and its counts are divided by its length.
  var xs = [0].concat(tl.map(function (t) { return t.t; }));
  var last = xs.length - 1;
  if (s.shards === 1 && s.elapsed_secs > xs[last] - 1 && s.elapsed_secs < xs[last]) {
    xs[last] = Math.max(s.elapsed_secs, xs[last] - 0.95);
  }
  var xmax = xs[last];
  phases.forEach(function (p) { xmax = Math.max(xmax, p.end_secs); });
  function col(first, f) { return [first].concat(tl.map(f)); }
  // Counts per second of a tick, as a rate over its length.
  function rate(f) {
    return [0].concat(tl.map(function (t, i) {
      var v = f(t);
      return v == null ? null : v / (xs[i + 1] - xs[i]);
    }));
  }
  function lane(t, name) {
    var ls = t.transports || [];
    for (var i = 0; i < ls.length; i++) if (ls[i].transport === name) return ls[i];
    return null;
  }
  function ms(us) { return us > 0 ? us / 1000 : null; }

  function fmt(v) {
    if (v == null) return "–";
    var a = Math.abs(v);
    if (a >= 1e6) return +(v / 1e6).toFixed(2) + "M";
    if (a >= 1e4) return +(v / 1e3).toFixed(1) + "k";
    if (a >= 100) return String(Math.round(v));
    if (a >= 10) return String(+v.toFixed(1));
    if (a >= 1) return String(+v.toFixed(2));
    return String(+v.toPrecision(2));
  }
  function ticks(u, vals) { return vals.map(fmt); }
  function unit(u) { return function (self, v) { return v == null ? "–" : fmt(v) + u; }; }
  // Whole-number steps for counts (no "2.5 connections").
  var INT_INCRS = [];
  for (var e = 0; e < 10; e++) [1, 2, 5].forEach(function (m) { INT_INCRS.push(m * Math.pow(10, e)); });
  var stepped = uPlot.paths.stepped({ align: -1 });
  function fromZero(u, min, max) {
    return [0, max > 0 ? uPlot.rangeNum(0, max, 0.1, true)[1] : 1];
  }

  // Phase bands under the series, their names and start lines above them.
  function phasePlugin() {
    function px(u, v) { return u.valToPos(v, "x", true); }
    return {
      hooks: {
        drawClear: [function (u) {
          var c = u.ctx, b = u.bbox;
          c.save();
          c.globalAlpha = 0.1;
          phases.forEach(function (p) {
            var x0 = px(u, p.start_secs), x1 = px(u, p.end_secs);
            c.fillStyle = PHASE[p.name] || "#999999";
            c.fillRect(x0, b.top, Math.max(x1 - x0, 1), b.height);
          });
          c.restore();
        }],
        draw: [function (u) {
          var c = u.ctx, b = u.bbox, r = uPlot.pxRatio, rows = [];
          c.save();
          c.font = 11 * r + "px system-ui, sans-serif";
          c.textAlign = "left";
          c.textBaseline = "top";
          phases.forEach(function (p, i) {
            var x0 = px(u, p.start_secs), colour = PHASE[p.name] || "#999999";
            c.globalAlpha = 0.9;
            c.strokeStyle = colour;
            c.lineWidth = r;
            c.setLineDash([4 * r, 3 * r]);
            var lines = [x0];
            if (i === phases.length - 1) lines.push(px(u, p.end_secs));
            lines.forEach(function (x) {
              c.beginPath();
              c.moveTo(x, b.top);
              c.lineTo(x, b.top + b.height);
              c.stroke();
            });
            // A label starts at its phase (kept inside the plot), in the first row where
            // it does not overlap the previous one.
            var w = c.measureText(p.name).width + 6 * r, row = 0;
            var lx = Math.max(b.left, Math.min(x0 + r, b.left + b.width - w));
            while (row < rows.length && rows[row] > lx) row++;
            rows[row] = lx + w + 2 * r;
            var y = b.top + 2 * r + row * 14 * r;
            c.globalAlpha = 0.85;
            c.fillStyle = "#ffffff";
            c.fillRect(lx, y - r, w, 13 * r);
            c.globalAlpha = 1;
            c.fillStyle = colour;
            c.fillText(p.name, lx + 2 * r, y);
          });
          c.restore();
        }],
      },
    };
  }

  var charts = [];
  function width() { return Math.max(480, Math.min(root.clientWidth || 1000, 1400)); }
  function chart(title, yLabel, series, data, o) {
    o = o || {};
    var box = document.createElement("div");
    box.className = "chart";
    box.setAttribute("data-chart", o.id || title);
    root.appendChild(box);
    var axes = [
      { label: o.xLabel || "seconds since start", values: o.xValues || ticks, splits: o.xSplits, space: 70 },
      { label: yLabel, size: 70, values: ticks, incrs: o.intY ? INT_INCRS : undefined },
    ];
    var scales = {
      x: { time: false, range: o.xRange || [0, xmax] },
      y: o.log ? { distr: 3 } : { range: fromZero },
    };
    if (o.right) {
      axes.push({ scale: o.right.scale, side: 1, label: o.right.label, size: 60, values: ticks,
                  grid: { show: false } });
      scales[o.right.scale] = { range: fromZero };
    }
    var u = new uPlot({
      title: title,
      width: width(),
      height: 260,
      cursor: o.noSync ? {} : { sync: { key: "timeline" } },
      legend: { live: true },
      scales: scales,
      axes: axes,
      series: [{ label: o.xName || "time", value: o.xLegend || unit(" s") }].concat(series),
      plugins: o.noPhases ? [] : [phasePlugin()],
    }, data, box);
    charts.push(u);
  }
  window.addEventListener("resize", function () {
    charts.forEach(function (u) { u.setSize({ width: width(), height: 260 }); });
  });

  // 1. Connections.
  var connSeries = [{ label: "connected (all)", stroke: C.total, width: 2, value: unit("") }];
  var connData = [xs, col(0, function (t) { return t.connected; })];
  if (perTransport) {
    lanes.forEach(function (name) {
      connSeries.push({ label: name, stroke: C[name], width: 1.5, dash: [6, 3], value: unit("") });
      connData.push(col(0, function (t) { var l = lane(t, name); return l ? l.connected : null; }));
    });
  }
  if (s.clients > 0) chart("Connected clients", "connections", connSeries, connData, { intY: true, id: "connections" });

  // 2. Messages per second: published (filled), delivered (dashed, on top), errors (right).
  var anyErrors = tl.some(function (t) { return t.errors > 0; });
  var anyMessages = tl.some(function (t) { return t.published > 0 || t.delivered > 0; });
  var rateSeries = [
    // Published wide and filled, delivered thin and dashed on top: both show where equal.
    { label: "published (accepted)", stroke: C.published, fill: "rgba(44,160,44,0.15)", width: 4,
      paths: stepped, value: unit(" msg/s") },
  ];
  var rateData = [xs, rate(function (t) { return t.published; })];
  if (s.clients > 0) {
    rateSeries.push({ label: "delivered", stroke: C.delivered, width: 1.5, dash: [6, 4],
                      paths: stepped, value: unit(" msg/s") });
    rateData.push(rate(function (t) { return t.delivered; }));
  }
  var rateOpts = { id: "rates" };
  if (anyErrors) {
    rateSeries.push({ label: "errors", scale: "err", stroke: C.errors, width: 1.5, paths: stepped,
                      value: unit(" /s") });
    rateData.push(rate(function (t) { return t.errors; }));
    rateOpts.right = { scale: "err", label: "errors/s" };
  }
  if (anyMessages || anyErrors) chart("Messages per second", "msg/s", rateSeries, rateData, rateOpts);

  // 3. Deliveries per second by transport.
  if (perTransport && anyMessages) {
    chart("Deliveries per second by transport", "msg/s", lanes.map(function (name) {
      return { label: name, stroke: C[name], width: 2, paths: stepped, value: unit(" msg/s") };
    }), [xs].concat(lanes.map(function (name) {
      return rate(function (t) { var l = lane(t, name); return l ? l.delivered : null; });
    })), { id: "deliveries-by-transport" });
  }

  var anyLatency = tl.some(function (t) { return t.latency_p50_us > 0; });
  if (anyLatency) {
    // 4. Latency per second.
    var pts = { show: true, size: 5 };
    chart("Delivery latency per second", "latency, ms (log)", [
      { label: "p50", stroke: C.p50, width: 2, points: pts, value: unit(" ms") },
      { label: "p99", stroke: C.p99, width: 2, points: pts, value: unit(" ms") },
      { label: "max", stroke: C.max, width: 1, dash: [3, 3], points: pts, value: unit(" ms") },
    ], [
      xs,
      col(null, function (t) { return ms(t.latency_p50_us); }),
      col(null, function (t) { return ms(t.latency_p99_us); }),
      col(null, function (t) { return ms(t.latency_max_us); }),
    ], { log: true, id: "latency" });

    // 5. Latency by transport.
    if (perTransport) {
      var lSeries = [], lData = [xs];
      lanes.forEach(function (name) {
        lSeries.push({ label: name + " p50", stroke: C[name], width: 1.5, dash: [5, 3], points: pts, value: unit(" ms") });
        lData.push(col(null, function (t) { var l = lane(t, name); return l ? ms(l.latency_p50_us) : null; }));
        lSeries.push({ label: name + " p99", stroke: C[name], width: 2, points: pts, value: unit(" ms") });
        lData.push(col(null, function (t) { var l = lane(t, name); return l ? ms(l.latency_p99_us) : null; }));
      });
      chart("Delivery latency per second by transport", "latency, ms (log)", lSeries, lData,
            { log: true, id: "latency-by-transport" });
    }
  }

  // 6. The whole run's latency distribution, on a "nines" axis.
  var dist = s.latency_distribution || [];
  if (dist.length) {
    var nines = function (p) { return Math.log10(1 / (1 - Math.min(p / 100, 0.99999))); };
    var labels = { 0: "0%", 1: "90%", 2: "99%", 3: "99.9%", 4: "99.99%", 5: "max" };
    var pcts = dist.map(function (d) { return d.percentile; });
    chart("Delivery latency distribution (whole run)", "latency, ms (log)", [
      { label: "latency", stroke: "#756bb1", width: 2, points: { show: true, size: 6 }, value: unit(" ms") },
    ], [dist.map(function (d) { return nines(d.percentile); }), dist.map(function (d) { return ms(d.value_us) || 0.001; })], {
      log: true, noPhases: true, noSync: true, id: "distribution",
      xLabel: "percentile", xName: "percentile", xRange: [0, 5],
      xSplits: function () { return [0, 1, 2, 3, 4, 5]; },
      xValues: function (u, vals) { return vals.map(function (v) { return labels[Math.round(v)] || ""; }); },
      xLegend: function (u, v, si, idx) { return idx == null ? "–" : pcts[idx] + "%"; },
    });
  }
})();
