"""The one model API: ``get_model`` over every kind of model, ``load_checkpoint``, and the package's import graph."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from unittest import mock

import pytest
import torch

import refconv
from refconv.errors import CheckpointError, ModelError
from refconv.models import _registry, detection, get_model, list_models, load_checkpoint

SRC = Path(refconv.__file__).parent


# ----------------------------------------------------------------------------------------------- import graph
def _imports(path: Path, module: str, is_pkg: bool) -> set[tuple[str, str]]:
    """``(package, name)`` pairs ``module`` imports anywhere (functions included), except under TYPE_CHECKING:
    ``from P import n`` gives ``(P, n)`` (n may be a submodule or a name of P), ``import P`` gives ``(P, "")``."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    package = module if is_pkg else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out |= {(base, a.name) for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {(a.name, "") for a in node.names}
    return {(p, n) for p, n in out if p == "refconv" or p.startswith("refconv.")}


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of refconv it imports}``. ``from P import n`` is an arrow to the submodule ``P.n`` when
    there is one, else to ``P``; a module's own parent packages (which Python runs first anyway) are no arrow."""
    files = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        files[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    graph = {}
    for module, (path, is_pkg) in files.items():
        targets = set()
        for package, name in _imports(path, module, is_pkg):
            target = f"{package}.{name}" if f"{package}.{name}" in files else package
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                targets.add(target)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_cycle():
    """Every import counts, in functions too (a function-level import is where a cycle hides)."""
    assert cycles(import_graph()) == []


def test_models_and_engine_import_no_consumer():
    """models imports neither engine nor downstream; engine imports no downstream module."""
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("refconv.models"):
            bad = {t for t in targets if t.startswith(("refconv.engine", "refconv.downstream", "refconv.protocol"))}
            assert not bad, f"{module} imports {bad}"
        if module.startswith("refconv.engine"):
            assert not {t for t in targets if t.startswith("refconv.downstream")}, module


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "refconv.models._api" in graph["refconv.models.pretrained"]  # inside load()
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# ----------------------------------------------------------------------------------------------- get_model
def test_one_registry_for_every_task():
    assert set(_registry.TASKS) == {"classification", "detection", "segmentation"}
    for name in list_models("refconv", task="detection") + list_models("refconv", task="segmentation"):
        assert _registry.find_model(name).spec is detection.get_spec(name)
    assert _registry.find_model("ssdlite").name == "ssdlite320_mobilenet_v3_large"  # aliases
    assert _registry.model_task("tv/resnet18") == "classification"
    with pytest.raises(ModelError, match="twice"):
        _registry.register_model("ssdlite_timm", task="detection")(lambda n: None)


def test_get_model_builds_every_kind():
    clf = get_model("tv/mobilenet_v3_small", num_classes=5, in_chans=1)
    assert clf.training and clf.classifier[-1].out_features == 5
    seg = get_model("lraspp", num_classes=4)
    assert seg.training and seg.classifier.low_classifier.out_channels == 4
    with pytest.raises(ModelError, match="pass num_classes"):
        get_model("lraspp")
    with pytest.raises(ModelError, match="in_chans is for classifiers"):
        get_model("lraspp", num_classes=4, in_chans=1)
    with pytest.raises(ModelError, match="unknown model"):
        get_model("tv/resnet_eighteen")
    with pytest.raises(ModelError, match="unknown architecture 'tv/resnet18'. Supported: ssdlite"):
        get_model("tv/resnet18", num_classes=3, task="detection")


def test_load_checkpoint_is_the_one_loader(tmp_path):
    """A classifier's head and stem, and a segmenter's class-dependent head, go through the same checks."""
    src = get_model("tv/mobilenet_v3_small", num_classes=10)
    model = get_model("tv/mobilenet_v3_small", num_classes=4, in_chans=1)
    fresh = load_checkpoint(model, src.state_dict(), new_head=True, adapt_in_chans=True)
    assert fresh == ["classifier.3.weight", "classifier.3.bias"]
    assert torch.allclose(model.features[0][0].weight, src.features[0][0].weight.sum(1, keepdim=True))
    with pytest.raises(CheckpointError, match="classifier mismatch.*10 classes"):
        load_checkpoint(get_model("tv/mobilenet_v3_small", num_classes=4), src.state_dict())
    seg = get_model("lraspp", num_classes=3)
    heads = detection.get_spec("lraspp").heads
    fresh = load_checkpoint(get_model("lraspp", num_classes=5), seg.state_dict(), new_head=True, heads=heads)
    assert {k.rsplit(".", 1)[0] for k in fresh} == set(heads)


# ----------------------------------------------------------------------------------------------- detectors
def _mocked_backbone_build(spec, state):
    """torchvision's "pretrained backbone" branch with ``state`` in the classifier (how main did it, by mock)."""
    from torchvision.models import get_model_weights

    module_name, attr = spec.backbone_ctor
    module = importlib.import_module(module_name)
    real = getattr(module, attr)

    def ctor(*, weights=None, progress=True, **kwargs):
        model = real(weights=None, progress=progress, **kwargs)
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith(("classifier.", "fc."))},
                              strict=False)
        return model

    member = get_model_weights(attr)[spec.backbone_weights]
    kwargs = {"trainable_backbone_layers": 6 if spec.name.startswith("ssdlite") else 5} if spec.task == "detection" else {}
    with mock.patch.object(module, attr, ctor):
        return spec.builder()(weights=None, weights_backbone=member, num_classes=3, **kwargs)


@pytest.mark.parametrize("arch", ["ssdlite320_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large",
                                  "lraspp_mobilenet_v3_large", "fcn_resnet50",
                                  pytest.param("ssd300_vgg16", marks=pytest.mark.slow),
                                  pytest.param("deeplabv3_resnet50", marks=pytest.mark.slow)])
def test_a_backbone_file_lands_where_torchvision_puts_it(arch, tmp_path):
    """No mock in refconv: the trunk is copied in module order; the result is torchvision's own layout, tensor
    for tensor (compared with torchvision's builder taking the same classifier through its pretrained branch)."""
    import torchvision.models as tvm

    spec = detection.get_spec(arch)
    torch.manual_seed(0)
    classifier = tvm.get_model(spec.backbone_ctor[1], num_classes=10)
    torch.save(classifier.state_dict(), tmp_path / "clf.pth")
    ours = get_model(arch, num_classes=3, weights_backbone=tmp_path / "clf.pth").state_dict()
    theirs = _mocked_backbone_build(spec, classifier.state_dict()).state_dict()
    assert [(k, v.shape) for k, v in ours.items()] == [(k, v.shape) for k, v in theirs.items()]
    trunk = [k for k in ours if any(k.startswith(p + ".") for p in spec.backbone)]
    assert trunk and all(torch.equal(ours[k], theirs[k]) for k in trunk)
    rebuilt = get_model(arch, num_classes=3, pretrained_layout=True).state_dict()
    assert [(k, v.shape) for k, v in rebuilt.items()] == [(k, v.shape) for k, v in theirs.items()]


def test_no_mock_in_the_package():
    offenders = [p for p in SRC.rglob("*.py") if "unittest" in p.read_text() and "mock" in p.read_text()]
    assert not offenders
