"""`idd-edge convert`: IDD polygon JSON -> semantic, instance, colour and panoptic masks, with a report.

Reads `<root>/gtFine/<split>/<drive>/<id>_gtFine_polygons.json` (images in
`<root>/leftImg8bit/<split>/<drive>/<id>_leftImg8bit.png|.jpg`) and writes under OUT_ROOT, with the
official toolkit's names:

    gtFine/<split>/<drive>/<id>_gtFine_label<enc>s.png      uint8 class values (background per encoding)
    gtFine/<split>/<drive>/<id>_gtFine_instance<enc>s.png   uint16 class*1000+k / plain class value
    gtFine/<split>/<drive>/<id>_gtFine_labelColors.png      RGB preview (official: RGBA, alpha always 255)
    gtFine/<split>_panoptic/<drive>_<id>_gtFine_panoptic.png  COCO panoptic PNG (see panoptic.py)
    gtFine/<split>_panoptic.json                             COCO panoptic JSON of the split

Label and colour pixels are identical to the official toolkit's PIL rendering (see rasterize.py).
Bad input never stops the run: every problem becomes a finding (file, reason, detail) in the conversion
report; a file whose mask would be wrong (malformed JSON, size mismatch, ...) gets no mask, and stale
outputs of it from an earlier run are removed. `strict` turns any finding into a failure (exit code 1)
after everything was converted and the report written. Every file is written atomically.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from idd_edge import atomic, config
from idd_edge.data.annotation import REASONS, AnnotationError, parse_annotation
from idd_edge.data.panoptic import coco_document, panoptic_image
from idd_edge.data.rasterize import rasterize
from idd_edge.errors import InputError, StageError
from idd_edge.images import LEFTIMG8BIT_SUFFIXES, find_leftimg8bit, leftimg8bit_suffix
from idd_edge.labels import ENCODINGS

log = logging.getLogger(__name__)

ANNOTATION_SUFFIX = "_gtFine_polygons.json"
OUTPUT_KINDS = ("semantic", "instance", "color", "panoptic")
class StrictModeError(StageError):
    """Strict mode and the conversion found problems (everything else was still converted)."""

    def __init__(self, report: dict[str, Any]):
        super().__init__(report["summary"])
        self.report = report


@dataclass(frozen=True)
class ConvertOptions:
    out_root: Path
    encoding: str
    semantic: bool = True
    instance: bool = False
    color: bool = False
    panoptic: bool = False


@dataclass(frozen=True)
class Job:
    """One annotation file to convert; paths relative to the dataset root where they name a file."""

    root: Path
    split: str
    drive: str
    image_id: str
    image: str | None  # relative path of the image, None when missing

    @property
    def annotation(self) -> str:
        return f"gtFine/{self.split}/{self.drive}/{self.image_id}{ANNOTATION_SUFFIX}"


@dataclass
class FileResult:
    split: str
    converted: bool = False  # masks written (all requested kinds unless an instance overflow)
    findings: list[dict[str, str]] = field(default_factory=list)
    objects: Counter = field(default_factory=Counter)
    panoptic: tuple[dict[str, Any], dict[str, Any]] | None = None  # (COCO image, COCO annotation)
    cpu_seconds: float = 0.0  # CPU time of the conversion (benchmarks; not part of the report)


def output_paths(job: Job, options: ConvertOptions) -> dict[str, Path]:
    """Where each requested output of `job` goes (official names; panoptic as documented above)."""
    enc, stem = options.encoding, job.image_id
    folder = options.out_root / "gtFine" / job.split / job.drive
    paths = {
        "semantic": folder / f"{stem}_gtFine_label{enc}s.png",
        "instance": folder / f"{stem}_gtFine_instance{enc}s.png",
        "color": folder / f"{stem}_gtFine_labelColors.png",
        "panoptic": panoptic_dir(options.out_root, job.split) / f"{job.drive}_{stem}_gtFine_panoptic.png",
    }
    return {kind: path for kind, path in paths.items() if getattr(options, kind)}


def panoptic_dir(out_root: Path, split: str) -> Path:
    return out_root / "gtFine" / f"{split}_panoptic"


def panoptic_json(out_root: Path, split: str) -> Path:
    return out_root / "gtFine" / f"{split}_panoptic.json"


def discover(root: Path) -> tuple[list[Job], list[dict[str, str]]]:
    """All annotation files under `root` (sorted) and the images of annotated splits that have none."""
    if not root.is_dir():
        raise InputError(root, "dataset root does not exist")
    if not (root / "gtFine").is_dir():
        raise InputError(root, "no gtFine/ folder: not an IDD dataset root")
    annotations = sorted((root / "gtFine").glob(f"*/*/*{ANNOTATION_SUFFIX}"))
    if not annotations:
        raise InputError(root / "gtFine", f"no <split>/<drive>/*{ANNOTATION_SUFFIX} files")

    jobs = []
    for path in annotations:
        split, drive, image_id = path.parent.parent.name, path.parent.name, path.name[: -len(ANNOTATION_SUFFIX)]
        found = find_leftimg8bit(root / "leftImg8bit" / split / drive, image_id)
        image = found.relative_to(root).as_posix() if found else None
        jobs.append(Job(root, split, drive, image_id, image))

    # Only splits with annotations are checked: the real IDD test split ships images without polygons.
    annotated = {(job.split, job.drive, job.image_id) for job in jobs}
    findings = []
    for split in sorted({job.split for job in jobs}):
        for image in sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.*")):
            suffix = leftimg8bit_suffix(image.name)
            if suffix and (split, image.parent.name, image.name[: -len(suffix)]) not in annotated:
                relative = image.relative_to(root).as_posix()
                findings.append(_finding(relative, "missing_annotation", f"no gtFine/{split}/{image.parent.name}/"
                                         f"{image.name[: -len(suffix)]}{ANNOTATION_SUFFIX} for this image"))
    return jobs, findings


def _finding(file: str, reason: str, detail: str) -> dict[str, str]:
    assert reason in REASONS, reason
    return {"file": file, "reason": reason, "detail": detail}


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:  # reads the header only
        return image.size


def convert_file(job: Job, options: ConvertOptions) -> FileResult:
    """Convert one annotation file; every problem ends up in the result's findings, never raised."""
    started = time.process_time()
    result = _convert_file(job, options)
    result.cpu_seconds = time.process_time() - started
    return result


