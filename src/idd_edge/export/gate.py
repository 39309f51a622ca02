"""`idd-edge gate`: measured accuracy of every deployable format against PyTorch fp32, and the verdict.

Per model the chain PyTorch fp32 -> ONNX fp32 -> ONNX int8 -> Hailo emulation (when a HEF was built) is
scored on the validation split with one evaluator per role (semantic: mIoU and per-class IoU with the
training metrics; YOLOv8-seg: mask mAP50-95 overall and per class with Ultralytics' validator). A format
passes when its overall score drops by at most `max_drop` points and no class present in validation
drops by more than `max_class_drop` points; a model passes when every gated format that
could be evaluated passes. Failed models stay out of the device bundle, and the report names the
classes that regressed. Results: `quantization.md` (for people), `quantization.json` (DVC metrics) and
per-class delta plots.

Every format is compared with PyTorch fp32, except the YOLO model's Hailo emulation. Ultralytics'
validator cannot run the emulator's ten raw head tensors, so `compile-hef` scores them with the host
scorer (`evaluate_yolo`: the device's decoder, masks at source resolution), which differs from the
validator systematically: the validator compares masks at prototype resolution (input / 4), which
costs small objects many IoU points (tests/test_evaluate_yolo.py measures both). A drop across two
scorers would mix that gap with the quantization loss, so the emulation is held to the exported ONNX
fp32 scored by the same host scorer on the same images (recorded by `compile-hef` as the emulation's
`baseline`; the report shows it beside the emulation score). The chain stays apples-to-apples:
PyTorch -> ONNX fp32 -> ONNX int8 by the validator, ONNX fp32 -> Hailo emulation by the host scorer.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idd_edge import atomic
from idd_edge.errors import InputError, StageError
from idd_edge.jsonfile import read_json_if_present
from idd_edge_runtime.formats import HEF, IMX500, ONNX_FP32, ONNX_INT8

log = logging.getLogger(__name__)

REFERENCE = "pytorch_fp32"
VALIDATOR = "Ultralytics validator (prototype-resolution masks)"
FORMATS = (ONNX_FP32.gate, ONNX_INT8.gate, HEF.gate, IMX500.gate)
FORMAT_TITLES = {REFERENCE: "PyTorch fp32", ONNX_FP32.gate: "ONNX fp32", ONNX_INT8.gate: "ONNX int8 (QDQ)",
                 HEF.gate: "Hailo emulation (SDK_QUANTIZED)", IMX500.gate: "IMX500 (MCT quantized)"}
#: Gated unless `gate.formats` says otherwise: the IMX500 package is scored and reported, but the bundle does
#: not ship it, so its failure does not keep a model's ONNX/HEF off the device.
GATED_BY_DEFAULT = (ONNX_FP32.gate, ONNX_INT8.gate, HEF.gate)


@dataclass(frozen=True)
class GateThresholds:
    """Allowed drops in points (percent units): overall score, and any class present in validation."""

    max_drop: float = 1.0
    max_class_drop: float = 5.0
    formats: tuple[str, ...] = GATED_BY_DEFAULT

    def __post_init__(self) -> None:
        unknown = set(self.formats) - set(FORMATS)
        if unknown:
            raise InputError(None, f"gate.formats: unknown format(s) {sorted(unknown)}; choose from {FORMATS}")
        if self.max_drop < 0 or self.max_class_drop < 0:
            raise InputError(None, "gate.max_drop and gate.max_class_drop must be >= 0")


def semantic_scores(scores: Mapping[str, Any]) -> dict[str, Any]:
    """Gate view of semantic evaluation scores: overall mIoU, per-class IoU, classes present in validation."""
    return {
        "metric": "miou",
        "value": scores["miou"],
        "per_class": dict(scores["per_class_iou"]),
        "present": [name for name, count in scores["gt_pixels"].items() if count > 0],
        "images": scores.get("images"),
    }


def yolo_scores(model_path: Path, data_yaml: Path, imgsz: int, work_dir: Path) -> dict[str, Any]:
    """Gate view of Ultralytics' own validator on a YOLOv8-seg model (.pt or .onnx, fp32 or INT8): mask
    mAP50-95 overall and per class, classes present = those with instances in the validation split.

    `rect=False` for every format: left alone, the validator feeds a .pt model rectangular batches
    padded to stride multiples plus half a stride (160 x 160 for a 128 x 128 frame at imgsz 128), while
    a static ONNX always gets the imgsz square, so PyTorch and ONNX would not see the same pixels."""
    from idd_edge.yolo.offline import import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO

    results = YOLO(str(model_path), task="segment").val(
        data=str(data_yaml), imgsz=imgsz, batch=1, rect=False, device="cpu", plots=False, verbose=False, save_json=False,
        project=str(work_dir), name=model_path.stem, exist_ok=True,
    )
    names = results.names
    present = [int(c) for c in results.seg.ap_class_index]
    return {
        "metric": "mask_map50_95",
        "value": float(results.seg.map),
        "per_class": {names[c]: (float(results.seg.maps[c]) if c in present else None) for c in sorted(names)},
        "present": [names[c] for c in present],
        "images": int(results.seen) if hasattr(results, "seen") else None,
        "box_map50_95": float(results.box.map),
        "mask_map50": float(results.seg.map50),
        "scorer": VALIDATOR,
    }


def compare_format(reference: Mapping[str, Any], candidate: Mapping[str, Any], thresholds: GateThresholds) -> dict[str, Any]:
    """Drops of `candidate` vs `reference` in points, the classes beyond the class threshold, the verdict."""
    if reference["value"] is None or candidate["value"] is None:
        raise StageError("cannot gate a format without an overall score (no labelled validation pixels?)")
    drop = 100.0 * (reference["value"] - candidate["value"])
    class_deltas: dict[str, float | None] = {}
    regressed: dict[str, float] = {}
    for name in reference["per_class"]:
        before, after = reference["per_class"].get(name), candidate["per_class"].get(name)
        delta = None if before is None or after is None else 100.0 * (after - before)
        class_deltas[name] = delta
        if name in reference["present"]:
            # A class present in validation whose IoU vanished (None) counts as a total loss.
            effective = delta if delta is not None else -100.0 * (before or 0.0)
            if -effective > thresholds.max_class_drop:
                regressed[name] = effective
    reasons = []
    if drop > thresholds.max_drop:
        reasons.append(f"{reference['metric']} drops {drop:.2f} points (max {thresholds.max_drop:g})")
    if regressed:
        listed = ", ".join(f"{name} {delta:+.1f}" for name, delta in sorted(regressed.items(), key=lambda kv: kv[1]))
        reasons.append(f"classes regressed by more than {thresholds.max_class_drop:g} points: {listed}")
    return {
        "value": candidate["value"],
        "drop_points": drop,
        "class_delta_points": class_deltas,
        "regressed_classes": regressed,
        "passed": not reasons,
        "reasons": reasons,
    }


def gate_model(name: str, evaluations: Mapping[str, Mapping[str, Any] | None], thresholds: GateThresholds,
               not_evaluated: Mapping[str, str] | None = None,
               baselines: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Verdict for one model. `evaluations` maps format -> gate scores (None = not evaluated, with the
    reason in `not_evaluated`); the reference (PyTorch fp32) must be present. A format with an entry in
    `baselines` is compared with that instead: the scores, by the format's own scorer, of the model it
    was derived from (the Hailo emulation of a YOLO model vs its ONNX fp32; see the module docstring)."""
    reference = evaluations.get(REFERENCE)
    if reference is None:
        raise StageError(f"{name}: no {REFERENCE} evaluation to compare against")
    formats: dict[str, Any] = {}
    skipped = dict(not_evaluated or {})
    for fmt in FORMATS:
        scores = evaluations.get(fmt)
        if scores is None:
            skipped.setdefault(fmt, "not evaluated")
            continue
        baseline = (baselines or {}).get(fmt)
        result = compare_format(baseline or reference, scores, thresholds)
        if baseline is not None:
            result["scorer"] = scores.get("scorer")
            result["baseline"] = {key: baseline.get(key) for key in
                                  ("format", "scorer", "value", "per_class", "box_map50_95", "mask_map50", "images")}
        result["gated"] = fmt in thresholds.formats
        formats[fmt] = result
    failed = [fmt for fmt, result in formats.items() if result["gated"] and not result["passed"]]
    messages = [f"{name} {FORMAT_TITLES[fmt]}: " + "; ".join(formats[fmt]["reasons"]) for fmt in failed]
    return {
        "name": name,
        "metric": reference["metric"],
        "reference": {"format": REFERENCE, "value": reference["value"], "per_class": reference["per_class"],
                      "present": reference["present"], "images": reference.get("images")},
        "formats": formats,
        "not_evaluated": {fmt: reason for fmt, reason in skipped.items() if fmt not in formats},
        "passed": not failed,
        "failed_formats": failed,
        "messages": messages,
    }


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}"


