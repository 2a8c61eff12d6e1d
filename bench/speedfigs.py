"""The seven figures of bench/speed.py (issue 14). Each ``fig_*(ctx)`` runs its builds and peers and returns
(raw records, table rows); figures that measure the same build share it through ``ctx.shared``."""

from __future__ import annotations

from pathlib import Path

import generate
import incremental
import peers
import speedgen
import speedpeers
from speedrun import (
    Ctx,
    Row,
    at_least,
    at_most,
    build_s,
    cli_env,
    cold,
    cold_rounds,
    failure,
    fit,
    flushed_first,
    ok,
    ratio,
    rebuild,
    secs,
    settle,
    side_by_side,
    wall,
)

MiB = float(1 << 20)
MODES = (("sync", ("--scheduler", "sync")), ("threads", ()), ("workers1", ("--workers", "1")),
         ("workers2", ("--workers", "2")))
GOAL_NOOP_S, GOAL_VS_OV, GOAL_32_S, GOAL_WORKERS = 0.30, 1.5, 1.5, 1.7
GOAL_EDIT_SHARE, GOAL_EDIT_S, GOAL_GRAPH_EDIT, GOAL_MIBS = 0.03, 0.5, 0.10, 500.0


def _real(ctx: Ctx, name: str) -> dict:
    return speedgen.real_model(name, ctx.speed, cli_env())


def _shape(name: str) -> dict[str, list[int]]:
    return {k: list(v) for k, v in speedgen.REAL[name].input_shape.items()}


def _median(ctx: Ctx, once) -> dict:
    """A peer's runs, started as our series are: once what ran before them has reached the disk."""
    return flushed_first(lambda: peers.median_of(ctx.repeat, once))


def _mib(nbytes: float) -> str:
    mib = nbytes / MiB
    return f"{mib:.0f} MiB" if mib >= 100 else f"{mib:.3g} MiB"


# ---------------------------------------------------------------- 2. cold run of split real models vs peers


def fig_real(ctx: Ctx) -> tuple[dict, list[Row]]:
    names = ["cls"] if ctx.quick else [*speedgen.REAL, "combo"]
    parts = {n: _real(ctx, n) for n in speedgen.REAL if n in names or ("combo" in names and n in speedgen.COMBO)}
    out: dict = {"models": parts}
    rows: list[Row] = []
    ov_fails: dict[str, str] = {}
    for name in names:
        members = list(speedgen.COMBO) if name == "combo" else [name]
        manifest = speedgen.combo({p: parts[p] for p in members}, ctx.speed) if name == "combo" else parts[name]
        ov_members = [p for p in members if p not in ov_fails]
        rec: dict = {"manifest": manifest, "ov_members": ov_members}
        if "openvino" in ctx.peers and ov_members:
            rec["ov"] = _median(ctx, lambda m=ov_members: speedpeers.ov_compile(
                [(Path(parts[p]["model"]), _shape(p)) for p in m], ctx.budget_s))
            if len(members) == 1 and not ok(rec["ov"]):
                ov_fails[name] = failure(rec["ov"])
        if "onnxruntime" in ctx.peers:
            rec["ort"] = _median(ctx, lambda m=members, n=name: speedpeers.ort_optimise(
                [Path(parts[p]["model"]) for p in m], ctx.speed / "peers" / n, ctx.budget_s))
        for target in ("cpu", "npu"):
            rec[target] = cold(ctx, f"{name} {target}", Path(manifest["spec"]), ("--target", target))
            rows.append(_real_row(name, target, rec, members, ov_fails))
        out[name] = rec
    return out, rows


