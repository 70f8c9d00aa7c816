"""The ``refconv`` command line: train / eval / fold / convert-info, exit codes, messages, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from _datagen import write_fashion_mnist

from refconv.cli import main

MODEL = "timm/test_resnet"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("cli") / "data", n_train=96, n_test=32)


def _train_args(data_dir, out, *extra):
    return ["train", "--config", "fashion-mnist", "--model", MODEL, "--data-dir", str(data_dir), "--epochs", "1",
            "--batch-size", "16", "--warmup-epochs", "0", "--subset-train", "96", "--out", str(out), "--progress",
            "plain", *extra]


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "train" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--version"])


def test_print_config_merges_recipe_and_flags(data_dir, tmp_path, capsys):
    assert main(_train_args(data_dir, tmp_path / "x", "--lr", "0.3", "--print-config")) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["lr"] == 0.3 and cfg["model"] == MODEL and cfg["opt"] == "momentum" and cfg["epochs"] == 1
    assert not (tmp_path / "x").exists()


def test_train_eval_fold_convert_info(data_dir, tmp_path, capsys):
    base = tmp_path / "base"
    assert main(_train_args(data_dir, base)) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1:" in err and "deployable weights" in err  # plain log lines + summary when not a TTY
    ref = tmp_path / "ref"
    assert main(_train_args(data_dir, ref, "--method", "refconv", "--weights", str(base), "--init", "zeros",
                            "--include", "layer1", "--export-onnx")) == 0
    done = json.loads((ref / "done.json").read_text())
    assert done["onnx"]["max_abs_err"] < 1e-4 and (ref / "model.onnx").is_file()
    capsys.readouterr()

    assert main(["eval", "--weights", str(ref / "folded.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and MODEL in out

    # a foreign state_dict (plain torch.save) needs --model, and says so
    foreign = tmp_path / "foreign.pth"
    from safetensors.torch import load_file

    torch.save(load_file(str(base / "model.safetensors")), foreign)
    assert main(["eval", "--weights", str(foreign), "--data-dir", str(data_dir)]) == 1
    assert "--model" in capsys.readouterr().err
    assert main(["eval", "--weights", str(foreign), "--model", MODEL, "--in-chans", "1", "--data-dir", str(data_dir),
                 "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["correct1"] == json.loads((base / "done.json").read_text())["final"]["correct1"]

    assert main(["fold", str(ref)]) == 0
    assert "max |folded - refconv|" in capsys.readouterr().out
    assert main(["fold", str(base)]) == 1
    assert "nothing to fold" in capsys.readouterr().err

    assert main(["convert-info", "--model", MODEL, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["summary"]["layers"] > 0 and info["summary"]["deployed_params"] < info["summary"]["total_params"]
    assert main(["convert-info", "--model", MODEL]) == 0
    assert "deployed after folding" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_code_1(data_dir, tmp_path, capsys):
    assert main(_train_args(data_dir, tmp_path / "m", "--model", "tv/mobilenet_v3_smal")) == 1
    err = capsys.readouterr().err
    assert err.startswith("refconv train: error:") and "mobilenet_v3_small" in err and "Traceback" not in err
    assert main(_train_args(data_dir, tmp_path / "m", "--epochs", "zero")) == 1
    assert "epochs must be int" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("epoch: 3\n")
    assert main(["train", "--config", str(bad)]) == 1
    assert "unknown config key 'epoch'" in capsys.readouterr().err


def test_resume_flags(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert main(_train_args(data_dir, run_dir)) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 0  # finished: returns the cached result
    assert "without training" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir), "--lr", "0.5"]) == 1
    assert "config differs" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir), "--out", str(tmp_path / "other")]) == 1
    assert "different runs" in capsys.readouterr().err


def test_ctrl_c_saves_and_exits_130_then_resume_finishes(data_dir, tmp_path):
    run_dir = tmp_path / "sigint"
    args = _train_args(data_dir, run_dir, "--epochs", "15", "--log-every-steps", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "refconv.cli", *args], stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if " step " in line or not line:
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    err = "".join(lines) + rest
    assert proc.returncode == 130, err
    assert "interrupt received" in err and f"refconv train --resume {run_dir}" in err and "Traceback" not in err
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["global_step"] >= 1 and not (run_dir / "done.json").exists()
    assert main(["train", "--resume", str(run_dir), "--epochs", "15"]) == 0
    assert json.loads((run_dir / "done.json").read_text())["history"][-1]["epoch"] == 15