def _delta(value: float | None) -> str:
    return "n/a" if value is None else f"{round(value, 2) + 0.0:+.2f}"  # + 0.0: no "-0.00"


def render_report(results: Sequence[Mapping[str, Any]], thresholds: GateThresholds, plots: Mapping[str, str]) -> str:
    """Markdown: one summary table, then per model the per-class table and what failed."""
    lines = [
        "# Quantization accuracy gate",
        "",
        f"Reference: PyTorch fp32 on the validation split. A format fails when its overall score drops by more "
        f"than {thresholds.max_drop:g} points or any class present in validation drops by more than "
        f"{thresholds.max_class_drop:g} points. Gated formats: {', '.join(thresholds.formats)}.",
        "",
        "| model | metric | PyTorch fp32 | " + " | ".join(FORMAT_TITLES[f] for f in FORMATS) + " | gate |",
        "|---|---|---|" + "---|" * len(FORMATS) + "---|",
    ]
    for result in results:
        cells = []
        for fmt in FORMATS:
            entry = result["formats"].get(fmt)
            cells.append("not evaluated" if entry is None else
                         f"{_points(entry['value'])} ({_delta(-entry['drop_points'])}{'†' if 'baseline' in entry else ''})"
                         + ("" if entry["passed"] else " ✗"))
        lines.append(f"| {result['name']} | {result['metric']} | {_points(result['reference']['value'])} | "
                     + " | ".join(cells) + f" | {'pass' if result['passed'] else '**FAIL**'} |")
    if any("baseline" in entry for result in results for entry in result["formats"].values()):
        lines += ["", "† Δ against the model's ONNX fp32 scored by the same scorer as that format, not against "
                      "PyTorch fp32 (see the model's section)."]
    for result in results:
        lines += ["", f"## {result['name']}", ""]
        if result["messages"]:
            lines += [f"- **excluded from the bundle**: {message}" for message in result["messages"]] + [""]
        for fmt, reason in result["not_evaluated"].items():
            lines.append(f"- {FORMAT_TITLES[fmt]}: not evaluated ({reason})")
        for fmt, entry in result["formats"].items():
            if "baseline" in entry:
                baseline = entry["baseline"]
                lines.append(f"- {FORMAT_TITLES[fmt]}: Δ against {FORMAT_TITLES.get(baseline['format'], baseline['format'])} "
                             f"scored by the same scorer ({_points(baseline['value'])}; {entry['scorer']}), not "
                             f"against PyTorch fp32: the two scorers differ systematically (see gate.py)")
        evaluated = [fmt for fmt in FORMATS if fmt in result["formats"]]
        lines += ["", "| class | PyTorch fp32 | " + " | ".join(f"{FORMAT_TITLES[f]} Δ" for f in evaluated) + " |",
                  "|---|---|" + "---|" * len(evaluated)]
        for name, value in result["reference"]["per_class"].items():
            marks = []
            for fmt in evaluated:
                delta = result["formats"][fmt]["class_delta_points"].get(name)
                flag = " ✗" if name in result["formats"][fmt]["regressed_classes"] else ""
                marks.append(_delta(delta) + flag)
            present = "" if name in result["reference"]["present"] else " (absent from val)"
            lines.append(f"| {name}{present} | {_points(value)} | " + " | ".join(marks) + " |")
        for fmt in evaluated:
            if f"{result['name']}/{fmt}" in plots:
                lines += ["", f"![{result['name']} {fmt}]({plots[result['name'] + '/' + fmt]})"]
    return "\n".join(lines) + "\n"


