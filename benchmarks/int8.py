"""Benchmark: ONNX Runtime latency of the fp32 and INT8 (QDQ) student models on this CPU, plus the mIoU delta.

    .venv/bin/python benchmarks/int8.py                       # the pipeline's models (artifacts/export, artifacts/quantize)
    .venv/bin/python benchmarks/int8.py --scratch --size 512  # no pipeline run yet: the three student
                                                              # architectures, random weights, exported and
                                                              # quantized here (latency does not depend on weights)

For each student: median latency per frame (batch 1; wall clock and process CPU time) of the fp32 ONNX and
of its INT8 model in the same process, same session options and thread count, after warm-up, measured
alternately so load changes hit both alike; the ratio fp32 / int8 (> 1: INT8 is faster); and, when the
accuracy gate has run, the INT8 mIoU change vs PyTorch fp32 from `artifacts/reports/quantization.json`
(the same evaluator as training). Prints a table; `--json` saves it (`--json artifacts/reports/latency.json`:
the CPU ms/frame column of `idd-edge compare`). Every exported semantic model is measured, Ultralytics'
YOLO26n-sem (`ultralytics_sem`) next to the students.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from idd_edge.export.onnx_io import onnx_session, run_single

STUDENTS = {
    "mnv4s_lraspp": {"arch": "lraspp", "backbone": "mobilenetv4_conv_small", "pretrained": False, "head_channels": 128},
    "mnv4s_deeplabv3plus": {"arch": "deeplabv3plus", "backbone": "mobilenetv4_conv_small", "pretrained": False,
                            "encoder_depth": 4, "encoder_output_stride": 16, "decoder_channels": 256,
                            "decoder_atrous_rates": [12, 24, 36]},
    "mnv4l_deeplabv3plus": {"arch": "deeplabv3plus", "backbone": "mobilenetv4_conv_large", "pretrained": False,
                            "encoder_depth": 4, "encoder_output_stride": 16, "decoder_channels": 256,
                            "decoder_atrous_rates": [12, 24, 36]},
}
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def paired_latency(fp32: Path, int8: Path, shape: tuple[int, ...], runs: int, warmup: int, threads: int) -> dict[str, float]:
    """Median milliseconds per batch-1 inference of both models, measured alternately (fp32, int8, fp32,
    ...) so that load changes on a shared machine hit both alike; wall clock and process CPU time."""
    sessions = {"fp32": onnx_session(fp32, threads=threads), "int8": onnx_session(int8, threads=threads)}
    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for session in sessions.values():
        for _ in range(warmup):
            run_single(session, batch)
    wall: dict[str, list[float]] = {"fp32": [], "int8": []}
    cpu: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(runs):
        for name, session in sessions.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            run_single(session, batch)
            wall[name].append((time.perf_counter() - start_wall) * 1000.0)
            cpu[name].append((time.process_time() - start_cpu) * 1000.0)
    return {f"{kind}_{name}_ms": statistics.median(values[name])
            for kind, values in (("wall", wall), ("cpu", cpu)) for name in ("fp32", "int8")}


def scratch_models(work: Path, size: int, classes: int, calib_images: int, activation_type: str = "QInt8",
                   weight_type: str = "QInt8") -> dict[str, tuple[Path, Path]]:
    """Export and quantize the three student architectures (random weights) into `work`."""
    from idd_edge.export.onnx_export import export_to_onnx
    from idd_edge.export.quantize import quantize_model
    from idd_edge.seg.models import build_model, set_export_mode

    calibration = np.random.default_rng(0).integers(0, 256, size=(calib_images, size, size, 3)).astype(np.float32)
    models = {}
    for name, cfg in STUDENTS.items():
        print(f"exporting + quantizing {name} at {size}x{size} (random weights) ...", flush=True)
        net = set_export_mode(build_model(cfg, classes, (size, size))).eval()
        fp32 = work / f"{name}.onnx"
        fp32.write_bytes(export_to_onnx(net, (size, size), opset=13).SerializeToString())
        int8 = work / f"{name}_int8.onnx"
        quantize_model(fp32, calibration, int8, mean=MEAN, std=STD, activation_type=activation_type, weight_type=weight_type)
        models[name] = (fp32, int8)
    return models


def pipeline_models(export_dir: Path, quantize_dir: Path) -> dict[str, tuple[Path, Path]]:
    models = {}
    for record_path in sorted(export_dir.glob("*/export.json")):
        record = json.loads(record_path.read_text())
        int8 = quantize_dir / record["name"] / "model_int8.onnx"
        if record.get("role") == "semantic" and int8.is_file():
            models[record["name"]] = (record_path.parent / record["file"], int8)
    return models


def input_shape(model_path: Path) -> tuple[int, ...]:
    import onnx

    dims = onnx.load(str(model_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return tuple(int(d.dim_value) for d in dims)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=Path("artifacts/export"))
    parser.add_argument("--quantize", type=Path, default=Path("artifacts/quantize"))
    parser.add_argument("--gate", type=Path, default=Path("artifacts/reports/quantization.json"))
    parser.add_argument("--scratch", action="store_true", help="benchmark freshly built students (random weights)")
    parser.add_argument("--size", type=int, default=512, help="input size with --scratch (the seed deploys 512)")
    parser.add_argument("--classes", type=int, default=16, help="classes with --scratch (level2: 16)")
    parser.add_argument("--calib-images", type=int, default=8, help="calibration images with --scratch")
    parser.add_argument("--activation-type", default="QInt8", help="with --scratch: QInt8 | QUInt8")
    parser.add_argument("--weight-type", default="QInt8", help="with --scratch: QInt8 | QUInt8")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (both formats)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="int8-bench-") as tmp:
        if args.scratch:
            models = scratch_models(Path(tmp), args.size, args.classes, args.calib_images, args.activation_type, args.weight_type)
        else:
            models = pipeline_models(args.export, args.quantize)
            if not models:
                raise SystemExit(f"no exported + quantized models under {args.export} / {args.quantize}: run the "
                                 "pipeline (`dvc repro quantize`) or use --scratch")
        gate = json.loads(args.gate.read_text())["models"] if args.gate.is_file() and not args.scratch else {}
        rows = []
        for name, (fp32, int8) in models.items():
            shape = input_shape(fp32)
            times = paired_latency(fp32, int8, shape, args.runs, args.warmup, args.threads)
            int8_gate = gate.get(name, {}).get("formats", {}).get("onnx_int8")
            rows.append({
                "model": name, "input": list(shape), **times,
                "wall_ratio": times["wall_fp32_ms"] / times["wall_int8_ms"],
                "cpu_ratio": times["cpu_fp32_ms"] / times["cpu_int8_ms"],
                "fp32_mb": fp32.stat().st_size / 1e6, "int8_mb": int8.stat().st_size / 1e6,
                "int8_miou_delta_points": None if int8_gate is None else -int8_gate["drop_points"],
            })
    print(f"\nONNX Runtime CPU, batch 1, {args.threads} threads, median of {args.runs} alternating runs; "
          "ratio = fp32 / int8 (> 1: INT8 faster); CPU time is robust on a shared machine")
    print(f"{'model':22} {'input':>9} {'wall fp32':>10} {'wall int8':>10} {'ratio':>6} {'cpu fp32':>9} {'cpu int8':>9} "
          f"{'ratio':>6} {'MB fp32':>8} {'MB int8':>8} {'int8 ΔmIoU':>11}")
    for row in rows:
        delta = "n/a" if row["int8_miou_delta_points"] is None else f"{row['int8_miou_delta_points']:+.2f} pt"
        size = "x".join(str(v) for v in row["input"][2:])
        print(f"{row['model']:22} {size:>9} {row['wall_fp32_ms']:8.1f}ms {row['wall_int8_ms']:8.1f}ms {row['wall_ratio']:6.2f} "
              f"{row['cpu_fp32_ms']:7.1f}ms {row['cpu_int8_ms']:7.1f}ms {row['cpu_ratio']:6.2f} "
              f"{row['fp32_mb']:8.2f} {row['int8_mb']:8.2f} {delta:>11}")
    if args.json:  # `idd-edge compare` reads models.<run>.wall_fp32_ms from it (CPU ms/frame)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {"threads": args.threads, "runs": args.runs, "models": {row["model"]: row for row in rows}}
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
