"""`idd-edge yolo-export`: best.pt -> a static ONNX graph for ONNX Runtime and the Hailo compiler.

Writes OUT/yolov8n_seg.onnx and OUT/yolov8n_seg.json (the directory is replaced atomically).

Ultralytics' own exporter (the graph layout the Hailo Model Zoo recipe expects) at a fixed input of
imgsz x imgsz, batch 1, no NMS in the graph, then onnxsim. Outputs: `output0` (1, 4 + nc + 32, N) and
`output1` prototypes (1, 32, imgsz/4, imgsz/4); see idd_edge_runtime.yolo_postprocess. The export
fails unless ONNX Runtime reproduces PyTorch on a test frame. The JSON sidecar records
the input contract, class names, post-processing thresholds, parity figures and the per-stride head
nodes that a Hailo parse ends at.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idd_edge import atomic, config
from idd_edge.errors import InputError, StageError
from idd_edge.yolo.offline import import_ultralytics

log = logging.getLogger(__name__)

#: Head convs a Hailo parse ends at (boxes cv2, classes cv3, mask coefficients cv4 per stride) + protos.
ONNX_NAME = "yolov8n_seg.onnx"
SIDECAR_NAME = "yolov8n_seg.json"
HAILO_END_NODE = re.compile(r"^/model\.\d+/(cv[234]\.\d/cv[234]\.\d\.2/Conv|proto/cv3/act/Mul)$")


@dataclass(frozen=True)
class ExportSettings:
    imgsz: int
    opset: int
    parity_tolerance: float


def export(weights: Path, out: Path, settings: ExportSettings, postprocess: dict) -> dict:
    """Export `weights` into the directory `out` (ONNX + JSON sidecar); return the sidecar document."""
    if not weights.is_file():
        raise InputError(weights, "trained weights not found; run `idd-edge yolo-train` first")
    if settings.imgsz % 32:
        raise InputError(None, f"yolo.export.imgsz must be a multiple of 32, got {settings.imgsz}")
    import_ultralytics()
    import onnx
    import onnxsim
    from ultralytics import YOLO

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".yolo-export-") as tmp:
        # Ultralytics writes the ONNX beside the weights: export a copy, never into the training run.
        local = Path(tmp) / "model.pt"
        shutil.copyfile(weights, local)
        model = YOLO(str(local), task="segment")
        exported = model.export(
            format="onnx", imgsz=settings.imgsz, opset=settings.opset, simplify=False, dynamic=False,
            nms=False, half=False, batch=1, device="cpu", verbose=False,
        )
        graph = onnx.load(exported)
    simplified, ok = onnxsim.simplify(graph)
    if not ok:
        raise StageError(f"onnxsim could not validate the simplified graph of {weights}")
    onnx.checker.check_model(simplified)
    data = simplified.SerializeToString()
    parity = check_parity(model.model, data, settings.imgsz)
    worst = max(parity.values())
    if worst > settings.parity_tolerance:
        raise StageError(
            f"ONNX Runtime differs from PyTorch by {worst:.2e} (relative) > "
            f"yolo.export.parity_tolerance {settings.parity_tolerance}"
        )
    names = model.model.names
    sidecar = {
        "model": "yolov8n-seg",
        "weights": str(weights),
        "onnx": ONNX_NAME,
        "opset": settings.opset,
        "input": {
            "name": simplified.graph.input[0].name,
            "shape": [1, 3, settings.imgsz, settings.imgsz],
            "layout": "NCHW",
            "color": "RGB",
            "scale": "1/255",
            "letterbox_pad_value": 114,
        },
        "outputs": {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in simplified.graph.output},
        "classes": [names[i] for i in sorted(names)],
        "postprocess": {**postprocess, "reg_max": 16, "mask_dim": 32},
        "parity_max_relative_diff": parity,
        "hailo_end_nodes": sorted(node.name for node in simplified.graph.node if HAILO_END_NODE.match(node.name)),
    }
    staging = out.with_name(f".{out.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    atomic.write_bytes(staging / ONNX_NAME, data)
    atomic.write_json(staging / SIDECAR_NAME, sidecar)
    atomic.replace_dir(staging, out)
    return sidecar


def check_parity(torch_model, onnx_bytes: bytes, imgsz: int, seed: int = 0) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| per output, relative to the output's largest magnitude.

    The test frame is smooth noise (blurred), not flat grey, so every head produces varied values.
    """
    import cv2
    import torch

    from idd_edge.export.onnx_io import onnx_session

    rng = np.random.default_rng(seed)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (imgsz, imgsz, 3), dtype=np.uint8), (0, 0), 3)
    tensor = (frame.transpose(2, 0, 1)[None].astype(np.float32) / 255.0).copy()
    session = onnx_session(onnx_bytes)
    values = session.run(None, {session.get_inputs()[0].name: tensor})
    onnx_outputs = dict(zip((o.name for o in session.get_outputs()), values))
    model = torch_model.float().eval()
    with torch.no_grad():
        (prediction, protos), _ = model(torch.from_numpy(tensor))
    reference = {"output0": prediction.numpy(), "output1": protos.numpy()}
    if onnx_outputs.keys() != reference.keys():
        raise StageError(f"unexpected ONNX outputs {sorted(onnx_outputs)}; expected output0 and output1")
    return {
        name: float(np.abs(onnx_outputs[name] - ref).max() / max(float(np.abs(ref).max()), 1e-12))
        for name, ref in reference.items()
    }


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("yolo-export", help="YOLOv8n-seg best.pt -> static ONNX (+ JSON sidecar)")
    parser.add_argument("weights", type=Path, help="trained weights, e.g. artifacts/yolo/train/weights/best.pt")
    parser.add_argument("out", type=Path, help=f"directory to write ({ONNX_NAME}, {SIDECAR_NAME})")
    parser.add_argument("--params", type=Path, default=config.PARAMS_FILE)
    parser.set_defaults(handler=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    params = config.load_params(args.params)
    node = config.section(params, "yolo.export", args.params)
    settings = ExportSettings(int(node["imgsz"]), int(node["opset"]), float(node["parity_tolerance"]))
    sidecar = export(args.weights, args.out, settings, dict(config.section(params, "yolo.postprocess", args.params)))
    log.info(
        "wrote %s (opset %d, input %s, outputs %s); ONNX Runtime vs PyTorch max relative diff %s",
        args.out / ONNX_NAME, settings.opset, sidecar["input"]["shape"], sidecar["outputs"],
        {k: f"{v:.1e}" for k, v in sidecar["parity_max_relative_diff"].items()},
    )
    return 0