def _real_row(name: str, target: str, rec: dict, members: list[str], ov_fails: dict[str, str]) -> Row:
    ours, ov, ort = rec[target], rec.get("ov"), rec.get("ort")
    r = ratio(wall(ours), wall(ov))
    notes = [f"build {secs(build_s(ours))}" if ok(ours) else failure(ours)]
    notes.append(f"ORT optimise+save {secs(wall(ort))} (ours {ratio(wall(ours), wall(ort)) or 0:.1f}x)"
                 if ok(ort) else f"ORT: {failure(ort)}")
    skipped = [m for m in members if m in ov_fails]
    if skipped:
        notes.append(f"OpenVINO cannot compile {', '.join(skipped)}: {ov_fails[skipped[0]][:120]}")
    what = "+".join(members) if name == "combo" else name
    peer = f"OV {secs(wall(ov))}" + (f" ({'+'.join(rec['ov_members'])})" if skipped and ok(ov) else "")
    return Row("2 cold real", f"cold run, {what} {target}, whole process", wall(ours), "s",
               f"<= {GOAL_VS_OV}x OV (moonshot 1.0x)", at_most(r, GOAL_VS_OV), peer if ov else "", r, "; ".join(notes))


# ---------------------------------------------------------------- 3. cold builds of N distinct 40-layer graphs


def fig_graphs(ctx: Ctx) -> tuple[dict, list[Row]]:
    out: dict = {}
    rows: list[Row] = []
    for n in ctx.graphs:
        manifest = speedgen.graphs_bundle(n, ctx.speed)
        spec = Path(manifest["spec"])  # the four modes in rounds: drift weighs on each alike (speedrun.cold_rounds)
        built = cold_rounds(ctx, {f"graphs-{n} {mode}": (spec, extra) for mode, extra in MODES})
        recs = {mode: built[f"graphs-{n} {mode}"] for mode, _ in MODES}
        ctx.shared.setdefault("graphs", {})[n] = recs["threads"]
        out[n] = {"manifest": manifest, **recs}
        for mode, rec in recs.items():
            goal = n == 32 and mode == "threads"
            per = build_s(rec) and 1000 * build_s(rec) / n
            note = (f"{per:.0f} ms a graph; whole process {secs(wall(rec))}" if ok(rec) else failure(rec))
            rows.append(Row("3 graphs", f"cold {n} graphs npu, {mode}: build seconds", build_s(rec), "s",
                            f"<= {GOAL_32_S} s (40 ms a graph)" if goal else "-",
                            at_most(build_s(rec), GOAL_32_S) if goal else None, note=note))
        one, two = recs["workers1"], recs["workers2"]
        ceiling = out[n]["ceiling"] = speedpeers.parallel_ceiling(ctx.repeat)  # right after: the same drift
        side = out[n]["side_by_side"] = (side_by_side(ctx, f"graphs-{n}", spec, ("--scheduler", "sync"))
                                         if n == max(ctx.graphs) else {})
        peer = f"2 CPU-bound processes vs 1: {ceiling['ratio']:.2f}x"
        for what, get in (("build seconds", build_s), ("whole process", wall)):
            v = ratio(get(one), get(two))
            rows.append(Row("3 graphs", f"--workers 2 vs 1, {n} graphs, {what}", v, "x",
                            f">= {GOAL_WORKERS}x" if n == 128 else "-", at_least(v, GOAL_WORKERS) if n == 128 else None,
                            peer, ratio(v, ceiling["ratio"]),
                            note="; ".join([f"{secs(get(one))} / {secs(get(two))}",
                                            *_scaling_notes(side, what, one, two)])))
    return out, rows


def _scaling_notes(side: dict, what: str, one: dict, two: dict) -> list[str]:
    """What two copies of the build got side by side, and for the whole process the ratio that start-up and
    close would leave if the build itself scaled that far (they cost --workers 2 what they cost --workers 1)."""
    if not side:
        return []
    if "error" in side:
        return [f"side by side: {side['error'][:80]}"]
    key = "build_ratio" if what == "build seconds" else "wall_ratio"
    notes = [f"two sync builds side by side {side[key]:.2f}x"]
    if what == "whole process" and ok(one) and ok(two) and build_s(one) and build_s(two):
        fixed_two = wall(two) - build_s(two)  # interpreter, imports, starting and closing the cluster
        bound = wall(one) / (fixed_two + build_s(one) / side["build_ratio"])
        notes.append(f"start-up and close {secs(wall(one) - build_s(one))} / {secs(fixed_two)}: at most {bound:.2f}x "
                     f"with the build at {side['build_ratio']:.2f}x")
    return notes


