"""YOLOv8n-seg instance segmentation branch: IDD instances -> Ultralytics dataset -> training -> ONNX.

Host post-processing (used by evaluation here and by the device) lives in
`idd_edge_runtime.yolo_postprocess`; Ultralytics is always imported through `offline.import_ultralytics`.
"""
