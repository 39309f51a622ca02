"""One table of model formats and file names (`idd_edge_runtime.formats`) and one DFC/HailoRT table
(`idd_edge_runtime.manifest`), read by export, quantize, compile, gate, bundle and the device runtime."""

from __future__ import annotations

import ast
import re

from idd_edge.export import compile_hef, gate
from idd_edge_runtime import formats, loader, manifest
from tests.import_graph import PACKAGE_ROOTS

TABLE_FILE = PACKAGE_ROOTS["idd_edge_runtime"] / "idd_edge_runtime" / "formats.py"
MANIFEST_FILE = PACKAGE_ROOTS["idd_edge_runtime"] / "idd_edge_runtime" / "manifest.py"


def _our_sources():
    for package, root in PACKAGE_ROOTS.items():
        yield from sorted((root / package).rglob("*.py"))


def test_format_names_and_files_are_spelled_out_only_in_the_table():
    spelled = {name for fmt in formats.ALL_FORMATS for name in (fmt.stage_file, fmt.bundle_suffix, fmt.gate)}
    offenders = [f"{path.name}:{node.lineno} {node.value!r}"
                 for path in _our_sources() if path != TABLE_FILE
                 for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Constant) and node.value in spelled]
    assert not offenders, f"format names/files outside idd_edge_runtime/formats.py: {', '.join(offenders)}"


def test_every_side_names_the_same_formats():
    assert set(manifest.FORMATS) == set(formats.BY_MANIFEST_NAME)
    assert set(gate.FORMATS) == set(formats.BY_GATE_NAME)
    sensor = {fmt.manifest for fmt in formats.SENSOR_FORMATS}
    assert set(loader._CPU_FORMAT_ORDER) | {formats.HEF.manifest} | sensor == set(manifest.FORMATS)
    assert len({fmt.stage_file for fmt in formats.ALL_FORMATS}) == len(formats.ALL_FORMATS)
    assert len({fmt.bundle_suffix for fmt in formats.ALL_FORMATS}) == len(formats.ALL_FORMATS)


def test_the_dfc_hailort_table_exists_once():
    """Only the runtime's manifest spells out DFC -> HailoRT version pairs; the compile stage reads them."""
    version = re.compile(r"^\d+\.\d+$")
    tables = [f"{path.name}:{node.lineno}" for path in _our_sources()
              for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.Dict) and node.keys
              and all(isinstance(k, ast.Constant) and version.match(str(k.value)) for k in node.keys)]
    assert tables == [f"{MANIFEST_FILE.name}:{_line_of('DFC_TO_HAILORT: Dict', MANIFEST_FILE)}"], tables
    assert compile_hef.hailort_for("3.33.0") == manifest.DFC_TO_HAILORT["3.33"]
    newest = compile_hef.newest_dfc(manifest.DFC_MAJOR_FOR_ARCH["hailo8"])
    assert newest in compile_hef.install_hint("hailo8") and set(compile_hef.HW_ARCHES) == set(manifest.HW_ARCHES)


def _line_of(text: str, path) -> int:
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1) if text in line)