# ---------------------------------------------------------------- 4. and 6.: bundle (a), 1 GiB of external data


def big_cold(ctx: Ctx) -> dict:
    """Bundle (a) of bench/generate.py at ``ctx.scale`` and its cold build, once per run (figures 4 and 6). Its
    external-data files are written again first, as the user who builds them has just saved them: kept from an
    earlier run, their page cache is in whatever state that run and the time since left it (``speedgen.rewrite``;
    from 29 % 2 MiB-mapped files, the cold build took 0.94-1.0 s, from just-written ones 0.75-0.84 s)."""
    if "a" not in ctx.shared:
        manifest = generate.ensure("a", ctx.data, ctx.scale)
        rewrite = speedgen.rewrite(external_data_files(ctx.data / "a"))
        rewrite["huge_mapped"] = speedgen.huge_mapped_share(ctx.data / "a" / manifest["edit"]["file"])
        ctx.shared["a"] = {"manifest": manifest, "rewrite": rewrite, "cold": cold(ctx, "a", Path(manifest["spec"]))}
    return ctx.shared["a"]


def fig_weight_edit(ctx: Ctx) -> tuple[dict, list[Row]]:
    a = big_cold(ctx)
    manifest, directory = a["manifest"], ctx.data / "a"
    model = directory / "original.onnx"
    out: dict = {"cold": a["cold"], "rewrite": a["rewrite"]}
    if "openvino" in ctx.peers:
        out["ov"] = _median(ctx, lambda: peers.ov_run(model, None))
    if "onnxruntime" in ctx.peers:
        work = ctx.speed / "peers" / "a"
        work.mkdir(parents=True, exist_ok=True)
        out["ort"] = _median(ctx, lambda: peers.ort_run(model, work, True))
    if ok(a["cold"]):
        edited = directory / manifest["edit"]["file"]
        original = edited.read_bytes()
        incremental.mark_edited(directory, manifest)
        try:
            out["edit"] = rebuild(ctx, "a", "weight edit", lambda _: incremental.edit_external(directory, manifest))
        finally:  # the inputs as generated again: the next run reuses them
            edited.write_bytes(original)
            generate.write_manifest(directory, manifest)
    edit, cold_rec = out.get("edit"), a["cold"]
    share = ratio(build_s(edit), build_s(cold_rec))
    setup = [(rec or {}).get("setup_s") for rec in (edit, cold_rec)]
    floor = (f"; setup (imports: numpy, the stages) {secs(setup[0])} / {secs(setup[1])}, counted apart in both"
             if None not in setup else "") + _mapped_note(a["rewrite"].get("huge_mapped"))
    size = f"{_mib(manifest['edit']['nbytes'])} tensor, {_mib(manifest['weight_bytes'])} bundle (a)"
    ov, ort = out.get("ov"), out.get("ort")
    rows = [Row("4 weight edit", f"weight edit of one {size}: build s / cold build s", share, "",
                f"<= {GOAL_EDIT_SHARE}", at_most(share, GOAL_EDIT_SHARE),
                note=(f"{secs(build_s(edit))} / {secs(build_s(cold_rec))}{floor}" if share
                      else failure(edit or cold_rec))),
            Row("4 weight edit", "weight edit, whole process", wall(edit), "s", f"<= {GOAL_EDIT_S} s",
                at_most(wall(edit), GOAL_EDIT_S), f"OV full compile {secs(wall(ov))}" if ov else "",
                ratio(wall(edit), wall(ov)),
                f"peers recompile in full; ORT optimise+save {secs(wall(ort))}" if ort else "")]
    out["one_file"], one_file_rows = _one_file_edits(ctx, a["manifest"])
    return out, [*rows, *one_file_rows]


