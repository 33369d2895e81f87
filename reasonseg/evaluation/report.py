"""What an evaluation tells: the metrics of its per-item records, the printed table, and ``report.html``.

``metrics.json`` (from :func:`summarize`)::

    {"model", "data": {"kind", "path", "split", "all_queries"}, "modes": ["lisa", "generate"],
     "settings": {"batch_size", "max_new_tokens", "processes"},
     "results": {MODE: {SCOPE: {"overall": {"giou", "ciou", "count", "intersection", "union"},
                                "short": {...}, "long": {...},          # ReasonSeg and custom data
                                "no_target": {"n_acc", "t_acc", ...},  # gRefCOCO
                                "seg_emitted": {"share", "count", "of", "several"}}}},   # generate mode
     "not_scored", "problems"}

``SCOPE`` is ``protocol`` (what LISA's validation scores: the first query of each ReasonSeg image / custom target,
every sentence of a refer dataset) and, with ``all_queries``, ``all_queries`` (every phrasing). ``short`` holds
the phrase queries, ``long`` the sentence queries (the paper's split). Values not defined (no item of that kind)
are ``null``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ReasonSegError
from .metrics import GeneralizedReferringMeter, SegmentationMeter

MODE_TITLES = {"lisa": "lisa (forced [SEG])", "generate": "generate (free answer)"}
SCOPE_TITLES = {"protocol": "LISA protocol", "all_queries": "all queries"}
WORST_COUNT = 24
THUMBNAIL_SIDE = 320
TARGET_COLOR = (40, 200, 60)
IGNORE_COLOR = (150, 150, 150)
PREDICTION_COLOR = (230, 30, 30)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _clean(summary: dict) -> dict:
    return {key: _finite(value) for key, value in summary.items()}


def _meter(records: list[dict]) -> SegmentationMeter:
    meter = SegmentationMeter()
    for record in records:
        meter.update_counts(record["intersection"], record["union"])
    return meter


def _block(kind: str, mode: str, records: list[dict]) -> dict:
    block = {"overall": _clean(_meter(records).summary())}
    if kind in ("reasonseg", "custom"):
        block["short"] = _clean(_meter([r for r in records if not r["is_sentence"]]).summary())
        block["long"] = _clean(_meter([r for r in records if r["is_sentence"]]).summary())
    if kind == "grefcoco":
        referring = GeneralizedReferringMeter()
        for record in records:
            referring.update_flags(prediction_empty=record["pred_empty"], has_target=record["has_target"])
        block["no_target"] = _clean(referring.summary())
    if mode == "generate":
        emitted = sum(1 for r in records if r["seg_count"] > 0)
        block["seg_emitted"] = {
            "share": emitted / len(records) if records else None,
            "count": emitted,
            "of": len(records),
            "several": sum(1 for r in records if r["seg_count"] > 1),
        }
    return block


def summarize(records: list[dict], modes, dataset, settings: dict, world: int = 1, batch_size: int = 1) -> dict:
    """The metrics of the per-item ``records`` (see the module docstring)."""
    scopes = ["protocol"]
    if dataset.all_queries and dataset.kind in ("reasonseg", "custom"):
        scopes.append("all_queries")
    results = {}
    for mode in modes:
        mine = [r for r in records if r["mode"] == mode]
        results[mode] = {
            scope: _block(dataset.kind, mode, [r for r in mine if scope == "all_queries" or r["in_protocol"]])
            for scope in scopes
        }
    return {
        "model": settings["model"],
        "data": settings["data"],
        "modes": list(modes),
        "settings": {"batch_size": batch_size, "max_new_tokens": settings["max_new_tokens"], "processes": world,
                     "mask_regions": settings.get("mask_regions", "all")},
        "results": results,
    }


# ---------------------------------------------------------------------------------------------------- the table


def _number(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_rows(metrics: dict) -> list[tuple[str, list[str]]]:
    """``(label, one cell per mode)`` rows of the summary; a label without cells is a section heading."""
    modes = metrics["modes"]
    results = metrics["results"]
    rows: list[tuple[str, list[str]]] = []
    for scope in results[modes[0]]:
        rows.append((SCOPE_TITLES.get(scope, scope), []))
        for group in ("overall", "short", "long"):
            blocks = [results[mode][scope].get(group) for mode in modes]
            if any(b is None for b in blocks) or (group != "overall" and all(b["count"] == 0 for b in blocks)):
                continue
            rows.append((f"  {group} gIoU", [_number(b["giou"]) for b in blocks]))
            rows.append((f"  {group} cIoU", [_number(b["ciou"]) for b in blocks]))
            rows.append((f"  {group} count", [str(b["count"]) for b in blocks]))
        if "no_target" in results[modes[0]][scope]:
            blocks = [results[mode][scope]["no_target"] for mode in modes]
            rows.append(("  N-acc (no-target, no mask)", [_number(b["n_acc"]) for b in blocks]))
            rows.append(("  T-acc (target, a mask)", [_number(b["t_acc"]) for b in blocks]))
        cells = []
        for mode in modes:
            emitted = results[mode][scope].get("seg_emitted")
            if emitted is None:
                cells.append("forced")
            else:
                share = "-" if emitted["share"] is None else f"{100 * emitted['share']:.1f}%"
                cells.append(f"{share} ({emitted['count']}/{emitted['of']})")
        rows.append(("  [SEG] emitted", cells))
    return rows


def format_table(metrics: dict) -> str:
    """The summary printed by ``reasonseg eval``: one column per mode, the two side by side."""
    data = metrics["data"]
    split = f" split {data['split']}" if data.get("split") else ""
    regions = metrics.get("settings", {}).get("mask_regions", "all")
    rule = "" if regions == "all" else f" (each mask's {regions} region only)"
    lines = [f"{data['kind']}:{data['path']}{split} -- model {metrics['model']}{rule}"]
    width = 30
    lines.append(" " * width + "".join(f"{MODE_TITLES.get(m, m):>26}" for m in metrics["modes"]))
    for label, cells in table_rows(metrics):
        lines.append(label if not cells else f"{label:<{width}}" + "".join(f"{c:>26}" for c in cells))
    if metrics.get("not_scored"):
        lines.append(f"{metrics['not_scored']} (item, mode) pair(s) not scored; see the problems listed")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- report.html


def _blend(rgb: np.ndarray, mask: np.ndarray, color, alpha: float = 0.5) -> np.ndarray:
    out = rgb.copy()
    out[mask] = (rgb[mask].astype(np.float32) * (1 - alpha) + np.asarray(color, np.float32) * alpha).astype(np.uint8)
    return out


def _data_uri(array: np.ndarray) -> str:
    image = Image.fromarray(array)
    scale = min(THUMBNAIL_SIDE / max(image.size), 4.0)  # small images are enlarged (pixels kept sharp)
    if scale != 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(uri: str, caption: str) -> str:
    return f'<figure><img src="{uri}" alt=""><figcaption>{caption}</figcaption></figure>'


def _sample_panel(uid: str, group: list[dict], item, modes) -> str:
    from ..inference.mask_io import rle_to_mask
    from ..processing.image_io import load_image

    first = group[0]
    heading = f"<h3>{html.escape(uid)}: {html.escape(first['query'])}</h3>"
    try:
        image = load_image(item.image_path)
        rgb = np.asarray(image, dtype=np.uint8)
        target = item.load_target(image.height, image.width)
    except (ReasonSegError, OSError) as err:  # a report shows what it can
        return f'<section class="sample">{heading}<p>image unavailable: {html.escape(str(err))}</p></section>'
    truth = _blend(_blend(rgb, target == 255, IGNORE_COLOR), target == 1, TARGET_COLOR)
    figures = [_figure(_data_uri(rgb), "image"), _figure(_data_uri(truth), "ground truth (grey: ignored)")]
    by_mode = {record["mode"]: record for record in group}
    for mode in modes:
        record = by_mode.get(mode)
        if record is None:
            continue
        predicted = rle_to_mask(record["pred_rle"])
        if predicted.shape != rgb.shape[:2]:
            continue
        caption = (f"{html.escape(MODE_TITLES.get(mode, mode))}: IoU {record['iou']:.3f}, "
                   f"{record['seg_count']} [SEG]<br><q>{html.escape(record['answer'])}</q>")
        figures.append(_figure(_data_uri(_blend(rgb, predicted, PREDICTION_COLOR)), caption))
    return f'<section class="sample">{heading}<div class="row">{"".join(figures)}</div></section>'


def worst_samples(records: list[dict], count: int = WORST_COUNT) -> list[tuple[str, list[dict]]]:
    """The ``count`` items with the lowest IoU (averaged over the modes they were scored in), worst first."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["key"].rsplit("|", 1)[0], []).append(record)
    ranked = sorted(groups.items(), key=lambda kv: (sum(r["iou"] for r in kv[1]) / len(kv[1]), kv[0]))
    return ranked[:count]


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin-bottom:1.5rem}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
td:first-child,th:first-child{text-align:left}tr.section td{background:#eee;font-weight:600;text-align:left}
.row{display:flex;gap:.5rem;flex-wrap:wrap}figure{margin:0;max-width:330px}img{max-width:320px;display:block}
figcaption{font-size:.8rem}section.sample{border-top:1px solid #ddd;padding:.5rem 0}h3{font-size:1rem;margin:.3rem 0}
"""


def write_html_report(path: Path, metrics: dict, records: list[dict], items_by_uid: dict,
                      worst: int = WORST_COUNT) -> Path:
    """``report.html``: the metrics table and the ``worst`` lowest-IoU items as image / ground truth / prediction
    (one per mode) overlays side by side. Self-contained (images inlined)."""
    modes = metrics["modes"]
    head = "".join(f"<th>{html.escape(MODE_TITLES.get(m, m))}</th>" for m in modes)
    body = []
    for label, cells in table_rows(metrics):
        if not cells:
            body.append(f'<tr class="section"><td colspan="{len(modes) + 1}">{html.escape(label)}</td></tr>')
        else:
            body.append("<tr><td>" + html.escape(label.strip()) + "</td>"
                        + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    data = metrics["data"]
    title = f"reasonseg eval: {data['kind']}:{data['path']}"
    panels = [
        _sample_panel(uid, group, items_by_uid[uid], modes)
        for uid, group in worst_samples(records, worst)
        if uid in items_by_uid
    ]
    problems = metrics.get("problems") or []
    problem_html = ("<h2>Problems</h2><ul>" + "".join(f"<li>{html.escape(p)}</li>" for p in problems) + "</ul>"
                    if problems else "")
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>model {html.escape(str(metrics['model']))}; split {html.escape(str(data.get('split') or '-'))};
batch size {metrics['settings']['batch_size']}, {metrics['settings']['processes']} process(es),
max new tokens {metrics['settings']['max_new_tokens']}</p>
<table><tr><th></th>{head}</tr>{''.join(body)}</table>
{problem_html}
<h2>The {len(panels)} worst samples</h2>
{''.join(panels)}
</body></html>
"""
    path = Path(path)
    path.write_text(document, encoding="utf-8")
    return path
