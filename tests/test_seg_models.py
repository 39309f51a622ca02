"""Every semantic architecture: forward/backward per label level, export friendliness, local weights."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from idd_edge import config
from idd_edge.errors import InputError
from idd_edge.labels import num_classes
from idd_edge.seg import pretrained
from idd_edge.seg.models import as_logits, build_model, export_unfriendly_modules, set_export_mode

LEVELS = ("level1", "level2", "level3")


@pytest.fixture(scope="module")
def model_configs() -> dict[str, dict]:
    """The real model configs as composed into params (teacher + students), plus ConvNeXt-Base."""
    params = config.compose([])
    models = {params["models"]["teacher"]["name"]: params["models"]["teacher"], **params["models"]["students"]}
    base = config.compose(["model@models.teacher=convnext_base_upernet"])["models"]["teacher"]
    models[base["name"]] = base
    return {name: dict(cfg, pretrained=False) for name, cfg in models.items()}


pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL_MODELS = ("convnext_atto_upernet", "mnv4s_lraspp", "mnv4s_deeplabv3plus", "mnv4l_deeplabv3plus")
STUDENTS = ("mnv4s_lraspp", "mnv4s_deeplabv3plus", "mnv4l_deeplabv3plus")


def test_the_default_config_names_the_teacher_and_the_three_students(model_configs):
    assert set(model_configs) == {*SMALL_MODELS, "convnext_base_upernet"}


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_forward_backward_per_label_level(model_configs, name, level):
    torch.manual_seed(0)
    classes = num_classes(level)
    model = build_model(model_configs[name], classes, input_size=(64, 64)).train()
    logits = as_logits(model(torch.randn(2, 3, 64, 64)))
    assert logits.shape == (2, classes, 64, 64)
    logits.square().mean().backward()
    # Every parameter takes part (pruned stages are gone): DDP needs no unused-parameter search.
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused


def test_convnext_base_teacher_builds_and_runs(model_configs):
    model = build_model(model_configs["convnext_base_upernet"], 16).eval()
    assert model.encoder.out_channels[-4:] == [128, 256, 512, 1024]  # the seed's channel list
    with torch.no_grad():
        assert as_logits(model(torch.zeros(1, 3, 64, 64))).shape == (1, 16, 64, 64)


def test_mobilenet_students_use_the_seed_channels_and_drop_the_unused_stride32_stage(model_configs):
    small = build_model(model_configs["mnv4s_deeplabv3plus"], 16)
    large = build_model(model_configs["mnv4l_deeplabv3plus"], 16)
    assert small.encoder.out_channels[1:] == [32, 32, 64, 96]
    assert large.encoder.out_channels[1:] == [24, 48, 96, 192]
    # MobileNetV4-L's 26M-parameter stride-32 stage is never read by a depth-4 decoder.
    assert sum(p.numel() for p in large.parameters()) < 6_000_000


# The TorchScript exporter (what the Hailo parser was validated against, see export/onnx_export.py) is
# deprecated in favour of torch.export, which would need onnxscript and opset 18+.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", STUDENTS)
def test_students_are_export_friendly_and_match_in_onnx_runtime(model_configs, name, tmp_path):
    import onnx
    import onnxruntime as ort

    model = set_export_mode(build_model(model_configs[name], 7, input_size=(64, 64)).eval())
    assert export_unfriendly_modules(model) == []  # no hard-swish / hard-sigmoid anywhere
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(image)
    assert isinstance(expected, torch.Tensor)  # export mode: one plain tensor
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (image,), str(path), dynamo=False, opset_version=13, input_names=["input"],
                      output_names=["logits"])
    graph = onnx.load(str(path))
    dims = [d.dim_value for d in graph.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 7, 64, 64]  # static shapes
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"input": image.numpy()})
    np.testing.assert_allclose(actual, expected.numpy(), atol=1e-4, rtol=1e-4)


def test_lraspp_fixes_its_interpolation_sizes_and_uses_sigmoid(model_configs):
    model = build_model(model_configs["mnv4s_lraspp"], 16, input_size=(96, 64)).eval()
    assert model.low_size == (24, 16) and model.input_size == (96, 64)
    assert any(isinstance(m, torch.nn.Sigmoid) for m in model.modules())
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 96, 64))
        assert isinstance(out, dict) and out["out"].shape == (1, 16, 96, 64)  # torchvision-style output
        with pytest.raises(ValueError, match="built for input"):
            model(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        build_model(model_configs["mnv4s_lraspp"], 16, input_size=(100, 64))


def _timm_checkpoint(backbone: str) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(123)
    return timm.create_model(backbone, pretrained=False).state_dict()


@pytest.mark.parametrize("name", ["mnv4s_lraspp", "convnext_atto_upernet"])
def test_local_weights_are_loaded_into_the_backbone(model_configs, name, tmp_path):
    from safetensors.torch import save_file

    cfg = model_configs[name]
    state = _timm_checkpoint(cfg["backbone"])
    path = tmp_path / "weights.safetensors"
    save_file(state, str(path))
    model = build_model(dict(cfg, pretrained=True, weights=str(path)), 7, input_size=(64, 64))
    backbone = model.backbone if cfg["arch"] == "lraspp" else model.encoder.model
    loaded = backbone.state_dict()
    normalised = {k.replace("_", "."): v for k, v in state.items()}
    for key, value in loaded.items():
        assert torch.equal(value, normalised[key.replace("_", ".")]), key

    torch_path = tmp_path / "weights.pth"
    torch.save({"state_dict": state}, torch_path)  # a nested torch checkpoint works too
    again = build_model(dict(cfg, pretrained=True, weights=str(torch_path)), 7, input_size=(64, 64))
    first = next(iter(loaded))
    assert torch.equal((again.backbone if cfg["arch"] == "lraspp" else again.encoder.model).state_dict()[first],
                       loaded[first])


def test_wrong_or_missing_weight_files_are_input_errors(model_configs, tmp_path):
    from safetensors.torch import save_file

    cfg = dict(model_configs["mnv4s_lraspp"], pretrained=True)
    with pytest.raises(InputError, match="not found") as error:
        build_model(dict(cfg, weights=str(tmp_path / "missing.safetensors")), 7)
    assert error.value.path.endswith("missing.safetensors")
    wrong = tmp_path / "convnext.safetensors"
    save_file(_timm_checkpoint("convnext_atto"), str(wrong))
    with pytest.raises(InputError, match="backbone tensors not in file"):
        build_model(dict(cfg, weights=str(wrong)), 7)


def test_weights_are_found_in_the_project_folder_and_hub_cache_else_random_init(model_configs, tmp_path,
                                                                                 monkeypatch, caplog):
    from safetensors.torch import save_file

    cfg = dict(model_configs["mnv4s_lraspp"], pretrained=True)
    tag = cfg["pretrained_tag"]
    monkeypatch.setattr(pretrained, "PROJECT_WEIGHTS_DIR", tmp_path / "project")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with caplog.at_level(logging.WARNING):
        build_model(cfg, 7)
    assert "RANDOM INIT" in caplog.text and tag in caplog.text

    snapshot = tmp_path / "hub" / f"models--timm--{tag}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file(_timm_checkpoint(cfg["backbone"]), str(snapshot / "model.safetensors"))
    assert pretrained.find_cached_weights(tag) == snapshot / "model.safetensors"
    (tmp_path / "project").mkdir()
    save_file(_timm_checkpoint(cfg["backbone"]), str(tmp_path / "project" / f"{tag}.safetensors"))
    assert pretrained.find_cached_weights(tag) == tmp_path / "project" / f"{tag}.safetensors"
    with caplog.at_level(logging.INFO):
        build_model(cfg, 7)
    assert "loaded" in caplog.text


def test_the_hugging_face_hub_is_offline():
    import idd_edge.seg  # noqa: F401

    assert os.environ["HF_HUB_OFFLINE"] == "1"
