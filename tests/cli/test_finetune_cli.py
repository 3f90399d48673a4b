"""``atrous train``'s fine-tuning options: they reach the config, bad values are one line naming the
option (exit 2, no run folder), and a resumed run refuses them (it keeps the settings it started with)."""

import pytest

from atrous.cli.main import build_parser, main
from atrous.cli.train import config_from_args

pytestmark = pytest.mark.filterwarnings("ignore::atrous.models.RateWarning")

TINY = ["--train-images", "4", "--val-images", "2", "--batch-size", "4", "--epochs", "1", "--crop-size", "32",
        "--device", "cpu", "--no-progress"]


def config_of(*argv: str):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_the_options_reach_the_config(tmp_path):
    file = tmp_path / "start.pth"
    file.write_bytes(b"weights")
    config = config_of("--model", "deeplabv3_resnet18", "--model-arg", "aux_loss=True", "--weights", str(file),
                       "--freeze-bn", "--backbone-lr-scale", "0.1", "--aux-weight", "0.4")
    assert (config.weights, config.freeze_bn, config.backbone_lr_scale, config.aux_weight) == \
        (str(file), True, 0.1, 0.4)
    assert config.model_kwargs == {"aux_loss": True}
    assert config_of("--backbone-weights", str(file)).backbone_weights == str(file)
    plain = config_of()
    assert (plain.weights, plain.backbone_weights, plain.freeze_bn, plain.backbone_lr_scale, plain.aux_weight) == \
        (None, None, False, 1.0, None)
    assert plain.aux_loss_weight == 0.5


@pytest.mark.parametrize(("argv", "flag"), [
    (["--backbone-lr-scale", "-1"], "--backbone-lr-scale must be a finite number"),
    (["--backbone-lr-scale", "nan"], "--backbone-lr-scale must be a finite number"),
    (["--backbone-lr-scale", "fast"], "--backbone-lr-scale"),
    (["--aux-weight", "-0.5"], "--aux-weight must be a finite number"),
    (["--aux-weight", "inf"], "--aux-weight must be a finite number"),
    (["--weights", "MISSING"], "--weights"),
    (["--backbone-weights", "MISSING"], "--backbone-weights"),
    (["--weights", "FILE", "--backbone-weights", "FILE"], "--backbone-weights: not allowed with argument --weights"),
    (["--weights", "FOLDER"], "--weights"),
    (["--backbone-lr-scale", "0.1"], "--backbone-lr-scale) 0.1 needs a model with a ResNet or VGG-16 backbone"),
    (["--aux-weight", "0.4"], "--aux-weight) 0.4 weighs an auxiliary head's loss"),
])
def test_bad_values_are_one_line_naming_the_option_and_leave_no_folder(tmp_path, capsys, argv, flag):
    (tmp_path / "file.pth").write_bytes(b"weights")
    names = {"MISSING": str(tmp_path / "missing.pth"), "FILE": str(tmp_path / "file.pth"), "FOLDER": str(tmp_path)}
    argv = [names.get(arg, arg) for arg in argv]
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and flag in err, err
    assert not out.exists()


@pytest.mark.parametrize("argv", [["--weights", "w.pth"], ["--backbone-weights", "w.pth"], ["--freeze-bn"],
                                  ["--backbone-lr-scale", "0.1"], ["--aux-weight", "0.4"]])
def test_a_resumed_run_refuses_the_options(tmp_path, capsys, argv):
    assert main(["train", "--resume", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and argv[0] in err and "keeps the settings" in err, err
