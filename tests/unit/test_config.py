"""Config loading: YAML defaults, CLI overrides, unknown keys named with the closest valid one."""

from pathlib import Path

import pytest
import yaml

from tuneloop.config import from_dict, load_config, parse_overrides, reference
from tuneloop.errors import UserError

EXAMPLES = sorted(Path(__file__).parents[2].glob("examples/*/config.yaml"))


def test_overrides_parse_as_yaml_scalars():
    assert parse_overrides(["--train.lr", "1e-4", "--data.labels=a,b", "--eval.evaluate_base", "false"]) == {
        "train": {"lr": "1e-4"}, "data": {"labels": "a,b"}, "eval": {"evaluate_base": False}}


def test_cli_overrides_win_over_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"train": {"lr": 0.1, "batch_size": 4}, "data": {"source": "x.jsonl"}}))
    cfg = load_config(p, ["--train.lr", "1e-4", "--data.labels", "neg,pos"])
    assert cfg.train.lr == 1e-4 and cfg.train.batch_size == 4
    assert cfg.data.labels == ["neg", "pos"]


@pytest.mark.parametrize("raw, message", [
    ({"train": {"learning_rate": 1}}, "unknown config key 'train.learning_rate' (did you mean 'train.lr'"),
    ({"trian": {}}, "unknown config key 'trian' (did you mean 'train'?)"),
    ({"train": {"batch_size": "big"}}, "config key 'train.batch_size': expected int"),
    ({"adapter": {"method": "qlora"}}, "adapter.method must be lora, dora or full"),
    ({"train": "fast"}, "config section 'train' must be a mapping"),
])
def test_bad_configs_name_the_key(raw, message):
    with pytest.raises(UserError) as e:
        from_dict(raw)
    assert message in str(e.value)


def test_missing_config_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_reference_documents_every_key():
    rows = reference()
    keys = {r[0] for r in rows}
    assert {"train.lr", "data.source", "adapter.r", "model.base", "eval.max_new_tokens", "seed"} <= keys
    assert all(r[3] for r in rows), [r[0] for r in rows if not r[3]]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_every_shipped_config_parses(path):
    cfg = load_config(path)
    assert cfg.data.source and cfg.output_dir