def _convert_file(job: Job, options: ConvertOptions) -> FileResult:
    result = FileResult(job.split)
    outputs = output_paths(job, options)

    def fail(reason: str, detail: str, file: str = job.annotation) -> FileResult:
        result.findings.append(_finding(file, reason, detail))
        for path in outputs.values():  # a stale mask from an earlier run would now be wrong
            path.unlink(missing_ok=True)
        return result

    try:
        annotation, issues = parse_annotation((job.root / job.annotation).read_bytes())
    except OSError as exc:
        return fail("unreadable_annotation", f"cannot read: {exc.strerror or exc}")
    except AnnotationError as exc:
        return fail(exc.issue.reason, exc.issue.detail)
    result.findings += [_finding(job.annotation, issue.reason, issue.detail) for issue in issues]
    result.objects.update(drawn=len(annotation.objects), deleted=annotation.deleted, skipped=annotation.skipped)

    size = (annotation.width, annotation.height)
    if job.image is None:
        result.findings.append(_finding(job.annotation, "missing_image", "no leftImg8bit .png/.jpg image"))
    else:
        try:
            image_size = _image_size(job.root / job.image)
        except Exception as exc:  # any failure to read the header (PIL raises many kinds) = unreadable
            result.findings.append(_finding(job.image, "unreadable_image", f"{type(exc).__name__}: {exc}"))
        else:
            if image_size != size:
                return fail("size_mismatch", f"{job.image} is {image_size[0]}x{image_size[1]}, "
                            f"annotation says {size[0]}x{size[1]}")

    masks = rasterize(
        annotation, options.encoding, label=options.semantic, color=options.color,
        instance=options.instance, instance_canvas=options.panoptic,
    )
    if options.semantic:
        atomic.write_png(outputs["semantic"], masks.label, row_filters=False)
    if options.color:
        atomic.write_png(outputs["color"], masks.color, row_filters=False)
    if options.instance:
        if masks.instance_overflow:
            outputs["instance"].unlink(missing_ok=True)
            result.findings.append(_finding(job.annotation, "instance_overflow",
                                            f"class value(s) {list(masks.instance_overflow)} have more than 1000 "
                                            "instances; instance mask not written"))
        else:
            atomic.write_png(outputs["instance"], masks.instance, row_filters=False)
    if options.panoptic:
        panoptic = panoptic_image(masks.instance_canvas, masks.instance_objects, options.encoding)
        atomic.write_png(outputs["panoptic"], panoptic.rgb, row_filters=False)
        image_key = f"{job.drive}_{job.image_id}"
        image_name = (job.image or f"leftImg8bit/{job.split}/{job.drive}/{job.image_id}{LEFTIMG8BIT_SUFFIXES[0]}")
        result.panoptic = (
            {"id": image_key, "width": size[0], "height": size[1],
             "file_name": image_name.split("/", 2)[2]},  # relative to leftImg8bit/<split>/
            {"image_id": image_key, "file_name": outputs["panoptic"].name, "segments_info": panoptic.segments_info},
        )
    result.converted = True
    return result


