"""Every user-caused error, in every command, is one line ``refconv CMD: error: ...`` and exit code 1.

Walks the command line through bad inputs (the ones users reported among them, issue 13) in-process
(``refconv.cli.main``: a subprocess costs seconds of torch import each) and fails on any traceback, any
exit code but 1, and any error that is not exactly one line naming the problem.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from _datagen import truncate, write_fashion_mnist, write_image_folder

from refconv.cli import main
from refconv.engine.rundir import RunDirLock

MODEL = "timm/test_resnet"
# The one deliberately multi-line message: a missing dataset lists where it was searched and the ways to get it.
MULTILINE = "multiline"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny data, a finished baseline and RefConv run, and a gallery of bad files."""
    root = tmp_path_factory.mktemp("bad")
    data = write_fashion_mnist(root / "data", n_train=32, n_test=16)
    common = ["--model", MODEL, "--data-dir", str(data), "--epochs", "1", "--batch-size", "16", "--warmup-epochs",
              "0", "--progress", "none"]
    assert main(["train", *common, "--out", str(root / "base")]) == 0
    assert main(["train", *common, "--out", str(root / "ref"), "--method", "refconv", "--weights",
                 str(root / "base"), "--include", "layer1*"]) == 0
    (root / "a-file").write_text("x")
    (root / "a-dir").mkdir()
    (root / "stranger").mkdir()
    (root / "stranger" / "notes.txt").write_text("keep")
    (root / "junk.safetensors").write_bytes(b"garbage")
    (root / "junk.pt").write_bytes(b"garbage")
    (root / "unknown-key.yaml").write_text("epoch: 3\n")
    (root / "not-yaml.yaml").write_text("model: [unclosed\n")
    (root / "empty-data").mkdir()
    shutil.copytree(root / "ref", root / "ref-truncated")
    truncate(root / "ref-truncated" / "checkpoints" / "last.pt", 0.5)
    (root / "ref-truncated" / "done.json").unlink()  # unfinished: resuming it must read last.pt
    from safetensors.torch import load_file

    torch.save(load_file(str(root / "base" / "model.safetensors")), root / "foreign.pth")
    one = write_image_folder(root / "one-class", classes=("cat",), per_class={"train": 4, "val": 2})
    corrupt = write_image_folder(root / "corrupt", classes=("a", "b"), per_class={"train": 2, "val": 1})
    (corrupt / "train" / "a" / "0.png").write_bytes(b"not an image")
    return {"root": root, "data": data, "common": common, "one": one, "corrupt": corrupt}


