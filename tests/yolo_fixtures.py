"""Small YOLOv8n-seg models for the yolo tests, built once per test session (shared by several modules).

An untrained model's head emits near-constant boxes and tied scores (its biases dominate), which would
make detection-by-detection comparisons depend on tie-breaking. The head's last convolutions are
therefore perturbed with fixed random weights: detections then vary in size, place, class and mask,
which is what a parity test needs. Post-processing parity does not care whether the model is good.

Scoring tests do care: `build_scoring_model` is a variant whose scores depend on the image, and
`pseudo_labelled_split` labels frames with its own confident predictions, so its mAP is well above
zero. `hailo_layout_predictor` computes the ten split tensors a HEF returns with ONNX Runtime.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path

import numpy as np

from idd_edge.yolo.offline import import_ultralytics

NUM_CLASSES = 5
EXPORT_IMGSZ = 128


def build_model(num_classes: int = NUM_CLASSES, seed: int = 0):
    """A YOLOv8n-seg SegmentationModel (eval mode) with a perturbed head."""
    import_ultralytics()
    import torch
    from ultralytics.nn.tasks import SegmentationModel

    torch.manual_seed(seed)
    model = SegmentationModel("yolov8n-seg.yaml", nc=num_classes, verbose=False)
    head = model.model[-1]
    with torch.no_grad():
        for branch in (head.cv2, head.cv3, head.cv4):
            for sequence in branch:
                sequence[-1].weight.normal_(0.0, 0.05)
        for sequence in head.cv3:
            sequence[-1].bias.uniform_(-6.0, 1.0)
        for sequence in head.cv2:
            sequence[-1].bias.normal_(0.0, 1.0)
    model.names = {i: f"class_{i}" for i in range(num_classes)}
    return model.eval()


def save_checkpoint(model, path: Path) -> Path:
    """Save `model` the way Ultralytics' trainer saves best.pt (loadable with weights_only=True)."""
    import torch
    from ultralytics import __version__

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"epoch": -1, "model": deepcopy(model).half(), "ema": None, "updates": None, "optimizer": None,
         "train_args": {"task": "segment", "imgsz": EXPORT_IMGSZ}, "version": __version__},
        path,
    )
    return path


@functools.cache
def exported_model(base: Path) -> tuple[Path, Path]:
    """(checkpoint, export directory) of the perturbed model, exported once per session under `base`."""
    from idd_edge.yolo.export import ExportSettings, export

    checkpoint = save_checkpoint(build_model(), base / "perturbed.pt")
    out = base / "export"
    settings = ExportSettings(imgsz=EXPORT_IMGSZ, opset=11, parity_tolerance=1e-4)
    export(checkpoint, out, settings, {"conf_threshold": 0.5})
    return checkpoint, out


def street_image(height: int = 90, width: int = 160, seed: int = 0) -> np.ndarray:
    """A smooth BGR test frame (not square, so the letterbox pads)."""
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 4)


def build_scoring_model(num_classes: int = NUM_CLASSES, seed: int = 0):
    """A YOLOv8n-seg whose scores depend on the image, for tests that need a mAP well above zero.

    `build_model`'s head outputs are its biases only: an untrained network's activations vanish layer
    by layer (~1e-7 at the head), so every anchor of a class gets the same score and a ranking metric
    is decided by ties. Here the batch-norm statistics are re-estimated on a few frames (activations
    back to unit scale, a standard re-calibration), and the head's last convolutions get random weights
    large enough that class scores and box sizes vary with the content. The features stay random: good
    for scoring against labels made from the model's own confident predictions, nothing else.
    """
    import_ultralytics()
    import torch
    from ultralytics.nn.tasks import SegmentationModel

    torch.manual_seed(seed)
    model = SegmentationModel("yolov8n-seg.yaml", nc=num_classes, verbose=False)
    frames = np.stack([street_image(EXPORT_IMGSZ, EXPORT_IMGSZ, seed=100 + i)[..., ::-1] for i in range(8)])
    batch = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(batch)
    model.eval()
    head = model.model[-1]
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for branch, weight_std in ((head.cv3, 0.2), (head.cv2, 0.3), (head.cv4, 0.05)):
            for sequence in branch:
                sequence[-1].weight.copy_(torch.randn(sequence[-1].weight.shape, generator=generator) * weight_std)
        for sequence in head.cv3:
            sequence[-1].bias.fill_(-5.0)  # background ~0.7 %: few anchors pass a threshold, as in a trained model
        for sequence in head.cv2:
            # DFL bins (4 sides x 16) favour short distances, so most boxes fit inside the frame
            sequence[-1].bias.copy_(-0.6 * torch.arange(16, dtype=torch.float32).repeat(4))
    model.names = {i: f"class_{i}" for i in range(num_classes)}
    return model