PIECE_BYTES = 4 << 10  # the one-file layout's second state: 4 KiB folios, as the data kept from AK to AP was found


def _one_file_edits(ctx: Ctx, a: dict) -> tuple[dict, list[Row]]:
    """The same edit of (a) in onnx's default external-data layout (one file a graph, ``speedgen.one_file_layout``):
    the plan reads the whole rewritten file to find the range that changed, at a speed set by the page cache. First
    as just saved (the goal's row), then with the files written again in 4 KiB pieces (``speedgen.rewrite``)."""
    manifest = speedgen.one_file_layout(a, ctx.data / "speed")
    directory = Path(manifest["spec"]).parent
    edited = directory / manifest["edit"]["file"]
    saved = _one_file_state(ctx, manifest, "a-one-file")
    rewrite = speedgen.rewrite([directory / name for name in manifest["data_files"]], PIECE_BYTES)
    pieces = {**_one_file_state(ctx, manifest, "a-one-file-pieces"), "rewrite": rewrite}
    rows = [_one_file_row(saved, f"the same edit, onnx's one-file layout ({_mib(edited.stat().st_size)} file, just "
                                 "saved): build s / cold build s", goal=True),
            _one_file_row(pieces, f"the same, the files written in {PIECE_BYTES >> 10} KiB pieces: build s / cold "
                                  "build s", goal=False)]
    return {"saved": saved, "pieces": pieces}, rows


def _one_file_state(ctx: Ctx, manifest: dict, label: str) -> dict:
    """Cold builds and edits of the one-file layout in its page cache's present state (``huge_mapped``, taken
    before the cold builds). The edited range is put back afterwards: the next state starts from the saved bytes."""
    directory, edit = Path(manifest["spec"]).parent, manifest["edit"]
    path = directory / edit["file"]
    out = {"huge_mapped": speedgen.huge_mapped_share(path), "cold": cold(ctx, label, Path(manifest["spec"]))}
    if ok(out["cold"]):
        with open(path, "rb") as f:
            f.seek(edit["offset"])
            original = f.read(edit["nbytes"])
        try:
            out["edit"] = rebuild(ctx, label, "weight edit", lambda _: speedgen.edit_one_file(directory, manifest))
        finally:
            with open(path, "r+b") as f:
                f.seek(edit["offset"])
                f.write(original)
    return out


def _one_file_row(out: dict, figure: str, goal: bool) -> Row:
    share = ratio(build_s(out.get("edit")), build_s(out["cold"]))
    note = (f"{secs(build_s(out['edit']))} / {secs(build_s(out['cold']))}{_mapped_note(out.get('huge_mapped'))}"
            if share else failure(out.get("edit") or out["cold"]))
    return Row("4 weight edit", figure, share, "", f"<= {GOAL_EDIT_SHARE}" if goal else "-",
               at_most(share, GOAL_EDIT_SHARE) if goal else None, note=note)


def _mapped_note(share: float | None) -> str:
    return "" if share is None else f"; {share:.0%} of the edited file mapped in 2 MiB pages before the cold builds"


def external_data_files(directory: Path) -> list[Path]:
    names = set()
    for g in ("init", "update", "infer"):
        names |= set(generate.external_files(directory / f"{g}.onnx").values())
    return [directory / n for n in sorted(names)]


