"""The registry of pretrained models: listing, names, SHA-256 checks, publish from a real run, ``--weights fmnist/...``
in train/eval, and loading the timm way.

A temporary entry (``fmnist/tiny``, timm ``test_resnet`` at 32 px) is trained for two epochs on fake Fashion-MNIST
files and published into a temporary registry root (``$REFCONV_PRETRAINED_DIR``), so every path runs for real in
seconds; the shipped entries are checked the same way wherever their weights are present.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from _datagen import write_fashion_mnist
from safetensors.torch import save_file

import refconv
from refconv.cli import main
from refconv.engine import make_config, run
from refconv.engine.publish import plateau, publish
from refconv.errors import PretrainedError, PretrainedNotShippedError, UnknownPretrainedError
from refconv.models import create_model, get_model, load_weights
from refconv.models import pretrained as reg

TINY = "fmnist/tiny"
RECIPE = {"model": "timm/test_resnet", "data": "fashion-mnist", "image_size": 32, "epochs": 2, "batch_size": 16,
          "lr": 0.1, "warmup_epochs": 0, "seed": 0}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 2-epoch run of the tiny recipe: (recipe path, data dir, run result)."""
    root = tmp_path_factory.mktemp("pretrained")
    data_dir = write_fashion_mnist(root / "data", n_train=64, n_test=32)
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    result = run(make_config(recipe, {"out": str(root / "run"), "data_dir": str(data_dir), "progress": "none"}))
    return recipe, data_dir, result


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """An empty registry root; ``add(entry)`` registers an entry for the test's duration."""
    root = tmp_path / "registry"
    monkeypatch.setenv(reg.ROOT_ENV, str(root))

    def add(**kw):
        entry = reg.PretrainedEntry(**kw)
        monkeypatch.setitem(reg.ENTRIES, entry.name, entry)
        return entry

    return root, add


@pytest.fixture
def published(tiny_run, registry):
    recipe, data_dir, result = tiny_run
    root, add = registry
    entry = add(name=TINY, model="timm/test_resnet", recipe=str(recipe), image_size=32, summary="a test entry")
    card = publish(result.run_dir, TINY, machine="the test runner")
    return entry, card, data_dir, result


