"""One list of image suffixes for every stage that looks for images (`idd_edge.images`)."""

from __future__ import annotations

import ast
from pathlib import Path

from idd_edge.images import LEFTIMG8BIT_SUFFIXES, find_leftimg8bit, is_image, leftimg8bit_suffix
from tests.import_graph import PACKAGE_ROOTS


def test_image_names():
    assert is_image(Path("a/b.PNG")) and is_image(Path("x.jpeg")) and not is_image(Path("labels.txt"))
    assert leftimg8bit_suffix("frame_leftImg8bit.jpg") == "_leftImg8bit.jpg"
    assert leftimg8bit_suffix("frame_gtFine_polygons.json") is None
    assert LEFTIMG8BIT_SUFFIXES[0] == "_leftImg8bit.png"  # the name convert writes when an image is missing


def test_find_leftimg8bit_takes_the_first_suffix_that_exists(tmp_path):
    assert find_leftimg8bit(tmp_path, "0001") is None
    (tmp_path / "0001_leftImg8bit.jpg").write_bytes(b"")
    assert find_leftimg8bit(tmp_path, "0001") == tmp_path / "0001_leftImg8bit.jpg"
    (tmp_path / "0001_leftImg8bit.png").write_bytes(b"")
    assert find_leftimg8bit(tmp_path, "0001") == tmp_path / "0001_leftImg8bit.png"


def _encoder_choices(tree: ast.AST) -> set:
    """The first arguments of cv2.imencode(".jpg", ...) calls: they pick an encoder, they list no files."""
    return {
        id(node.args[0])
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "imencode" and node.args
    }


def test_no_other_module_keeps_its_own_image_suffix_list():
    offenders = []
    for package, root in PACKAGE_ROOTS.items():
        for path in sorted((root / package).rglob("*.py")):
            if path.name == "images.py" and path.parent.name == "idd_edge":
                continue
            tree = ast.parse(path.read_text())
            encoders = _encoder_choices(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and node.value in (".jpg", ".jpeg", "_leftImg8bit.jpg") and id(node) not in encoders:
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders, f"image suffixes spelled out outside idd_edge/images.py: {', '.join(offenders)}"
