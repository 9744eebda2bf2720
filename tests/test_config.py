import json

import pytest

from vlx import config
from vlx.errors import ConfigError


def write(tmp_path, body):
    path = tmp_path / "cfg.py"
    path.write_text("import ml_collections\n\ndef get_config():\n" + body)
    return path


def test_recipe_configs_load():
    for name in ("demo", "clip_vit_b32", "clip_vit_b16", "siglip_b16"):
        cfg = config.load(f"configs/{name}.py")
        assert cfg.model.image.variant
    lit = config.load("configs/lit.py:open_clip:/models/vit-b-16")
    assert lit.init_from == "open_clip:/models/vit-b-16#image" and lit.optim.freeze == "image.*"
    with pytest.raises(ConfigError, match="^configs/lit.py: name the image tower's weights"):
        config.load("configs/lit.py")


def test_config_argument_may_be_a_path(tmp_path):
    cfg = config.load(f"configs/small.py:{tmp_path}/my:data")
    assert cfg.data.source == f"arrayrecord:{tmp_path}/my:data"


def test_overrides_are_typed():
    cfg = config.load(
        "configs/demo.py",
        [
            "--config.batch_size=64",
            "--config.optim.lr=1e-3",
            "--config.model.scan=false",
            "--config.model.image.pool=gap",
            "--config.evals.zeroshot.every_steps=7",
            "--config.optim.lr_mults=(('image.*', 0.1), (r'text\\.proj\\..*', 2))",
        ],
    )
    assert cfg.optim.lr_mults == (("image.*", 0.1), (r"text\.proj\..*", 2))
    assert cfg.batch_size == 64 and cfg.optim.lr == 1e-3 and cfg.model.scan is False
    assert cfg.model.image.pool == "gap" and cfg.evals.zeroshot.every_steps == 7


def test_evaluators_can_be_replaced_or_removed():
    assert not config.load("configs/demo.py", ["--config.evals={}"]).evals
    cfg = config.load("configs/demo.py", ["--config.evals={'zs': {'type': 'zeroshot'}}"])
    assert list(cfg.evals) == ["zs"] and cfg.evals.zs.templates == "demo"
    cfg = config.load("configs/demo.py", ["--config.evals.ret={'type': 'retrieval'}"])
    assert sorted(cfg.evals) == ["probe", "ret", "zeroshot"] and cfg.evals.ret.num_examples == 0


def test_unknown_override_names_closest_keys():
    with pytest.raises(ConfigError, match=r"unknown config key optim\.lrr.*optim\.lr"):
        config.load("configs/demo.py", ["--config.optim.lrr=1"])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = write(tmp_path, "    return ml_collections.ConfigDict(dict(batch_sise=3))\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown config key batch_sise.*batch_size"):
        config.load(path)


def test_bad_type_and_bad_choice():
    with pytest.raises(ConfigError, match="batch_size='many' has type str, expected int"):
        config.load("configs/demo.py", ["--config.batch_size='many'"])
    with pytest.raises(
        ConfigError, match=r"model\.image\.pool='avg' is not allowed.*tok, gap, map"
    ):
        config.load("configs/demo.py", ["--config.model.image.pool=avg"])
    with pytest.raises(ConfigError, match="ring.*sigmoid"):
        config.load("configs/demo.py", ["--config.loss.impl=ring"])


def test_unknown_evaluator_type(tmp_path):
    path = write(
        tmp_path, "    return ml_collections.ConfigDict(dict(evals=dict(a=dict(type='x'))))\n"
    )
    with pytest.raises(ConfigError, match=r"evals\.a\.type='x' is not an evaluator"):
        config.load(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        config.load("configs/nope.py")


def test_templates_and_classnames_take_a_name_or_a_tuple():
    cfg = config.load(
        "configs/demo.py",
        [
            "--config.evals.zeroshot.templates=('a {}.', 'the {}.')",
            "--config.evals.zeroshot.classnames=imagenet",
        ],
    )
    assert cfg.evals.zeroshot.templates == ("a {}.", "the {}.")
    assert cfg.evals.zeroshot.classnames == "imagenet"
    # config.json stores tuples as lists; `vlx eval` reads them back as tuples.
    again = config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.evals.zeroshot.templates == ("a {}.", "the {}.")
    config.apply_override(again, "--config.evals.zeroshot.templates=clip_imagenet")
    assert again.evals.zeroshot.templates == "clip_imagenet"


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.evals.zeroshot.templates=clip", "evals.zeroshot.templates='clip' is not a"),
        ("--config.evals.zeroshot.templates=('a photo',)", "needs exactly one {}"),
        ("--config.evals.zeroshot.classnames=imagenet21k", "choose '' (the dataset's own)"),
        ("--config.evals.zeroshot.prompt_weighting=best", "choose one of none, zpe"),
        ("--config.evals.probe.method=svm", "evals.probe.method='svm' is not allowed"),
        ("--config.evals.probe.l2=()", "evals.probe.l2=() must list one or more values"),
        ("--config.evals.probe.val_fraction=1.0", "must be between 0 and 1"),
        ("--config.evals.probe.num_examples=-1", "evals.probe.num_examples=-1 must be >= 0"),
        ("--config.optim.lr_mults=('image.*', 0.1)", "optim.lr_mults: 'image.*' is not a pair"),
        ("--config.optim.lr_mults=(('image[', 0.1),)", "'image[' is not a regular expression"),
    ],
)
def test_bad_evaluator_and_optimizer_settings_are_refused_up_front(override, message):
    with pytest.raises(ConfigError, match=None) as e:
        config.load("configs/demo.py", [override])
    assert message in str(e.value)
