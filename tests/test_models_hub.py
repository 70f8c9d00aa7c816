"""The way out to the hub: a registry entry and a folded run export to a folder that stock timm loads, in a process
that never imports refconv, with outputs identical to refconv's model and every key matched strictly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import refconv
from refconv.cli import main
from refconv.convert import conversion_config, convert
from refconv.engine.checkpoint import save_checkpoint
from refconv.errors import ModelError
from refconv.models import get_model, pretrained
from refconv.models.hub import HUB_FILES, export_pretrained

ENTRY = "fmnist/mobilenetv3_small_100"  # shipped under src/refconv/weights

# Runs in a fresh interpreter without refconv on its path: builds the folder with stock timm, checks its
# safetensors keys strictly, and writes the outputs on the given inputs.
_TIMM_ONLY = textwrap.dedent("""
    import json, sys
    import torch, timm
    from safetensors.torch import load_file
    torch.set_num_threads(1)
    hub, io = sys.argv[1], sys.argv[2]
    model = timm.create_model("local-dir:" + hub, pretrained=True).eval()
    state = load_file(hub + "/model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=True)
    x = torch.load(io + "/x.pt")
    with torch.no_grad():
        torch.save(model(x), io + "/y_timm.pt")
    data = timm.data.resolve_data_config({}, model=model)
    json.dump({"refconv_imported": any(m.split(".")[0] == "refconv" for m in sys.modules), "keys": sorted(state),
               "data": {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}},
              open(io + "/report.json", "w"))
""")


def _timm_only(hub: Path, x: torch.Tensor, tmp_path: Path) -> tuple[torch.Tensor, dict]:
    io = tmp_path / "io"
    io.mkdir()
    torch.save(x, io / "x.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    src = str(Path(refconv.__file__).parent.parent)
    # -S -I would drop site-packages (timm); instead refconv's source folder is removed from sys.path explicitly
    code = f"import sys; sys.path = [p for p in sys.path if p.rstrip('/') != {src!r}]\n" + _TIMM_ONLY
    subprocess.run([sys.executable, "-c", code, str(hub), str(io)], check=True, env=env, cwd=str(tmp_path),
                   timeout=900)  # generous: a loaded shared machine imports torch slowly
    return torch.load(io / "y_timm.pt"), json.loads((io / "report.json").read_text())


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    torch.set_num_threads(1)
    with torch.no_grad():
        return model.eval()(x)


def test_a_registry_entry_loads_in_stock_timm(tmp_path, capsys):
    hub = tmp_path / "hub"
    assert main(["pretrained", "export", ENTRY, str(hub)]) == 0
    assert "local-dir:" in capsys.readouterr().out
    assert set(HUB_FILES) <= {p.name for p in hub.iterdir()}
    assert "library_name: timm" in (hub / "README.md").read_text()
    e = pretrained.entry(ENTRY)
    x = torch.randn(4, e.in_chans, e.image_size, e.image_size, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    try:
        ours = pretrained.load(ENTRY)
        want = _outputs(ours, x)
    finally:
        torch.set_num_threads(threads)
    got, report = _timm_only(hub, x, tmp_path)
    assert not report["refconv_imported"]
    assert torch.equal(got, want)
    assert report["keys"] == sorted(ours.state_dict())
    assert report["data"]["input_size"] == [e.in_chans, e.image_size, e.image_size]
    assert report["data"]["mean"] == list(e.mean) and report["data"]["crop_pct"] == 1.0
    with pytest.raises(ModelError, match="not empty"):
        export_pretrained(ENTRY, hub)


def test_a_torchvision_entry_is_refused(tmp_path):
    with pytest.raises(ModelError, match="torchvision model"):
        export_pretrained("fmnist/shufflenet_v2_x1_0", tmp_path / "hub")
    assert not (tmp_path / "hub").exists()


def test_a_folded_run_loads_in_stock_timm(tmp_path, capsys):
    torch.manual_seed(0)
    arch = "timm/mobilenetv3_small_050"
    model = get_model(arch, num_classes=10, in_chans=1)
    convert(model, init="default")  # RT != 0: the folded kernels differ from the basis
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_checkpoint(run / "checkpoints" / "last.pt", {
        "arch": arch, "model_kwargs": {"num_classes": 10, "in_chans": 1}, "state_dict": model.state_dict(),
        "conversion": {"layers": conversion_config(model)}, "image_size": 32, "method": "refconv",
        "task": "classification"})
    hub = tmp_path / "hub"
    assert main(["fold", str(run), "--hub-dir", str(hub), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["hub_dir"] == str(hub)
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    try:
        folded = get_model(arch, num_classes=10, in_chans=1, weights=result["weights_path"])
        want, refocused = _outputs(folded, x), _outputs(model, x)
    finally:
        torch.set_num_threads(threads)
    got, report = _timm_only(hub, x, tmp_path)
    assert not report["refconv_imported"]
    assert torch.equal(got, want)
    assert torch.allclose(got, refocused, rtol=1e-4, atol=1e-4)  # and it is the RefConv model, folded
    assert report["keys"] == sorted(folded.state_dict())
    assert report["data"]["input_size"] == [1, 32, 32]
    assert "folded" in (hub / "README.md").read_text()