# ------------------------------------------------------------------------------------------- the shipped registry
def test_listing_names_architecture_size_accuracy_and_weights(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(reg.ROOT_ENV, str(tmp_path))  # an empty root: nothing trained
    assert main(["pretrained"]) == 0
    out = capsys.readouterr().out
    for name, entry in reg.ENTRIES.items():
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert entry.model in line and f"1x{entry.image_size}x{entry.image_size}" in line and "not trained yet" in line
    assert main(["pretrained", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(reg.ENTRIES) >= {"fmnist/mobilenetv3_small_100"}


@pytest.mark.parametrize("name", sorted(reg.ENTRIES))
def test_shipped_recipes_fit_their_entries(name, capsys):
    entry = reg.ENTRIES[name]
    cfg = make_config(entry.recipe)
    assert reg.same_model(cfg.model, entry.model) and cfg.image_size == entry.image_size and cfg.data == entry.data
    assert cfg.subset_train is None and cfg.subset_test is None  # the full 60,000 / 10,000 images
    assert cfg.method == "baseline" and cfg.weights is None and not cfg.pretrained  # from scratch
    assert main(["train", "--config", entry.recipe, "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["epochs"] == cfg.epochs


def _shipped(name):
    entry = reg.ENTRIES[name]
    if reg.weights_status(name) == "not trained yet":
        pytest.skip(f"{name} not trained yet: {entry.train_command()} && {entry.publish_command()}")
    path = reg.weights_path(name)  # SHA-256 checked
    model = create_model(entry.model, num_classes=entry.num_classes, in_chans=entry.in_chans)
    load_weights(model, path, strict=True)
    return entry, model, reg.read_card(name)


@pytest.mark.parametrize("name", sorted(reg.ENTRIES))
def test_shipped_weights_match_their_card(name):
    """The registry contract, for every entry that has shipped weights (none is skipped silently)."""
    _, _, card = _shipped(name)
    assert card["test"]["images"] == 10000 and card["full_data"] and card["recipe"]["matches"]
    assert card["epochs"] == len(card["curve"]) and card["test_top1"] == card["curve"][-1]["test_top1"]


@pytest.mark.parametrize("name", sorted(reg.ENTRIES))
def test_shipped_weights_reach_their_card_accuracy(name, real_fashion_mnist):
    """A few hundred real test images agree with the card within the sampling error (``make test`` provides
    the real data; without it this fails, naming ``make data``)."""
    from torch.utils.data import DataLoader

    from refconv.data import build_dataset
    from refconv.engine.loop import evaluate

    entry, model, card = _shipped(name)
    ds, _ = build_dataset(entry.data, "test", data_dir=real_fashion_mnist, image_size=entry.image_size,
                          in_chans=entry.in_chans, augment=False, subset=300, seed=0)
    got = evaluate(model.eval(), DataLoader(ds, batch_size=100), device=torch.device("cpu"))["top1"]
    p = card["test_top1"] / 100
    assert abs(got / 100 - p) <= 4 * (p * (1 - p) / len(ds)) ** 0.5 + 1 / len(ds), (got, card["test_top1"])


def test_wrong_name_lists_the_names(capsys):
    with pytest.raises(UnknownPretrainedError, match="Did you mean 'fmnist/mobilenetv3_small_100'.*fmnist/shufflenet_v2_x1_0"):
        reg.weights_path("fmnist/mobilenetv3_small")
    with pytest.raises(UnknownPretrainedError, match="registry has"):
        create_model("fmnist/nope")
    assert main(["pretrained", "path", "fmnist/shufflenet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fmnist/shufflenet_v2_x1_0" in err


def test_missing_weights_name_the_commands_that_make_them(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(reg.ROOT_ENV, str(tmp_path))
    with pytest.raises(PretrainedNotShippedError) as info:
        refconv.pretrained.load("fmnist/mobilenetv3_small_100")
    msg = str(info.value)
    assert "refconv train --config pretrained/fmnist-mobilenetv3_small_100 --out" in msg
    assert "refconv pretrained publish runs/pretrained/fmnist-mobilenetv3_small_100 --name fmnist/mobilenetv3_small_100" in msg
    assert main(["eval", "--weights", "fmnist/shufflenet_v2_x1_0"]) == 1
    assert "refconv train --config pretrained/fmnist-shufflenet_v2_x1_0" in capsys.readouterr().err


def test_weights_that_do_not_fit_the_card_are_refused_before_training():
    with pytest.raises(PretrainedError, match="What matches: --model timm/mobilenetv3_small_100 --image-size 64"):
        make_config({"weights": "fmnist/mobilenetv3_small_100", "model": "timm/mobilenetv3_small_100"})  # 28 px
    with pytest.raises(PretrainedError, match="model timm/resnet18"):
        make_config({"weights": "fmnist/mobilenetv3_small_100", "model": "timm/resnet18", "image_size": 64})
    make_config({"weights": "fmnist/mobilenetv3_small_100", "model": "mobilenetv3_small_100", "image_size": 64,
                 "method": "refconv"})
    with pytest.raises(UnknownPretrainedError):
        make_config({"weights": "fmnist/mobilenet", "method": "continue"})


def test_plateau():
    assert plateau([80, 85, 88, 89, 90, 90.1, 90.1, 90.1, 90.2, 90.2]) == {"last_epochs": 2, "gain_pt": pytest.approx(0.1),
                                                                          "converged": True}
    assert not plateau([70, 75, 80, 85, 90])["converged"]
    assert plateau([90])["gain_pt"] is None


# ------------------------------------------------------------------------------------------- publish and use
def test_publish_writes_weights_and_card(published, capsys):
    entry, card, data_dir, result = published
    files = reg.entry_files(TINY)
    for kind in ("weights", "card", "markdown", "plot"):
        assert files[kind].is_file(), kind
    assert files["weights"].read_bytes() == (result.run_dir / "model.safetensors").read_bytes()
    assert card["sha256"] == reg.sha256_file(files["weights"]) and card == json.loads(files["card"].read_text())
    assert card["recipe"]["matches"] and card["recipe"]["differences"] == {}
    assert card["epochs"] == 2 and [r["epoch"] for r in card["curve"]] == [1, 2]
    assert card["test_top1"] == result.final["top1"] and card["test"]["images"] == 32
    assert card["train_top1"] == result.history[-1]["train_top1"] and card["train_images"] == 64
    assert card["machine"] == "the test runner" and card["wall_time_s"] > 0
    md = files["markdown"].read_text()
    assert "exactly the entry recipe" in md and card["sha256"] in md and "tiny.png" in md
    assert reg.weights_status(TINY) == "ok"

    assert main(["pretrained"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(TINY))
    assert f"{card['test_top1']:.2f}%" in line and "yes" in line
    assert main(["pretrained", "show", TINY]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# {TINY}") and "weights: ok" in out
    assert main(["pretrained", "show", TINY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == card["sha256"]
    assert main(["pretrained", "path", TINY]) == 0
    assert capsys.readouterr().out.strip() == str(files["weights"])

    with pytest.raises(PretrainedError, match="--overwrite"):
        publish(result.run_dir, TINY)
    assert main(["pretrained", "publish", str(result.run_dir), "--name", TINY, "--overwrite", "--no-plot"]) == 0
    assert "published fmnist/tiny" in capsys.readouterr().out and not files["plot"].exists()


def test_python_api_loads_the_published_model(published):
    entry, card, data_dir, result = published
    x = torch.randn(2, 1, 32, 32)
    ref = create_model("timm/test_resnet", num_classes=10, in_chans=1, weights=result.run_dir / "model.safetensors")
    ref.eval()
    assert not refconv.pretrained.load(TINY).training  # load: eval mode; every builder: train mode, as torch's
    assert create_model(TINY).training and get_model(TINY).training
    for model in (refconv.pretrained.load(TINY), create_model(TINY).eval(), get_model(TINY).eval()):
        assert torch.equal(model(x), ref(x))
    plain = create_model("timm/test_resnet", num_classes=10, in_chans=1, weights=TINY)  # weights= takes names too
    assert torch.equal(plain.eval()(x), ref(x))


def test_publish_refuses_runs_that_do_not_fit(tiny_run, registry, tmp_path):
    recipe, data_dir, result = tiny_run
    root, add = registry
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**RECIPE, "epochs": 3}))
    add(name=TINY, model="timm/test_resnet", recipe=str(other), image_size=32)
    with pytest.raises(PretrainedError, match=r"not trained with .*epochs: 3 in the recipe, 2 in the run.*--allow-recipe-diff"):
        publish(result.run_dir, TINY)
    assert not reg.entry_files(TINY)["weights"].exists()  # nothing copied
    card = publish(result.run_dir, TINY, allow_recipe_diff=True, plot=False)
    assert not card["recipe"]["matches"] and card["recipe"]["differences"] == {"epochs": {"recipe": 3, "run": 2}}

    add(name=TINY, model="timm/test_resnet", recipe=str(recipe), image_size=64)
    with pytest.raises(PretrainedError, match="image_size 32 .the entry: 64"):
        publish(result.run_dir, TINY, overwrite=True)
    with pytest.raises(UnknownPretrainedError):
        publish(result.run_dir, "fmnist/tiny2")
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "checkpoints" / "last.pt").write_bytes(b"x")
    add(name=TINY, model="timm/test_resnet", recipe=str(recipe), image_size=32)
    with pytest.raises(refconv.CheckpointError, match="refconv train --resume"):
        publish(unfinished, TINY)


def test_sha_mismatch_is_refused_with_one_line(published, capsys):
    entry, card, data_dir, result = published
    weights = reg.entry_files(TINY)["weights"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit of a tensor: still a readable file, other weights
    weights.write_bytes(bytes(data))
    with pytest.raises(PretrainedError, match="does not match its card.*republish it with `refconv pretrained publish"):
        refconv.pretrained.load(TINY)
    assert reg.weights_status(TINY) == "SHA-256 mismatch"
    assert main(["eval", "--weights", TINY, "--data-dir", str(data_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SHA-256" in err
    reg.entry_files(TINY)["card"].unlink()
    with pytest.raises(PretrainedError, match="no model card"):
        reg.weights_path(TINY)


def test_weights_name_in_train_and_eval(published, tmp_path, capsys):
    entry, card, data_dir, result = published
    assert main(["eval", "--weights", TINY, "--data-dir", str(data_dir), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["correct1"] == result.final["correct1"] and record["model"] == "timm/test_resnet"

    out = tmp_path / "cont"
    assert main(["train", "--config", entry.recipe, "--method", "continue", "--weights", TINY, "--epochs", "1",
                 "--data-dir", str(data_dir), "--out", str(out), "--progress", "none"]) == 0
    done = json.loads((out / "done.json").read_text())
    assert done["extra"]["start_weights"] == str(reg.entry_files(TINY)["weights"])

    capsys.readouterr()
    assert main(["train", "--config", entry.recipe, "--method", "continue", "--weights", TINY, "--image-size", "28",
                 "--data-dir", str(data_dir), "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "image size 28" in err and "What matches: --model timm/test_resnet --image-size 32" in err
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    assert main(["eval", "--weights", TINY, "--image-size", "28", "--data-dir", str(data_dir)]) == 1
    assert main(["eval", "--weights", TINY, "--model", "timm/resnet18", "--data-dir", str(data_dir)]) == 1
    assert "What matches" in capsys.readouterr().err


def test_timm_way_loads_strictly_and_exactly(registry, tmp_path):
    """timm.create_model(..., pretrained=True, pretrained_cfg_overlay=timm_overlay(name)): the same outputs."""
    timm = pytest.importorskip("timm")
    root, add = registry
    name = "fmnist/timm_tiny"
    entry = add(name=name, model="timm/mobilenetv3_small_050", recipe="unused.yaml", image_size=32)
    stock = timm.create_model("mobilenetv3_small_050", num_classes=10, in_chans=1).eval()
    files = reg.entry_files(name)
    files["weights"].parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in stock.state_dict().items()}, str(files["weights"]))  # as publish ships
    files["card"].write_text(json.dumps({"name": name, "model": entry.model, "sha256": reg.sha256_file(files["weights"])}))

    x = torch.randn(2, 1, 32, 32)
    overlay = refconv.pretrained.timm_overlay(name)
    assert overlay["file"] == str(files["weights"]) and overlay["num_classes"] == 10
    model = timm.create_model("mobilenetv3_small_050", pretrained=True, num_classes=10, in_chans=1,
                              pretrained_cfg_overlay=overlay).eval()
    assert torch.equal(model(x), stock(x))
    model = timm.create_model(**refconv.pretrained.timm_kwargs(name)).eval()
    assert torch.equal(model(x), stock(x))
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["input_size"] == (1, 32, 32) and data_cfg["mean"] == reg.FMNIST_MEAN and data_cfg["crop_pct"] == 1.0

    files["weights"].write_bytes(files["weights"].read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(PretrainedError, match="SHA-256"):
        refconv.pretrained.timm_overlay(name)


def test_registry_root_is_overridable(tmp_path, monkeypatch):
    monkeypatch.delenv(reg.ROOT_ENV, raising=False)
    assert reg.registry_root() == Path(refconv.__file__).parent / "weights"
    assert reg.registry_root(tmp_path) == tmp_path
    monkeypatch.setenv(reg.ROOT_ENV, str(tmp_path / "x"))
    files = reg.entry_files("fmnist/shufflenet_v2_x1_0")
    assert files["weights"] == tmp_path / "x" / "fmnist" / "shufflenet_v2_x1_0.safetensors"
    assert not reg.is_pretrained_name("runs/fmnist") and reg.is_pretrained_name("fmnist/shufflenet_v2_x1_0")
    with pytest.raises(PretrainedError, match="torchvision model"):
        reg.timm_overlay("fmnist/shufflenet_v2_x1_0")


def test_sweep_baseline_weights_take_a_registry_name(published):
    from refconv.protocol.sweep import parse_sweep

    entry, card, data_dir, result = published
    base = {"model": "timm/test_resnet", "data": "fashion-mnist", "image_size": 32, "warmup_epochs": 0}
    spec = parse_sweep({"base": base, "baseline": {"weights": TINY}, "seeds": 1, "budgets": [1],
                        "settings": [{"name": "refconv"}], "controls": ["continue"]})
    assert spec.baseline_weights == TINY  # the name, not the file it resolves to on this machine
    with pytest.raises(PretrainedError, match="What matches"):
        parse_sweep({"base": {**base, "image_size": 28}, "baseline": {"weights": TINY}, "seeds": 1, "budgets": [1],
                     "settings": [{"name": "refconv"}], "controls": ["continue"]})


def test_card_machine_comes_from_the_training_host(tiny_run, registry, tmp_path):
    import shutil

    recipe, data_dir, result = tiny_run
    root, add = registry
    add(name=TINY, model="timm/test_resnet", recipe=str(recipe), image_size=32)
    copy = shutil.copytree(result.run_dir, tmp_path / "copied", ignore=shutil.ignore_patterns("checkpoints"))
    card = publish(copy, TINY, plot=False)  # publishing needs no checkpoints
    assert "process(es) on cpu" in card["machine"] and "pass --machine" in card["machine"]
    (copy / "machine.txt").write_text("1x NVIDIA H200, 16 CPU cores\n")
    assert publish(copy, TINY, plot=False, overwrite=True)["machine"] == "1x NVIDIA H200, 16 CPU cores"


def test_snapshot_entry_publishes_the_kept_epoch(tmp_path, registry):
    """A snapshot entry (the study's under-trained start) ships ``checkpoints/epoch-N.pt`` of its recipe's run as
    stock safetensors, with the card's test figures of that epoch; a run without the snapshot is refused."""
    root, add = registry
    data_dir = write_fashion_mnist(tmp_path / "data", n_train=64, n_test=32)
    recipe = tmp_path / "snap.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "epochs": 3, "snapshot_epochs": [1]}))
    result = run(make_config(recipe, {"out": str(tmp_path / "run"), "data_dir": str(data_dir), "progress": "none"}))
    add(name="fmnist/tiny_e1", model="timm/test_resnet", recipe=str(recipe), image_size=32, snapshot_epoch=1)
    card = publish(result.run_dir, "fmnist/tiny_e1", machine="the test runner")
    assert card["epochs"] == 1 and card["snapshot"]["epoch"] == 1 and card["snapshot"]["of_epochs"] == 3
    assert card["test_top1"] == result.history[0]["test_top1"] and card["test"]["correct"] == result.history[0]["test_correct"]
    model = create_model("timm/test_resnet", num_classes=10, in_chans=1)
    load_weights(model, reg.weights_path("fmnist/tiny_e1"), strict=True)
    snap = torch.load(result.run_dir / "checkpoints" / "epoch-1.pt", map_location="cpu", weights_only=False)
    assert all(torch.equal(v, snap["state_dict"][k]) for k, v in model.state_dict().items())
    (result.run_dir / "checkpoints" / "epoch-1.pt").unlink()
    with pytest.raises(refconv.CheckpointError, match="snapshot_epochs"):
        publish(result.run_dir, "fmnist/tiny_e1", overwrite=True)
