"""``bundle-pipeline dag``: the task graph of one or more specs as Graphviz dot, JSON or a self-contained HTML page.

Each task carries its bundle, stage, step, graph, status and duration:

- status comes from the rebuilder's plan (what ``run`` would do now): ``cached`` (its key hits),
  ``stale`` (its key misses: it certainly runs; ``reason`` says what changed) or ``maybe`` (downstream of
  a stale task: it runs unless early cutoff spares it);
- ``seconds`` is the recorded duration of its last run, from the cache's action records: the record of
  the current key when it hits, else the record of the key of this spec's last successful build; None
  when the task never ran with this cache.

The HTML page draws the DAG as inline SVG laid out here (columns = topological generations, each
column ordered by the mean row of its predecessors to limit crossings; bundles stacked), with a few
lines of inline script to highlight a task's inputs and consumers on hover. It loads nothing from
the network.
"""

from __future__ import annotations

import html
import json

import networkx as nx

from ..cache import Cache
from ..spec import BundleSpec
from .build import identity, prepare
from .rebuild import last_build, plan

FORMATS = ("dot", "json", "html")
STATUS_COLORS = {"cached": ("#d9f2dd", "#2e7d32"), "stale": ("#fadadd", "#c62828"), "maybe": ("#fff1c7", "#a86b00")}
STATUS_HELP = {"cached": "up to date: its key hits the cache", "stale": "its key misses: a run executes it",
               "maybe": "downstream of a stale task: runs unless early cutoff spares it"}


def task_graph(specs: list[BundleSpec]) -> dict:
    """Nodes (tasks with status and recorded seconds) and edges (data dependencies) of the specs' DAG."""
    _, dag, ctxs = prepare(specs)
    identities = {s.name: identity(s) for s in specs}
    found = plan(dag, ctxs, identities)
    caches = {s.name: Cache(s.cache) for s in specs}
    previous = {s.name: last_build(caches[s.name], identities[s.name]) for s in specs}
    generation = {tid: i for i, gen in enumerate(nx.topological_generations(dag.nx)) for tid in gen}
    nodes = []
    for tid in nx.lexicographical_topological_sort(dag.nx):
        task = dag.tasks[tid]
        if tid in found.resolved:
            status, reason = "cached", "up to date"
            seconds = found.resolved[tid].extra.get("recorded_seconds")
        else:
            stale = found.stale[tid]
            status, reason = ("stale" if stale.found is not None else "maybe"), stale.reason
            seconds = _recorded_seconds(caches[task.bundle], previous[task.bundle].get(tid))
        nodes.append({"id": tid, "bundle": task.bundle, "stage": task.stage, "step": task.step, "graph": task.graph,
                      "status": status, "reason": reason, "seconds": seconds, "generation": generation[tid]})
    edges = []
    for tid in (n["id"] for n in nodes):
        inputs: dict[str, list[str]] = {}
        for dep in dag.tasks[tid].deps:
            inputs.setdefault(dep.task, []).append(dep.name)
        edges += [{"source": src, "target": tid, "inputs": names} for src, names in sorted(inputs.items())]
    counts = {s: sum(n["status"] == s for n in nodes) for s in STATUS_COLORS}
    return {"format": "bundle-pipeline-dag", "version": 1, "bundles": [s.name for s in specs], "nodes": nodes,
            "edges": edges, "counts": counts}


def _recorded_seconds(cache: Cache, key: str | None) -> float | None:
    record = cache.get_action(key) if key else None
    return record.get("seconds") if record else None


def render(graph: dict, fmt: str) -> str:
    return {"dot": to_dot, "json": to_json, "html": to_html}[fmt](graph)


def to_json(graph: dict) -> str:
    return json.dumps(graph, indent=1) + "\n"