def fig_throughput(ctx: Ctx) -> tuple[dict, list[Row]]:
    a = big_cold(ctx)
    files = external_data_files(ctx.data / "a")
    b3 = speedpeers.blake3_rate(files)
    disk = speedpeers.write_fsync_rate(files, ctx.speed / "scratch")
    nbytes = a["manifest"]["weight_bytes"]
    mibs = ratio(nbytes / MiB, build_s(a["cold"]))
    b3_mibs, disk_mibs = b3["bytes_per_s"] / MiB, disk["bytes_per_s"] / MiB
    rows = [Row("6 throughput", f"cold weight throughput, {_mib(nbytes)} bundle (a): bytes / build s", mibs,
                "MiB/s", f">= {GOAL_MIBS:.0f} MiB/s", at_least(mibs, GOAL_MIBS), f"disk {disk_mibs:.0f} MiB/s",
                ratio(mibs, disk_mibs), f"{a['manifest']['tensors']} tensors, cold build {secs(build_s(a['cold']))}; "
                                        f"blake3 {b3_mibs:.0f} MiB/s (ours {ratio(mibs, b3_mibs) or 0:.2f}x)"),
            Row("6 throughput", "floor: blake3 of the same bytes (1 thread, page cache)", b3_mibs, "MiB/s"),
            Row("6 throughput", "floor: disk write+fsync of the same bytes", disk_mibs, "MiB/s")]
    return {"cold": a["cold"], "rewrite": a["rewrite"], "manifest": a["manifest"], "blake3": b3,
            "disk_write_fsync": disk}, rows


# ---------------------------------------------------------------- 5. one-graph edit


def fig_graph_edit(ctx: Ctx) -> tuple[dict, list[Row]]:
    n = ctx.graphs[0]
    manifest = speedgen.graphs_bundle(n, ctx.speed)
    directory, label = Path(manifest["spec"]).parent, f"graphs-{n} threads"
    cold_rec = ctx.shared.get("graphs", {}).get(n) if label in ctx.built else None
    reused = cold_rec is not None
    if not reused:
        cold_rec = cold(ctx, label, Path(manifest["spec"]))
    out: dict = {"cold": cold_rec, "cold_from_figure_3": reused}
    if ok(cold_rec):
        edited: list[str] = []

        def edit(i: int) -> str:
            edited.append(speedgen.edit_graph(directory, manifest, i))
            return edited[-1]

        try:
            out["edit"] = rebuild(ctx, label, "one-graph edit", edit)
        finally:
            speedgen.restore_graphs(directory, manifest, edited)
    edit = out.get("edit")
    share = ratio(build_s(edit), build_s(cold_rec))
    note = (f"{secs(build_s(edit))} / {secs(build_s(cold_rec))}; whole process {secs(wall(edit))}; "
            f"{edit['ran']} of {edit['ran'] + edit['cached']} tasks ran" if share else failure(edit or cold_rec))
    row = Row("5 graph edit", f"one-graph edit (append a Relu), {n}-graph npu bundle of fig. 3: build s / cold",
              share, "", f"<= {GOAL_GRAPH_EDIT}", at_most(share, GOAL_GRAPH_EDIT), note=note)
    return out, [row]


# ---------------------------------------------------------------- 7. scaling


def fig_scaling(ctx: Ctx) -> tuple[dict, list[Row]]:
    counts = (1, 2, 4) if ctx.quick else (8, 32, 128, 512)
    tensor_counts = (10, 50, 100) if ctx.quick else (100, 1000, 10000)
    out: dict = {"graphs": {}, "tensors": {}}
    rows: list[Row] = []
    for n in counts:
        rec = ctx.shared.get("graphs", {}).get(n)
        if rec is None:
            rec = cold(ctx, f"graphs-{n} threads", Path(speedgen.graphs_bundle(n, ctx.speed)["spec"]))
        out["graphs"][n] = rec
        rows.append(_point(f"cold {n} graphs npu (threads): build seconds", rec, n, "graph"))
    for t in tensor_counts:
        rec = cold(ctx, f"tensors-{t}", Path(speedgen.tensors_bundle(t, ctx.speed)["spec"]))
        out["tensors"][t] = rec
        rows.append(_point(f"cold {t} small tensors cpu: build seconds", rec, t, "tensor"))
    for key, unit, scale, what in (("graphs", "ms/graph", 1e3, "graph"), ("tensors", "us/tensor", 1e6, "tensor")):
        line = fit({k: build_s(r) for k, r in out[key].items() if ok(r) and build_s(r) is not None})
        out[f"fit_{key}"] = line
        sizes = f"{min(out[key])}..{max(out[key])}"
        note = ("fewer than 2 points" if line is None else
                f"least squares over {', '.join(line['points'])}; intercept {line['intercept_s']:.2f} s")
        rows.append(Row("7 scaling", f"slope: build seconds per {what} ({sizes})",
                        None if line is None else line["slope_s"] * scale, unit, note=note))
    return out, rows


