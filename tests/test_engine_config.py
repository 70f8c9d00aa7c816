"""The run config: YAML + CLI merging, validation messages, the identity hash, packaged recipes."""

from __future__ import annotations

import dataclasses

import pytest

from refconv.cli import build_parser
from refconv.cli.train import HELP, NOT_FLAGS, config_from_args
from refconv.engine import RunConfig, config_diff, config_hash, load_yaml, make_config, packaged_configs
from refconv.errors import ConfigError


def test_defaults_are_the_authors_recipe():
    cfg = RunConfig().validate()
    assert (cfg.opt, cfg.momentum, cfg.weight_decay, cfg.sched) == ("momentum", 0.9, 4e-5, "cosine")
    assert cfg.base_lr == 0.1 and cfg.lr_base_size == 512
    assert cfg.recipe_lr() == pytest.approx(0.1 * 128 / 512)  # linear scaling


def test_lr_resolution_finetune_and_explicit():
    assert make_config({"batch_size": 1024}).recipe_lr() == pytest.approx(0.2)
    ft = make_config({"method": "finetune", "weights": "x", "batch_size": 512})
    assert ft.recipe_lr() == pytest.approx(0.01)  # 0.1 x the recipe lr
    assert make_config({"lr": 0.3, "method": "finetune", "weights": "x"}).recipe_lr() == pytest.approx(0.03)


def test_yaml_then_cli_overrides(tmp_path):
    y = tmp_path / "r.yaml"
    y.write_text("epochs: 7\nbatch_size: 64\nema: true\ninclude: [a.*]\n")
    cfg = make_config(y, {"epochs": "3"})
    assert cfg.epochs == 3 and cfg.batch_size == 64 and cfg.ema is True and cfg.include == ["a.*"]


def test_unknown_yaml_key_is_named_with_a_suggestion(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("epochs: 2\nlearning_rat: 0.1\nbatch_sise: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rat' in .*bad\.yaml"):
        load_yaml(y)
    with pytest.raises(ConfigError, match=r"'batch_sise'.*Did you mean 'batch_size'"):
        make_config({"batch_sise": 3})


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"epochs": "two"}, r"epochs must be int"),
        ({"epochs": 0}, r"epochs must be >= 1"),
        ({"method": "refcov"}, r"Did you mean 'refconv'"),
        ({"amp": "fp8"}, r"amp must be one of"),
        ({"map_k": 2}, r"map_k must be odd"),
        ({"method": "continue"}, r"needs? .*--weights|no weights were given"),
        ({"label_smoothing": 1.5}, r"label_smoothing"),
        ({"groups": 2, "max_group_size": 4, "method": "refconv"}, r"not both"),
    ],
)
def test_bad_values_name_the_key(changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_config(changes)


def test_bad_yaml_file(tmp_path):
    y = tmp_path / "x.yaml"
    y.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(y)
    y.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(y)
    with pytest.raises(ConfigError, match="neither a file nor a packaged recipe"):
        load_yaml(tmp_path / "missing.yaml")


def test_hash_ignores_execution_only_keys():
    a = make_config({"epochs": 2})
    b = make_config({"epochs": 2, "workers": 4, "out": "elsewhere", "progress": "plain", "checkpoint_every_steps": 5})
    assert config_hash(a) == config_hash(b)
    c = make_config({"epochs": 3})
    assert config_hash(a) != config_hash(c)
    assert config_diff(a, c) == {"epochs": (2, 3)}


def test_packaged_recipes_load():
    shipped = packaged_configs()
    assert {"authors-imagenet", "fashion-mnist"} <= set(shipped)
    auth = make_config("authors-imagenet")
    assert auth.epochs == 100 and auth.warmup_epochs == 5 and auth.batch_size == 512
    assert auth.recipe_lr() == pytest.approx(0.1)
    make_config("fashion-mnist")


def test_every_config_key_has_a_documented_flag():
    parser = build_parser()
    fields = [f.name for f in dataclasses.fields(RunConfig) if f.name not in NOT_FLAGS]  # task: the command's
    assert set(HELP) == set(fields)
    args = parser.parse_args(["train", "--epochs", "4", "--no-augment", "--include", "a", "--include", "b",
                              "--method", "refconv", "--groups", "none", "--lr", "0.5"])
    cfg = config_from_args(args)
    assert cfg.epochs == 4 and cfg.augment is False and cfg.include == ["a", "b"] and cfg.lr == 0.5
    assert cfg.groups is None
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    for name in fields:
        assert "--" + name.replace("_", "-") in help_text


def test_task_keys_and_the_config_hash():
    """The task keys joined the config without changing a classification run's identity: the shipped model's
    recorded config (trained before tasks existed) still hashes to the hash recorded with it."""
    import json
    from importlib import resources

    card = json.loads((resources.files("refconv") / "weights/fmnist/mobilenetv3_small_100.json").read_text())
    recorded = card["recipe"]
    assert "task" not in recorded["config"]
    resolved = make_config(recorded["config"])
    assert resolved.task == "classification" and config_hash(resolved) == recorded["config_hash"]
    with pytest.raises(ConfigError, match="task must be one of classification, detection, segmentation"):
        make_config({"task": "detect"})
    with pytest.raises(ConfigError, match="not classification settings"):
        make_config({"task_options": {"scope": "all"}})
    # a detection run: its options count, except where its data lives
    det = make_config({"task": "detection", "model": "ssdlite320_mobilenet_v3_large", "data": "synthetic"})
    assert det.task_options["scope"] == "backbone"  # resolved: config.yaml names every option
    moved = det.replace(task_options={**det.task_options, "fashion_mnist_dir": "/elsewhere"})
    assert config_hash(moved) == config_hash(det)
    other = det.replace(task_options={**det.task_options, "scope": "all"})
    assert config_diff(det, other) == {"task_options.scope": ("backbone", "all")}
