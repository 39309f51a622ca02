"""No import circle in our code: a module may use another only if that one does not use it back, through any
chain, counting imports inside functions (the CLI's lazy ones) and `if TYPE_CHECKING:` ones alike."""

from __future__ import annotations

from tests.import_graph import all_modules, find_cycle, imports


def test_our_modules_import_each_other_without_a_cycle():
    cycle = find_cycle(all_modules(), module_level=False, type_checking=True)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_lazy_and_type_checking_imports():
    """The check above would pass vacuously if the graph missed imports: known edges of each kind."""
    assert "idd_edge.seg.trained" in imports("idd_edge.seg.teacher_logits", module_level=False)  # in a function
    assert "idd_edge.seg.trained" not in imports("idd_edge.seg.teacher_logits", module_level=True)
    assert "idd_edge.seg.augment" in imports("idd_edge.seg.logit_cache", module_level=True, type_checking=True)
    assert "idd_edge.seg.augment" not in imports("idd_edge.seg.logit_cache", module_level=True)
    assert "idd_edge_runtime.preprocess" in imports("idd_edge.export.preprocessing", module_level=False)


def test_a_cycle_is_found(monkeypatch):
    import tests.import_graph as graph

    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    monkeypatch.setattr(graph, "imports", lambda name, module_level, type_checking=False: frozenset(edges[name]))
    assert graph.find_cycle(edges, module_level=False, type_checking=True) == ["a", "b", "c", "a"]
