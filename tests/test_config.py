"""TrainConfig's head options: one ``model_options`` mapping, checked by the model; older configs still load."""

import dataclasses
from pathlib import Path

import pytest

from encnet.__main__ import _parser, _train_config
from encnet.config import PRESETS, TrainConfig, preset
from encnet.errors import UserError
from encnet.models import get_model, load_trained


def test_model_options_reach_the_head():
    config = dataclasses.replace(preset("synthetic-quick"), model_options={"lateral": True, "num_codes": 8})
    model = config.build_model(17, pretrained=False)
    assert model.head.lateral is not None and model.head.enc_module.encoding.num_codes == 8
    assert PRESETS["pcontext-encnet-r50"].model_options == {"lateral": True}


def test_defaults_are_left_out_so_equal_models_compare_equal():
    defaults = get_model("encnet").options
    assert defaults == {"lateral": False, "num_codes": 32}
    spelled_out = dataclasses.replace(preset("synthetic"), model_options=dict(defaults))
    assert spelled_out.model_options == {} and spelled_out == preset("synthetic")


@pytest.mark.parametrize("model, options, message", [
    ("fcn", {"lateral": True}, r"\['lateral'\] are not options of the fcn model \(its options: none\)"),
    ("encnet", {"codes": 8}, r"its options: lateral, num_codes"),
    ("encnet", {"num_codes": 0}, r"'num_codes' of encnet must be a positive integer, got 0"),
    ("encnet", {"lateral": "yes"}, r"'lateral' of encnet must be true or false, got 'yes'"),
])
def test_bad_model_options_are_one_clear_error(model, options, message):
    with pytest.raises(UserError, match=message):
        dataclasses.replace(preset("synthetic"), model=model, model_options=options)


def test_configs_with_top_level_head_fields_still_load():
    """Checkpoints and sweep files written before model_options had ``lateral`` and ``num_codes`` at the top."""
    old = {**preset("pcontext-encnet-r50").to_dict(), "lateral": True, "num_codes": 16}
    del old["model_options"]
    assert TrainConfig.from_dict(old).model_options == {"lateral": True, "num_codes": 16}
    old_fcn = {**old, "model": "fcn"}  # FCN ignored them: they are dropped
    assert TrainConfig.from_dict(old_fcn).model_options == {}
    older_sweep = {**preset("synthetic").to_dict(), "lateral": False, "num_codes": 32}  # as sweep files had them
    del older_sweep["model_options"]
    assert TrainConfig.from_dict(older_sweep) == preset("synthetic")


def test_model_flag_drops_the_head_options_the_new_model_does_not_take():
    config = _train_config(_parser().parse_args(["train", "--preset", "pcontext-encnet-r50", "--model", "fcn"]))
    assert config.model == "fcn" and config.model_options == {} and config.se_weight == 0
    kept = _train_config(_parser().parse_args(["train", "--preset", "pcontext-encnet-r50", "--epochs", "2"]))
    assert kept.model_options == {"lateral": True}


def test_sweep_takes_se_weights_and_train_se_weight():
    args = _parser().parse_args(["sweep", "--preset", "synthetic", "--se-weights", "0", "0.4", "--out", "x.json"])
    assert args.se_weights == [0.0, 0.4]
    assert "se_weight" not in vars(args)  # one SE-loss setting per command
    train = _parser().parse_args(["train", "--preset", "synthetic", "--se-weight", "0.4"])
    assert _train_config(train).se_weight == 0.4


@pytest.mark.parametrize("name", ["encnet_synthetic", "fcn_synthetic"])
def test_the_notebooks_checkpoints_load_with_todays_names(name):
    path = Path(__file__).parents[1] / "notebooks" / "models" / f"{name}.pt"
    model, config, checkpoint = load_trained(path)
    assert checkpoint["format"] == "encnet-checkpoint-2" and config.model == name.split("_")[0]
    assert not any(key.startswith("head.encoding.") for key in checkpoint["model"])