def write_gate_outputs(results: Sequence[Mapping[str, Any]], thresholds: GateThresholds, report_path: Path,
                       metrics_path: Path, plot_dir: Path | None) -> dict[str, Any]:
    """quantization.json (DVC metrics), per-class delta plots and quantization.md."""
    plots: dict[str, str] = {}
    if plot_dir is not None:
        from idd_edge.seg.plots import plot_iou_diff

        for result in results:
            if result["metric"] != "miou":
                continue
            for fmt, entry in result["formats"].items():
                candidate = {name: None if delta is None or result["reference"]["per_class"][name] is None
                             else result["reference"]["per_class"][name] + delta / 100.0
                             for name, delta in entry["class_delta_points"].items()}
                path = plot_dir / f"{result['name']}_{fmt}.png"
                plot_iou_diff(result["reference"]["per_class"], candidate, path, labels=("PyTorch fp32", FORMAT_TITLES[fmt]))
                plots[f"{result['name']}/{fmt}"] = Path(_relative(path, report_path.parent)).as_posix()
    metrics = {
        "thresholds": {"max_drop_points": thresholds.max_drop, "max_class_drop_points": thresholds.max_class_drop,
                       "formats": list(thresholds.formats)},
        "models": {result["name"]: result for result in results},
        "passed": [result["name"] for result in results if result["passed"]],
        "failed": [result["name"] for result in results if not result["passed"]],
    }
    atomic.write_json(metrics_path, metrics)
    atomic.write_text(report_path, render_report(results, thresholds, plots))
    return metrics


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path, start)