@functools.cache
def exported_scoring_model(base: Path) -> tuple[Path, Path]:
    """(checkpoint, export directory) of `build_scoring_model`, exported once per session under `base`."""
    from idd_edge.yolo.export import ExportSettings, export

    checkpoint = save_checkpoint(build_scoring_model(), base / "scoring.pt")
    out = base / "scoring_export"
    # Unit-scale activations through every layer: float32 rounding reaches ~1e-4 of the output range.
    export(checkpoint, out, ExportSettings(imgsz=EXPORT_IMGSZ, opset=11, parity_tolerance=1e-3), {"conf_threshold": 0.5})
    return checkpoint, out


#: The class-score convs of a YOLOv8-seg head (conv45/61/74 in the seed's HEF): the model script's
#: `change_output_activation(..., sigmoid)` makes the chip return their sigmoid.
CLASS_CONV = re.compile(r"/cv3\.\d/")


@functools.cache
def _end_node_session(onnx_path: Path, end_nodes: tuple[str, ...]):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    produced = {node.name: node.output[0] for node in model.graph.node}
    missing = [name for name in end_nodes if name not in produced]
    if missing:
        raise ValueError(f"{onnx_path}: no nodes named {missing}")
    existing = {output.name for output in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(produced[name], onnx.TensorProto.FLOAT, None)
                              for name in end_nodes if produced[name] not in existing)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session, [produced[name] for name in end_nodes]


def end_node_outputs(onnx_path: Path, end_nodes: Sequence[str], batch_nchw: np.ndarray) -> list[np.ndarray]:
    """ONNX Runtime's outputs of the nodes a Hailo parse ends at (NCHW, in `end_nodes` order)."""
    session, names = _end_node_session(Path(onnx_path), tuple(end_nodes))
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(batch_nchw, dtype=np.float32)}
    return session.run(names, feed)


def hailo_layout_predictor(onnx_path: Path, end_nodes: Sequence[str]):
    """NHWC raw 0-255 batch -> the ten NHWC tensors a HEF of this model returns (a list, as the DFC's
    `infer`), computed in float by ONNX Runtime: the head convs and prototypes, class scores sigmoided."""

    def predict(batch: np.ndarray) -> list[np.ndarray]:
        outputs = end_node_outputs(onnx_path, end_nodes, batch.transpose(0, 3, 1, 2) / np.float32(255.0))
        return [(1.0 / (1.0 + np.exp(-out)) if CLASS_CONV.search(node) else out).transpose(0, 2, 3, 1)
                for node, out in zip(end_nodes, outputs)]

    return predict


def pseudo_labelled_split(root: Path, onnx_path: Path, shapes: Sequence[tuple[int, int]],
                          max_labels: int = 10, min_conf: float = 0.5) -> Path:
    """An Ultralytics dataset (val only) of street frames labelled with the model's own confident
    predictions; returns its data.yaml.

    Labels are made like the bridge's: one polygon per visible instance (`yolo.polygons`), no two
    instances sharing pixels. A detection becomes a label when its score is at least `min_conf`, its box
    is not cut by the frame (clipping conventions would then decide the score) and at most a tenth of its
    mask is already labelled; the rest of the model's detections score as false positives.
    """
    import cv2
    import yaml

    from idd_edge.export.evaluate_yolo import onnx_predictor
    from idd_edge.export.onnx_io import onnx_session
    from idd_edge.yolo.polygons import mask_to_polygon
    from idd_edge_runtime import yolo_postprocess as yp
    from idd_edge_runtime.letterbox import letterbox

    predict = onnx_predictor(onnx_session(onnx_path))
    config = yp.PostprocessConfig(num_classes=NUM_CLASSES, conf_threshold=min_conf, iou_threshold=0.5)
    for index, (height, width) in enumerate(shapes):
        frame = street_image(height, width, seed=index)
        image_path = root / "images" / "val" / f"frame{index}.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image_path), frame)
        canvas, geometry = letterbox(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), EXPORT_IMGSZ)
        detections = yp.decode_onnx(*predict(canvas[None].astype(np.float32)), geometry, config)
        labelled = np.zeros((height, width), dtype=bool)
        lines = []
        for class_id, box, mask in zip(detections.class_ids, detections.boxes, detections.full_masks()):
            inside = box[0] >= 1 and box[1] >= 1 and box[2] <= width - 1 and box[3] <= height - 1
            if len(lines) == max_labels or not inside or (mask & labelled).sum() > 0.1 * mask.sum():
                continue
            mask &= ~labelled
            labelled |= mask
            polygon = mask_to_polygon(mask) if mask.sum() >= 10 else None
            if polygon is not None:
                coords = (polygon / (width, height)).clip(0.0, 1.0).ravel()
                lines.append(" ".join([str(int(class_id)), *(f"{v:.6f}" for v in coords)]))
        label_path = root / "labels" / "val" / f"frame{index}.txt"
        label_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.write_text("".join(f"{line}\n" for line in lines))
    data_yaml = root / "data.yaml"
    names = {i: f"class_{i}" for i in range(NUM_CLASSES)}
    data_yaml.write_text(yaml.safe_dump({"train": "images/val", "val": "images/val", "names": names}))
    return data_yaml