def _cases(env):
    r, c, d = env["root"], env["common"], str(env["data"])
    out = ["--out", str(r / "new")]
    train = ["train", *c]
    return [
        # ---- train: model and recipe
        (["train"], "no model given"),
        (["train", "--data-dir", d], "Example: refconv train"),
        ([*train, *out, "--model", "tv/mobilenet_v3_smal"], "mobilenet_v3_small"),
        ([*train, *out, "--epochs", "zero"], "epochs must be int"),
        (["train", "--config", str(r / "unknown-key.yaml")], "unknown config key 'epoch'"),
        (["train", "--config", str(r / "not-yaml.yaml")], "not valid YAML"),
        (["train", "--config", "fashion-mnsit", *out], "packaged recipe"),
        ([*train, *out, "--lr", "-1"], "lr must be > 0"),
        ([*train, *out, "--map-k", "2"], "map_k must be odd"),
        ([*train, *out, "--groups", "2", "--max-group-size", "4"], "not both"),
        ([*train, *out, "--method", "refconvv"], "Did you mean 'refconv'"),
        ([*train, *out, "--label-smoothing", "1.5"], "label_smoothing must be in [0, 1)"),
        ([*train, *out, "--ema-decay", "2"], "ema_decay must be in (0, 1)"),
        ([*train, *out, "--subset-train", "0"], "subset_train must be >= 1"),
        ([*train, *out, "--method", "continue"], "--weights PATH|RUN_DIR"),
        ([*train, *out, "--opt", "nosuchopt"], "cannot build optimizer"),
        ([*train, *out, "--sched", "nosuchsched"], "scheduler"),
        ([*train, *out, "--method", "refconv", "--include", "nothing*"], "nothing*"),
        ([*train, *out, "--method", "refconv", "--refocus-impl", "implicit", "--opt", "adamw"],
         "SGD family (sgd, nesterov, momentum)"),
        ([*train, *out, "--method", "refconv", "--refocus-precond", "isotropic"], "Add --refocus-impl implicit"),
        ([*train, *out, "--weights", str(r / "missing.pth")], "missing.pth"),
        ([*train, *out, "--weights", str(r / "junk.pt")], "truncated or empty weights file"),
        ([*train, *out, "--model", "timm/test_efficientnet", "--weights", str(r / "base")], "does not fit the model"),
        ([*train, *out, "--weights", str(r / "ref" / "checkpoints" / "last.pt")], "RefConv"),
        # ---- train: data
        ([*train, *out, "--data", "fashion-mnsit"], "fashion-mnist"),
        ([*train, *out, "--data", "cifar10", "--data-dir", str(r / "empty-data")], "not found", MULTILINE),
        ([*train, *out, "--data", "imagefolder", "--data-dir", str(r / "nowhere")], "does not exist"),
        ([*train, *out, "--in-chans", "2"], "in_chans must be 1 or 3"),
        ([*train, *out, "--image-size", "4"], "image_size must be an int >= 8"),
        ([*train, *out, "--batch-size", "512"], "larger than the 32 training images"),
        ([*train, *out, "--num-classes", "5"], "smaller than the 10 classes"),
        ([*train, *out, "--model", "tv/alexnet", "--image-size", "8"], "cannot take 1x8x8 inputs"),
        ([*train, *out, "--model", "timm/test_convnext", "--image-size", "28"], "cannot take 1x28x28 inputs"),
        ([*train, *out, "--data", "imagefolder", "--data-dir", str(env["one"]), "--image-size", "32",
          "--batch-size", "2"], "1 class ('cat')"),
        ([*train, "--out", str(r / "corrupt-run"), "--data", "imagefolder", "--data-dir", str(env["corrupt"]),
          "--image-size", "32", "--batch-size", "2"], "0.png cannot be read"),  # training started: its own --out
        # ---- train: run directories
        ([*train, "--out", str(r / "a-file")], "existing file, not a directory"),
        ([*train, "--out", str(r / "a-file" / "run")], "not writable"),
        ([*train, "--out", str(r / "locked")], "in use by another refconv process (PID"),
        ([*train, "--out", str(r / "base"), "--lr", "0.3"], "different config"),
        ([*train, "--out", str(r / "stranger")], "not empty"),
        ([*train, "--out", str(r / "stranger"), "--overwrite"], "does not look like a refconv run"),
        (["train", "--resume", str(r / "nowhere")], "not a refconv run directory"),
        (["train", "--resume", str(r / "base"), "--lr", "0.5"], "config differs"),
        (["train", "--resume", str(r / "base"), "--out", str(r / "other")], "different runs"),
        (["train", "--resume", str(r / "ref-truncated")], "truncated or corrupt"),
        (["train", "--resume", str(r / "ref-truncated"), "--epochs", "3"], "config differs"),
        # ---- eval
        (["eval", "--weights", str(r / "missing")], "does not exist"),
        (["eval", "--weights", str(r / "junk.safetensors")], "truncated or empty weights file"),
        (["eval", "--weights", str(r / "junk.pt")], "truncated or corrupt"),
        (["eval", "--weights", str(r / "foreign.pth"), "--data-dir", d], "--model"),
        (["eval", "--weights", str(r / "stranger")], "not a refconv run"),
        (["eval", "--weights", str(r / "foreign.pth"), "--model", "timm/test_efficientnet", "--data-dir", d],
         "does not fit the model"),
        (["eval", "--weights", str(r / "base"), "--data", "cifar10", "--data-dir", str(r / "empty-data")],
         "not found", MULTILINE),
        # ---- fold
        (["fold", str(r / "missing")], "does not exist"),
        (["fold", str(r / "base")], "nothing to fold"),
        (["fold", str(r / "ref"), "--out", str(r / "a-dir")], "is a directory"),
        (["fold", str(r / "ref-truncated")], "truncated or corrupt"),
        (["fold", str(r / "ref"), "--checkpoint", "best", "--out", str(r / "a-file" / "x.safetensors")],
         "cannot write"),
        # ---- convert-info
        (["convert-info", "--model", "timm/test_resnett"], "test_resnet"),
        (["convert-info", "--model", MODEL, "--map-k", "2"], "map_k must be odd"),
        (["convert-info", "--model", MODEL, "--include", "nothing*"], "nothing*"),
        (["convert-info", "--model", MODEL, "--groups", "7"], "does not divide"),
        (["convert-info", "--model", MODEL, "--spectrum"], "add --weights W"),
        (["convert-info", "--model", MODEL, "--weights", str(r / "base"), "--num-classes", "10", "--in-chans", "1",
          "--spectrum", "--map-k", "9"], "lower map_k"),
        # ---- analyze
        (["analyze", "--baseline", str(r / "missing"), "--refconv", str(r / "ref")], "does not exist"),
        (["analyze", "--baseline", str(r / "base"), "--refconv", str(r / "ref"), "--sections", "bogus"], "bogus"),
        (["analyze", "--baseline", str(r / "base"), "--refconv", str(r / "ref"), "--sections", "landscape",
          "--num-batches", "3", "--subset", "16", "--out", str(r / "an")], "--num-batches 1"),
        # ---- detect / segment (validated before any data is generated or read)
        (["detect", "--data", "voc", "--data-dir", str(r / "nowhere"), "--out", str(r / "det")], "does not exist"),
        (["detect", "--arch", "ssd300_vgg16", "--image-size", "100", "--out", str(r / "det")], "too small"),
        (["detect", "--arch", "bogus", "--out", str(r / "det")], "unknown architecture 'bogus'"),
        (["detect", "--out", str(r / "a-file"), "--data", "voc", "--data-dir", str(r / "nowhere")],
         "existing file, not a directory"),
        (["segment", "--data", "cityscapes", "--data-dir", str(r / "nowhere"), "--out", str(r / "seg")],
         "not a Cityscapes root"),
        # ---- sweep / demo
        (["sweep", str(r / "missing-sweep.yaml")], "missing-sweep.yaml"),
        (["sweep", str(r / "unknown-key.yaml"), "--estimate"], "epoch"),
        (["demo", "--out", str(r / "a-file")], "a-file"),
    ]