def _point(name: str, rec: dict, size: int, what: str) -> Row:
    per = build_s(rec) and build_s(rec) / size
    unit = 1e3 if what == "graph" else 1e6
    note = (f"{per * unit:.0f} {'ms' if what == 'graph' else 'us'} a {what}; whole process {secs(wall(rec))}"
            if ok(rec) else failure(rec))
    return Row("7 scaling", name, build_s(rec), "s", note=note)


# ---------------------------------------------------------------- 1. no-op (run last: it reuses the builds above)


def noop_labels(ctx: Ctx) -> list[str]:
    graphs = sorted((lb for lb in ctx.built if lb.startswith("graphs-") and lb.endswith(" threads")),
                    key=lambda lb: int(lb.split()[0].split("-")[1]))
    found = [lb for lb in ("det cpu", "det npu", "combo npu", *graphs[:1], "a") if lb in ctx.built]
    return found or list(ctx.built)[:1]


def fig_noop(ctx: Ctx) -> tuple[dict, list[Row]]:
    out: dict = {"numpy": _median(ctx, speedpeers.import_numpy)}
    if "onnxruntime" in ctx.peers:
        det = Path(_real(ctx, "det")["model"])
        out["ort_det"] = _median(ctx, lambda: speedpeers.ort_optimise([det], ctx.speed / "peers" / "det",
                                                                       ctx.budget_s))
    if not ctx.built:
        first = "cls" if ctx.quick else "det"
        out["cold"] = cold(ctx, f"{first} cpu", Path(_real(ctx, first)["spec"]), ("--target", "cpu"))
    floor, ort_det = wall(out["numpy"]), wall(out.get("ort_det"))
    rows = []
    for label in noop_labels(ctx):
        settled = settle(ctx, label)
        rec = rebuild(ctx, label, "no-op")
        out[label] = {"settle": settled, "noop": rec}
        note = (f"build {secs(build_s(rec))}, {rec['ran']} of {rec['ran'] + rec['cached']} tasks ran; "
                f"{ratio(wall(rec), floor) or 0:.1f}x the numpy import" if ok(rec) else failure(rec))
        rows.append(Row("1 no-op", f"no-op run ({label}), whole process", wall(rec), "s", f"<= {GOAL_NOOP_S} s",
                        at_most(wall(rec), GOAL_NOOP_S), f"ORT det {secs(ort_det)}" if ort_det else "",
                        ratio(wall(rec), ort_det), note))
    rows.append(Row("1 no-op", "floor: python -c 'import numpy', whole process", floor, "s"))
    if "ort_det" in out:
        rows.append(Row("1 no-op", "floor: ORT offline compile of PP-OCR det, whole process", ort_det, "s",
                        note="" if ok(out["ort_det"]) else failure(out["ort_det"])))
    return out, rows


FIGURES = {"noop": fig_noop, "real": fig_real, "graphs": fig_graphs, "weight-edit": fig_weight_edit,
           "graph-edit": fig_graph_edit, "throughput": fig_throughput, "scaling": fig_scaling}
ORDER = ("real", "graphs", "scaling", "graph-edit", "weight-edit", "throughput", "noop")  # noop reuses the builds