# ---------------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("gate", help="accuracy gate: fp32 vs ONNX int8 vs Hailo emulation on validation")
    parser.add_argument("--params", default="params.yaml")
    parser.set_defaults(handler=_run)


def thresholds_from_config(cfg: Mapping[str, Any]) -> GateThresholds:
    return GateThresholds(max_drop=float(cfg["max_drop"]), max_class_drop=float(cfg["max_class_drop"]),
                          formats=tuple(cfg["formats"]))


def _run(args: argparse.Namespace) -> int:
    from idd_edge import config
    from idd_edge.export import preprocessing

    params = config.load_params(args.params)
    cfg = config.section(params, "gate", args.params)
    thresholds = thresholds_from_config(cfg)
    level = config.section(params, "label_level", args.params)
    val_dir = Path(config.section(params, "split.out", args.params)) / level["dir_name"] / "val"
    exports = preprocessing.load_exports(Path(config.section(params, "export.out", args.params)))
    quant_dir = Path(config.section(params, "quantize.out", args.params))
    hailo_dir = Path(config.section(params, "compile.out", args.params))
    imx500_dir = Path(config.section(params, "compile.imx500.out", args.params))
    results = []
    for record in exports:
        if record["role"] == "semantic":
            results.append(_gate_semantic(record, val_dir, level["name"], quant_dir, hailo_dir, imx500_dir,
                                          cfg["max_images"], thresholds))
        else:
            yolo_weights = Path(config.section(params, "yolo.train.out", args.params)) / "train" / "weights" / "best.pt"
            data_yaml = Path(config.section(params, "yolo.bridge.out", args.params)) / "data.yaml"
            results.append(_gate_instance(record, yolo_weights, data_yaml, quant_dir, hailo_dir, thresholds))
    if not results:
        raise StageError("no model to gate")
    metrics = write_gate_outputs(results, thresholds, Path(cfg["report"]), Path(cfg["metrics"]),
                                 Path(cfg["plots"]) if cfg["plots"] else None)
    for result in results:
        if result["passed"]:
            log.info("%s: passed the accuracy gate", result["name"])
        for message in result["messages"]:
            log.warning("gate failed, left out of the bundle: %s", message)
    if metrics["failed"] and cfg["fail_on_reject"]:
        raise StageError("models failed the accuracy gate: " + " | ".join(m for r in results for m in r["messages"]))
    return 0


def _gate_semantic(record: Mapping[str, Any], val_dir: Path, level: str, quant_dir: Path, hailo_dir: Path,
                   imx500_dir: Path, max_images: int | None, thresholds: GateThresholds) -> dict[str, Any]:
    """Score PyTorch fp32, ONNX fp32, ONNX int8 (and read the Hailo emulation and IMX500 scores) of one
    semantic model."""
    from idd_edge.export import evaluate, preprocessing
    from idd_edge.export.onnx_io import onnx_session
    from idd_edge_runtime.manifest import sha256_file
    from idd_edge.labels import LEVEL_CLASS_NAMES
    from idd_edge.seg import load_trained

    name = record["name"]
    dataset = evaluate.validation_dataset(val_dir, level, preprocessing.input_hw(record))
    preprocess = preprocessing.preprocess_fn(record)
    mean, std = record["normalization"]["mean"], record["normalization"]["std"]

    def score(predict: evaluate.Predictor, fmt: str) -> dict[str, Any]:
        raw = evaluate.evaluate_semantic(predict, dataset, preprocess, LEVEL_CLASS_NAMES[level], max_images, f"{name} {fmt}")
        return semantic_scores(raw)

    weights = Path(record["run_dir"]) / "model.pt"
    if record.get("weights_sha256") and sha256_file(weights) != record["weights_sha256"]:
        raise InputError(weights, f"changed since {name} was exported: re-run `idd-edge export --run {name}`")
    model, _info = load_trained(Path(record["run_dir"]))
    evaluations: dict[str, Any] = {REFERENCE: score(evaluate.torch_predictor(model, mean, std), REFERENCE)}
    evaluations[ONNX_FP32.gate] = score(evaluate.onnx_predictor(onnx_session(record["path"]), mean, std), ONNX_FP32.gate)
    not_evaluated: dict[str, str] = {}
    int8_path = quant_dir / name / ONNX_INT8.stage_file
    if int8_path.is_file():
        evaluations[ONNX_INT8.gate] = score(evaluate.onnx_predictor(onnx_session(int8_path), mean, std), ONNX_INT8.gate)
    else:
        not_evaluated[ONNX_INT8.gate] = f"{int8_path} not found (run `idd-edge quantize`)"
    compiled = read_json_if_present(hailo_dir / name / "compile.json")
    if compiled and compiled.get("built") and compiled.get("emulation"):
        evaluations[HEF.gate] = semantic_scores(compiled["emulation"])
    elif compiled and compiled.get("built"):
        not_evaluated[HEF.gate] = "HEF built but its emulation was not scored"
    else:
        not_evaluated[HEF.gate] = "no HEF: the Hailo DFC is not installed (see compile-hef status.json)"
    imx500_scores, reason = imx500_evaluation(imx500_dir / name / "compile.json")
    if imx500_scores is None:
        not_evaluated[IMX500.gate] = reason
    else:
        evaluations[IMX500.gate] = semantic_scores(imx500_scores)
    return gate_model(name, evaluations, thresholds, not_evaluated)


