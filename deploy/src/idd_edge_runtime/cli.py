"""`idd-edge-runtime`: run a bundle on a video, a camera or the Pi camera; GUI, headless or benchmark.

    idd-edge-runtime --bundle ~/idd-edge/current                      # GUI (PyQt5)
    idd-edge-runtime --headless --source clip.mp4 --output out.mp4    # annotated video, no display
    idd-edge-runtime --headless --source /dev/video0 --privacy        # live, person/rider blurred
    idd-edge-runtime --benchmark clip.mp4 200                         # ms/frame and FPS per model
    idd-edge-runtime --serve --source picam                           # live page + HTTP API on 127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import List, Optional, Sequence

from idd_edge_runtime import __version__
from idd_edge_runtime.backends import BackendError
from idd_edge_runtime.engine import Engine, SettingsBox
from idd_edge_runtime.loader import BACKENDS, load_runtime
from idd_edge_runtime.manifest import ManifestError
from idd_edge_runtime.render import PRIVATE_WORDS
from idd_edge_runtime.sources import SourceError, discover_sources, open_source

log = logging.getLogger("idd_edge_runtime")

#: Where `idd-edge ship` puts the active release on the device (DEST/current, DEST defaulting to ~/idd-edge).
DEFAULT_BUNDLE = os.environ.get("IDD_EDGE_BUNDLE", os.path.expanduser("~/idd-edge/current"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idd-edge-runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle directory (default: $IDD_EDGE_BUNDLE or ~/idd-edge/current)")
    parser.add_argument("--source", help="video file, /dev/videoN, camera index N, or 'picam'")
    parser.add_argument("--width", type=int, help="camera capture width")
    parser.add_argument("--height", type=int, help="camera capture height")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: HEF on a Hailo device, else ONNX Runtime")
    parser.add_argument("--model", help="semantic model to start with (default: the first in the bundle)")
    parser.add_argument("--no-semantic", action="store_true", help="start without the semantic overlay")
    parser.add_argument("--no-yolo", action="store_true", help="start with the YOLO overlay off")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity 0..1 (default 0.5)")
    parser.add_argument("--privacy", action="store_true", help="blur person and rider instances")
    parser.add_argument("--privacy-classes", default=",".join(PRIVATE_WORDS), help="words of class names to blur (default person,rider)")
    parser.add_argument("--no-tracking", action="store_true", help="YOLO instances without track ids (colour by class)")
    parser.add_argument("--smooth", type=int, default=0, metavar="FRAMES", help="semantic label persistence: a pixel changes class after FRAMES frames in a row (0 = off)")
    parser.add_argument("--serve", action="store_true", help="no window: run --source and serve the live page and HTTP API")
    parser.add_argument("--host", default="127.0.0.1", help="--serve: address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="--serve: port (default 8080; 0 = any free port)")
    parser.add_argument("--token", default=os.environ.get("IDD_EDGE_TOKEN"), help="--serve: required by every request (default $IDD_EDGE_TOKEN); needed off loopback")
    parser.add_argument("--loop", action="store_true", help="--serve with a video file: play it over and over")
    parser.add_argument("--headless", action="store_true", help="no window: process --source, optionally write --output")
    parser.add_argument("--output", help="annotated video to write in headless mode (.mp4 or .avi)")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = all cores)")
    parser.add_argument("--list-sources", action="store_true", help="list cameras and exit")
    parser.add_argument("--benchmark", nargs=2, metavar=("VIDEO", "FRAMES"), help="benchmark every model on FRAMES frames of VIDEO")
    parser.add_argument("--benchmark-json", default="runtime_benchmark.json", help="where --benchmark writes its JSON")
    parser.add_argument("--no-verify", action="store_true", help="skip the model checksum verification at load")
    parser.add_argument("--allow-failed-gate", action="store_true", help="load models whose accuracy gate failed")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.list_sources:
        found = discover_sources()
        for spec, description in found:
            print(f"{spec}\t{description}")
        if not found:
            print("no camera found (video files work with --source PATH)")
        return 0
    if not 0.0 <= args.alpha <= 1.0:
        print(f"idd-edge-runtime: error: --alpha must be within 0..1, got {args.alpha}", file=sys.stderr)
        return 2
    if not 0 <= args.smooth <= 255:
        print(f"idd-edge-runtime: error: --smooth must be 0..255 frames, got {args.smooth}", file=sys.stderr)
        return 2
    if args.serve and not args.source:
        print("idd-edge-runtime: error: --serve needs --source", file=sys.stderr)
        return 2
    try:
        loaded = load_runtime(
            args.bundle, backend=args.backend, verify=not args.no_verify, onnx_threads=args.threads, allow_failed_gate=args.allow_failed_gate
        )
    except (ManifestError, BackendError, ValueError) as exc:
        print(f"idd-edge-runtime: error: {exc}", file=sys.stderr)
        return 2
    try:
        log.info("%s", loaded.describe())
        engine = Engine(loaded, private_words=[w.strip() for w in args.privacy_classes.split(",") if w.strip()])
        changes = {"alpha": args.alpha, "privacy": args.privacy, "tracking": not args.no_tracking, "smoothing": args.smooth}
        if args.model:
            if args.model not in engine.semantic_names:
                print(f"idd-edge-runtime: error: no semantic model {args.model!r}; loaded: {engine.semantic_names}", file=sys.stderr)
                return 2
            changes["semantic"] = args.model
        if args.no_semantic:
            changes["semantic"] = None
        if args.no_yolo:
            changes["yolo"] = False
        box = SettingsBox(engine.default_settings())
        box.update(**changes)
        if args.benchmark:
            return _benchmark(engine, args.benchmark[0], args.benchmark[1], args.benchmark_json)
        if args.headless:
            return _headless(engine, box, args)
        if args.serve:
            try:
                from idd_edge_runtime.server import serve  # Flask only when serving
            except ImportError as exc:
                print(
                    f"idd-edge-runtime: error: --serve needs Flask ({exc}): `sudo apt install python3-flask` on the Pi, "
                    "or `pip install 'idd-edge-runtime[serve]'`",
                    file=sys.stderr,
                )
                return 2

            source = open_source(args.source, args.width, args.height, realtime=True, loop=args.loop)
            try:
                return serve(engine, box, source, args.host, args.port, args.token or None, args.max_frames)
            finally:
                source.close()
        from idd_edge_runtime.gui import run_gui  # PyQt5 only when a window is wanted

        return run_gui(engine, box, args.source, width=args.width, height=args.height)
    except SourceError as exc:
        print(f"idd-edge-runtime: error: {exc}", file=sys.stderr)
        return 2
    finally:
        loaded.close()


def _benchmark(engine: Engine, video: str, frames_text: str, json_path: str) -> int:
    from idd_edge_runtime import benchmark

    try:
        count = int(frames_text)
    except ValueError:
        print(f"idd-edge-runtime: error: FRAMES must be an integer, got {frames_text!r}", file=sys.stderr)
        return 2
    frames = benchmark.read_frames(video, count)
    print(f"benchmark: {len(frames)} frames of {video} ({frames[0].shape[1]}x{frames[0].shape[0]})")
    rows = benchmark.run_benchmark(engine, frames)
    print(benchmark.format_table(rows))
    benchmark.write_json(json_path, benchmark.benchmark_report(rows, engine, video, frames[0].shape))
    print(f"wrote {json_path}")
    return 0


def _headless(engine: Engine, box: SettingsBox, args: argparse.Namespace) -> int:
    from idd_edge_runtime.pipeline import Pipeline, VideoSink

    if not args.source:
        print("idd-edge-runtime: error: --headless needs --source", file=sys.stderr)
        return 2
    source = open_source(args.source, args.width, args.height)
    sink = VideoSink(args.output, fps=source.fps) if args.output else None
    messages: List[str] = []

    def on_message(text: str) -> None:
        messages.append(text)
        print(text, file=sys.stderr, flush=True)

    pipeline = Pipeline(
        engine, source, box, on_frame=sink.write if sink else (lambda *_: None), on_message=on_message, max_frames=args.max_frames
    )
    interrupted = False
    previous = signal.signal(signal.SIGTERM, lambda *_: pipeline.stop())
    start = time.perf_counter()
    try:
        pipeline.start()
        while not pipeline.wait(0.5):
            pass
    except KeyboardInterrupt:
        interrupted = True
        pipeline.stop()
        pipeline.wait(5)
    finally:
        signal.signal(signal.SIGTERM, previous)
        source.close()
        if sink is not None:
            sink.close(keep=True)
    elapsed = time.perf_counter() - start
    print(
        f"{pipeline.frames_shown} frames in {elapsed:.1f} s ({pipeline.frames_shown / max(elapsed, 1e-9):.1f} FPS), "
        f"{pipeline.dropped} dropped, {pipeline.frames_skipped} skipped"
        + (f"; wrote {args.output}" if sink is not None and sink.frames else "")
    )
    if pipeline.failure:
        return 1
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