def convert_all(jobs: list[Job], options: ConvertOptions, workers: int) -> Iterator[FileResult]:
    """Convert `jobs`, yielding results in job order, from `workers` processes (chunks of jobs) or in
    this process when workers is 1. Each result depends on its job only, so any worker count gives the
    same results."""
    task = partial(convert_file, options=options)
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        yield from map(task, jobs)
        return
    # forkserver: workers are forked from a clean server process (no inherited threads or locks) that
    # imported this module once when it started; spawn where forkserver does not exist.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
    else:
        context = multiprocessing.get_context("spawn")
    chunksize = max(1, min(16, math.ceil(len(jobs) / (workers * 4))))
    with context.Pool(workers) as pool:
        yield from pool.imap(task, jobs, chunksize=chunksize)


def run_pipeline(
    datadir: str | Path,
    out_basedir: str | Path,
    encoding: str,
    do_semantic: bool = True,
    do_instance: bool = False,
    do_color: bool = False,
    do_panoptic: bool = False,
    workers: int = 1,
    strict: bool = False,
    report_path: str | Path | None = None,
) -> dict[str, Any]:
    """Convert an IDD tree (the seed notebook's signature) and return the conversion report.

    The report (also written to `report_path` when given) counts files, objects and findings by reason
    and lists every finding with its file. With `strict`, any finding raises StrictModeError (carrying the
    report) once everything is converted and the report written.
    """
    if encoding not in ENCODINGS:
        raise InputError(None, f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    if not (do_semantic or do_instance or do_color or do_panoptic):
        raise InputError(None, "no output selected (semantic, instance, color, panoptic)")
    if workers < 1:
        raise InputError(None, f"workers must be at least 1, got {workers}")
    root, out_root = Path(datadir), Path(out_basedir)
    options = ConvertOptions(out_root, encoding, do_semantic, do_instance, do_color, do_panoptic)
    jobs, findings = discover(root)
    kinds = [kind for kind in OUTPUT_KINDS if getattr(options, kind)]
    log.info("converting %d annotation files (%s: %s) with %d worker(s)", len(jobs), encoding, ", ".join(kinds), workers)

    converted, objects = 0, Counter()
    coco: dict[str, tuple[list, list]] = {split: ([], []) for split in sorted({job.split for job in jobs})}
    results = convert_all(jobs, options, workers)
    for result in tqdm(results, total=len(jobs), desc="convert", unit="file", disable=None):
        converted += result.converted
        objects.update(result.objects)
        findings += result.findings
        if result.panoptic:
            coco[result.split][0].append(result.panoptic[0])
            coco[result.split][1].append(result.panoptic[1])
    if do_panoptic:
        for split, (images, annotations) in coco.items():
            atomic.write_json(panoptic_json(out_root, split), coco_document(images, annotations, encoding), indent=None)

    by_reason = dict(sorted(Counter(f["reason"] for f in findings).items()))
    summary = (
        f"converted {converted}/{len(jobs)} annotation files to {out_root} ({encoding}: {', '.join(kinds)}); "
        + (f"{len(findings)} findings: " + ", ".join(f"{r} {n}" for r, n in by_reason.items()) if findings else "no findings")
        + (f"; report: {report_path}" if report_path else "")
    )
    report = {
        "summary": summary,
        "input": str(root),
        "output": str(out_root),
        "encoding": encoding,
        "outputs": kinds,
        "strict": strict,
        "annotation_files": len(jobs),
        "converted": converted,
        "not_converted": len(jobs) - converted,
        "objects": {key: objects[key] for key in ("drawn", "deleted", "skipped")},
        "findings_by_reason": by_reason,
        "reasons": {reason: REASONS[reason] for reason in by_reason},
        "findings": findings,
    }
    if report_path is not None:
        atomic.write_json(report_path, report)
    (log.warning if findings else log.info)(summary)
    if strict and findings:
        raise StrictModeError(report)
    return report


# --------------------------------------------------------------------------------------------- CLI

#: CLI argument -> params.yaml key supplying its default (read only when the argument is not given).
PARAM_DEFAULTS = {
    "idd_root": "data.root",
    "out_root": "convert.out",
    "encoding": "label_level.encoding",
    "instance": "convert.instance",
    "color": "convert.color",
    "panoptic": "convert.panoptic",
    "workers": "convert.workers",
    "strict": "convert.strict",
    "report": "convert.report",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="IDD polygon JSON -> semantic / instance / colour / panoptic masks",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("idd_root", nargs="?", help="IDD root with gtFine/ and leftImg8bit/ (default: data.root)")
    parser.add_argument("out_root", nargs="?", help="output root, mirrors gtFine/ (default: convert.out)")
    parser.add_argument("--encoding", choices=ENCODINGS, help="label encoding (default: label_level.encoding)")
    on_off = argparse.BooleanOptionalAction
    parser.add_argument("--semantic", action=on_off, default=True, help="write label<enc>s images (default: on)")
    parser.add_argument("--instance", action=on_off, help="write uint16 instance images (default: convert.instance)")
    parser.add_argument("--color", action=on_off, help="write labelColors previews (default: convert.color)")
    parser.add_argument("--panoptic", action=on_off, help="write COCO panoptic PNG + JSON (default: convert.panoptic)")
    parser.add_argument("--workers", type=int, help="worker processes (default: convert.workers)")
    parser.add_argument("--strict", action=on_off, help="exit 1 on any finding (default: convert.strict)")
    parser.add_argument("--report", help="conversion report JSON (default: convert.report)")
    parser.add_argument("--params", default=str(config.PARAMS_FILE), help="parameters file for defaults")
    parser.set_defaults(handler=_run)


def _fill_defaults(args: argparse.Namespace, keys: Iterable[str]) -> None:
    """Take the arguments not given on the command line from params.yaml (read once, only if needed)."""
    missing = [key for key in keys if getattr(args, key) is None]
    if not missing:
        return
    params = config.load_params(args.params)
    for key in missing:
        setattr(args, key, config.section(params, PARAM_DEFAULTS[key], args.params))
    if args.encoding not in ENCODINGS:
        raise InputError(args.params, f"label_level.encoding {args.encoding!r} is not one of {', '.join(ENCODINGS)}")


def _run(args: argparse.Namespace) -> int:
    _fill_defaults(args, PARAM_DEFAULTS)
    try:
        run_pipeline(
            args.idd_root, args.out_root, args.encoding,
            do_semantic=args.semantic, do_instance=bool(args.instance), do_color=bool(args.color),
            do_panoptic=bool(args.panoptic), workers=int(args.workers), strict=bool(args.strict),
            report_path=args.report,
        )
    except StrictModeError as exc:
        print(f"idd-edge convert: strict mode: {exc}", file=sys.stderr)
        return 1
    return 0
