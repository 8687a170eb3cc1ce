"""Reports of an evaluation: the results table (measured next to the reported numbers) and the JSON/CSV files."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .benchmarks import PAPER_BENCHMARKS, get_benchmark
from .loop import BenchmarkResult, _json_float

_VARIANT_LABELS = {"base": "CAT-Seg base (ViT-B/16)", "large": "CAT-Seg large (ViT-L/14)"}


def infer_variant(config: Any) -> str | None:
    """`"base"` / `"large"` when the model has the geometry of a released CAT-Seg model, else None.

    Only used to print the officially reported numbers next to the measured ones; weights are not inspected.
    """
    from ..configuration_catseg import released_variant

    return released_variant(config)


def _percent(value: float | None, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.1f}"


def format_results_table(
    results: Sequence[BenchmarkResult], model_name: str, variant: str | None = None
) -> str:
    """The paper-style table (Markdown): the paper's six columns (plus any other benchmark evaluated), numbers in %
    with one decimal, `-` where not evaluated.

    Rows: the model's mIoU with the hub `mean_iou` semantics (primary), its detectron2-style mIoU (the paper's
    averaging), and, when `variant` is known, the official numbers reported by CAT-Seg's authors.
    """
    by_key = {result.benchmark.key: result for result in results}
    columns = list(PAPER_BENCHMARKS) + [key for key in by_key if key not in PAPER_BENCHMARKS]
    headers = ["model", "metric"] + [get_benchmark(key).display_name for key in columns]
    hub_row = [model_name, "mIoU (hub mean_iou)"]
    d2_row = [model_name, "mIoU (detectron2-style)"]
    for key in columns:
        result = by_key.get(key)
        if result is None:
            hub_row.append("-")
            d2_row.append("-")
            continue
        scores = result.scores()
        hub_row.append(_percent(_json_float(scores["hub"]["mean_iou"]), 100.0))
        d2_row.append(_percent(_json_float(scores["detectron2"]["mIoU"])))
    rows = [hub_row, d2_row]
    if variant in _VARIANT_LABELS:
        reported = [_VARIANT_LABELS[variant] + ", reported by the original authors", "mIoU (detectron2)"]
        for key in columns:
            reported.append(_percent(get_benchmark(key).reported_miou(variant)))
        rows.append(reported)
    widths = [max(len(str(row[i])) for row in [headers] + rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)) + " |"

    out = [line(headers), "|" + "|".join("-" * (width + 2) for width in widths) + "|"]
    out += [line(row) for row in rows]
    out.append(
        "hub mean_iou: Hugging Face evaluate mean_iou semantics (a class predicted but absent from every annotation "
        "counts as IoU 0); detectron2-style: mean over the classes present in the annotations, as in the paper."
    )
    if variant in _VARIANT_LABELS:
        out.append("Reported numbers: official CAT-Seg README (not measured here).")
    images = ", ".join(f"{r.benchmark.display_name}: {r.num_images}" for r in results)
    out.append(f"Images evaluated: {images}.")
    return "\n".join(out)


def write_results(
    output_dir: str | os.PathLike,
    results: Sequence[BenchmarkResult],
    run_info: Mapping[str, Any],
    variant: str | None = None,
    table: str | None = None,
) -> dict[str, Path]:
    """Write `results.json`, `<key>_per_class.csv` per benchmark and (when given) `results.md` (the table).

    Returns:
        The written paths, by name.
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    payload = dict(run_info)
    payload["units"] = {
        "mean_iou, mean_accuracy, overall_accuracy, per-class iou/accuracy": "fraction (0-1), hub mean_iou semantics",
        "detectron2, reported_miou": "percent, detectron2 SemSegEvaluator averaging (classes present in annotations)",
    }
    payload["benchmarks"] = {result.benchmark.key: result.summary(variant) for result in results}
    json_path = output / "results.json"
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    written["results.json"] = json_path
    for result in results:
        csv_path = output / f"{result.benchmark.key}_per_class.csv"
        rows = result.per_class_rows()
        with open(csv_path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0].keys()))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        written[csv_path.name] = csv_path
    if table is not None:
        md_path = output / "results.md"
        md_path.write_text(table + "\n", encoding="utf-8")
        written["results.md"] = md_path
    return written


# ==================================================================================================== whole run