def label(node: dict) -> str:
    return f"{node['step']}:{node['graph']}" if node["graph"] else node["step"]


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "no record"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def to_dot(graph: dict) -> str:
    lines = ['digraph "bundle-pipeline" {', "  rankdir=LR;", '  node [shape=box, style="rounded,filled", '
             'fontname="Helvetica", fontsize=10];', '  edge [color="#777777", arrowsize=0.6];']
    for bundle in graph["bundles"]:
        lines += [f"  subgraph {_q('cluster_' + bundle)} {{", f"    label={_q('bundle ' + bundle)};",
                  '    style="rounded"; color="#999999";']
        for n in (n for n in graph["nodes"] if n["bundle"] == bundle):
            fill, border = STATUS_COLORS[n["status"]]
            text = f"{label(n)}\n{n['status']} · {duration(n['seconds'])}"
            lines.append(f"    {_q(n['id'])} [label={_q(text)}, fillcolor={_q(fill)}, color={_q(border)}, "
                         f"tooltip={_q(n['id'] + ': ' + n['reason'])}];")
        lines.append("  }")
    lines += [f"  {_q(e['source'])} -> {_q(e['target'])} [tooltip={_q(', '.join(e['inputs']))}];"
              for e in graph["edges"]]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    """A dot quoted string; newlines become dot's centred line breaks."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# --- HTML: a layered layout computed here, drawn as inline SVG -----------------------------------------

NODE_W, NODE_H, COL_GAP, ROW_GAP, MARGIN, HEADER = 210, 44, 60, 12, 24, 34


def layout(graph: dict) -> tuple[dict[str, tuple[float, float]], list[tuple[str, float]], float, float]:
    """Top-left corner of every node box, bundle header positions, total width and height."""
    preds: dict[str, list[str]] = {}
    for e in graph["edges"]:
        preds.setdefault(e["target"], []).append(e["source"])
    pos: dict[str, tuple[float, float]] = {}
    headers: list[tuple[str, float]] = []
    top, width = MARGIN, 0.0
    for bundle in graph["bundles"]:
        mine = [n for n in graph["nodes"] if n["bundle"] == bundle]
        headers.append((bundle, top))
        top += HEADER
        columns: dict[int, list[dict]] = {}
        for n in mine:
            columns.setdefault(n["generation"], []).append(n)
        row: dict[str, float] = {}
        for gen in sorted(columns):
            for i, n in enumerate(sorted(columns[gen], key=lambda n, row=row: _barycenter(n, preds, row))):
                row[n["id"]] = i
                pos[n["id"]] = (MARGIN + gen * (NODE_W + COL_GAP), top + i * (NODE_H + ROW_GAP))
        rows = max((len(c) for c in columns.values()), default=0)
        width = max(width, MARGIN + max(columns, default=0) * (NODE_W + COL_GAP) + NODE_W + MARGIN)
        top += rows * (NODE_H + ROW_GAP) + MARGIN
    return pos, headers, width, top


def _barycenter(node: dict, preds: dict[str, list[str]], row: dict[str, float]) -> tuple[float, str]:
    above = [row[p] for p in preds.get(node["id"], []) if p in row]
    return (sum(above) / len(above) if above else 0.0, node["id"])


def to_html(graph: dict) -> str:
    pos, headers, width, height = layout(graph)
    esc = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="dag" width="{width:.0f}" height="{height:.0f}" '
             f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="task graph">',
             '<defs><marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" '
             'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#8a8a8a"/></marker></defs>']
    for bundle, y in headers:
        parts.append(f'<text class="bundle" x="{MARGIN}" y="{y + 20}">bundle {esc(bundle)}</text>')
    for e in graph["edges"]:
        (sx, sy), (tx, ty) = pos[e["source"]], pos[e["target"]]
        x1, y1, x2, y2 = sx + NODE_W, sy + NODE_H / 2, tx - 2, ty + NODE_H / 2
        bend = max(COL_GAP / 2, (x2 - x1) / 3)
        parts.append(f'<path class="edge" data-from="{esc(e["source"])}" data-to="{esc(e["target"])}" '
                     f'd="M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} {x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}" '
                     f'marker-end="url(#arrow)"><title>{esc(e["source"])} → {esc(e["target"])} '
                     f'({esc(", ".join(e["inputs"]))})</title></path>')
    for n in graph["nodes"]:
        x, y = pos[n["id"]]
        fill, border = STATUS_COLORS[n["status"]]
        name = label(n)
        short = name if len(name) <= 28 else name[:27] + "…"
        tip = f"{n['id']}\nstage {n['stage']}, graph {n['graph'] or '-'}\n{n['status']}: {n['reason']}\n" \
              f"recorded {duration(n['seconds'])}"
        parts.append(f'<g class="node {n["status"]}" data-task="{esc(n["id"])}" data-stage="{esc(n["stage"])}" '
                     f'transform="translate({x:.1f},{y:.1f})"><title>{esc(tip)}</title>'
                     f'<rect width="{NODE_W}" height="{NODE_H}" rx="7" fill="{fill}" stroke="{border}"/>'
                     f'<text class="name" x="10" y="18">{esc(short)}</text>'
                     f'<text class="sub" x="10" y="35">{esc(n["status"])} · {esc(duration(n["seconds"]))}</text></g>')
    parts.append("</svg>")
    legend = "".join(f'<span class="key"><i style="background:{fill};border-color:{border}"></i>'
                     f'<b>{status}</b> {graph["counts"][status]}: {esc(STATUS_HELP[status])}</span>'
                     for status, (fill, border) in STATUS_COLORS.items())
    title = f"bundle-pipeline task graph: {', '.join(graph['bundles'])}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 16px; color: #222; background: #fff; }}
h1 {{ font-size: 18px; margin: 0 0 6px; }}
.legend {{ margin: 0 0 10px; }} .key {{ margin-right: 18px; white-space: nowrap; }}
.key i {{ display: inline-block; width: 12px; height: 12px; border: 1.5px solid; border-radius: 3px;
          vertical-align: -2px; margin-right: 4px; }}
#wrap {{ overflow: auto; border: 1px solid #ddd; border-radius: 6px; }}
#wrap.fit svg {{ max-width: 100%; height: auto; }}
button {{ font: inherit; margin-left: 8px; }}
svg text {{ font: 12px system-ui, sans-serif; fill: #222; }}
svg text.sub {{ font-size: 11px; fill: #555; }}
svg text.bundle {{ font-size: 14px; font-weight: 600; }}
.node rect {{ stroke-width: 1.5; }} .node:hover rect, .node.hl rect {{ stroke-width: 3; }}
.edge {{ fill: none; stroke: #9a9a9a; stroke-width: 1.2; }} .edge.hl {{ stroke: #1f5fbf; stroke-width: 2.4; }}
.dim {{ opacity: 0.25; }}
</style></head>
<body><h1>{esc(title)}</h1>
<p class="legend">{legend}</p>
<p>{len(graph["nodes"])} tasks, {len(graph["edges"])} dependencies. Hover a task to highlight its inputs and
consumers; its tooltip says why it is stale and how long it took when it last ran.
<button id="zoom" type="button">actual size</button></p>
<div id="wrap" class="fit">{"".join(parts)}</div>
<script>
(function () {{
  var svg = document.getElementById("dag"), wrap = document.getElementById("wrap");
  document.getElementById("zoom").addEventListener("click", function (ev) {{
    var fit = wrap.classList.toggle("fit");
    ev.target.textContent = fit ? "actual size" : "fit to width";
  }});
  function mark(id, on) {{
    svg.querySelectorAll(".edge").forEach(function (e) {{
      var hit = e.dataset.from === id || e.dataset.to === id;
      e.classList.toggle("hl", on && hit); e.classList.toggle("dim", on && !hit);
    }});
  }}
  svg.querySelectorAll(".node").forEach(function (n) {{
    n.addEventListener("mouseenter", function () {{ mark(n.dataset.task, true); }});
    n.addEventListener("mouseleave", function () {{ mark(n.dataset.task, false); }});
  }});
}})();
</script>
</body></html>
"""