def imx500_evaluation(compile_json: Path) -> tuple[dict[str, Any] | None, str]:
    """`compile-imx500`'s validation scores of MCT's quantized model, or why there are none. Scored whether
    or not the converter then fit it on the sensor (the memory verdict is that stage's, not the gate's)."""
    compiled = read_json_if_present(compile_json)
    if compiled is None:
        return None, f"{compile_json} not found (run `idd-edge compile-imx500`)"
    if compiled.get("evaluation"):
        return compiled["evaluation"], ""
    # The report already says "IMX500 ...: not evaluated (<reason>)": the reason alone, not a second prefix.
    return None, compiled.get("reason") or f"{compile_json.name} records no evaluation"


def _gate_instance(record: Mapping[str, Any], weights: Path, data_yaml: Path, quant_dir: Path, hailo_dir: Path,
                   thresholds: GateThresholds) -> dict[str, Any]:
    """Score the YOLO model's PyTorch weights, fp32 ONNX and INT8 ONNX with Ultralytics' validator; read the
    Hailo emulation's scores (and their ONNX fp32 baseline, same host scorer) from `compile-hef`."""
    import tempfile

    from idd_edge.export.preprocessing import input_hw

    for path, stage in ((weights, "yolo-train"), (data_yaml, "yolo-bridge")):
        if not path.is_file():
            raise InputError(path, f"not found; run `idd-edge {stage}` first")
    name, imgsz = record["name"], input_hw(record)[0]
    not_evaluated: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="yolo-gate-") as tmp:
        evaluations: dict[str, Any] = {REFERENCE: yolo_scores(weights, data_yaml, imgsz, Path(tmp)),
                                       ONNX_FP32.gate: yolo_scores(Path(record["path"]), data_yaml, imgsz, Path(tmp))}
        int8_path = quant_dir / name / ONNX_INT8.stage_file
        if int8_path.is_file():
            evaluations[ONNX_INT8.gate] = yolo_scores(int8_path, data_yaml, imgsz, Path(tmp))
        else:
            not_evaluated[ONNX_INT8.gate] = f"{int8_path} not found (run `idd-edge quantize`)"
    compile_json = hailo_dir / name / "compile.json"
    compiled = read_json_if_present(compile_json)
    baselines: dict[str, Any] = {}
    if compiled and compiled.get("built") and compiled.get("emulation"):
        emulation = compiled["emulation"]
        if not emulation.get("baseline"):
            raise InputError(compile_json, "YOLO emulation scores without their ONNX fp32 baseline (same scorer); "
                                           "re-run `idd-edge compile-hef`")
        evaluations[HEF.gate] = emulation
        baselines[HEF.gate] = emulation["baseline"]
    elif compiled and compiled.get("built"):
        not_evaluated[HEF.gate] = "HEF built but its emulation was not scored"
    else:
        not_evaluated[HEF.gate] = "no HEF: the Hailo DFC is not installed (see compile-hef status.json)"
    not_evaluated[IMX500.gate] = "the IMX500 flow takes the semantic students only (see compile-imx500 status.json)"
    return gate_model(name, evaluations, thresholds, not_evaluated, baselines)