def test_bad_inputs_are_one_line_errors(env, capsys):
    failures = []
    with RunDirLock(env["root"] / "locked"):  # another run owns this directory
        cases = _cases(env)
        assert len(cases) >= 40
        for argv, expected, *flags in cases:
            capsys.readouterr()
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse rejected it: not one of these cases
                rc = f"SystemExit({exc.code})"
            except BaseException as exc:  # noqa: BLE001 - the point is to catch everything
                rc = f"traceback: {type(exc).__name__}: {exc}"
            err = capsys.readouterr().err.strip()
            cmd = argv[0]
            lines = err.splitlines()
            errors = [i for i, line in enumerate(lines) if line.startswith(f"refconv {cmd}: error:")]
            message = "\n".join(lines[errors[0]:]) if len(errors) == 1 else ""
            one_line = errors == [len(lines) - 1] or (MULTILINE in flags and len(errors) == 1)
            ok = rc == 1 and "Traceback" not in err and one_line and expected in message
            if not ok:
                failures.append(f"{' '.join(argv)}\n    -> rc={rc}\n    {err[-600:]}")
    assert not failures, f"{len(failures)} of {len(cases)} bad inputs misbehave:\n" + "\n".join(failures)


def test_refused_runs_leave_no_directories(env):
    assert not (env["root"] / "new").exists()  # every refused train above aimed here
    assert (env["root"] / "stranger" / "notes.txt").read_text() == "keep"
    assert os.listdir(env["root"] / "a-dir") == []


def test_truncated_checkpoint_message_is_whole_sentences(env, capsys):
    assert main(["fold", str(env["root"] / "ref-truncated")]) == 1
    err = capsys.readouterr().err.strip()
    assert "truncated or corrupt" in err and err.endswith("retrain with --overwrite.") and "\n" not in err


def test_analyze_one_section_ignores_other_sections_options(env, capsys):
    r = env["root"]
    out = r / "analysis"
    # 16 test images, batches of 128: one batch, fewer than the landscape's default 4; no landscape asked
    assert main(["analyze", "--baseline", str(r / "base"), "--refconv", str(r / "ref"), "--sections", "redundancy",
                 "--subset", "16", "--out", str(out), "--no-plots"]) == 0
    assert (out / "analysis.json").is_file()
    assert "channel_diversity" in capsys.readouterr().out


def test_convert_info_takes_in_chans(capsys):
    import json

    assert main(["convert-info", "--model", MODEL, "--in-chans", "1", "--json"]) == 0
    stem = json.loads(capsys.readouterr().out)["layers"][0]
    assert stem["shape"][1] == 1  # the 1-channel stem a Fashion-MNIST model has, not the 3-channel default
