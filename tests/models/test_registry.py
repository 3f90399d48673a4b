"""The registry's rules: one builder style (a module-level ``def`` with keyword-only arguments, no
``**kwargs``), ``num_classes`` required by every segmentation model, and errors that name the argument."""

import inspect
import sys

import pytest
from tiny_models import tiny_kwargs
from torch import nn

from atrous.models import create, list_models, model_arguments, model_task, register_model
from atrous.models._registry import _REGISTRY
from atrous.models.sequence import TCNConfig, WaveNetConfig


@pytest.mark.parametrize("name", list_models())
def test_builder_is_a_module_level_def_with_keyword_only_arguments(name):
    builder = _REGISTRY[name]
    # A grep for "def <name>" finds it: not a closure renamed after the fact.
    assert builder.__qualname__ == name and getattr(sys.modules[builder.__module__], name) is builder
    kinds = {p.name: p.kind for p in model_arguments(name).values()}
    assert kinds and set(kinds.values()) == {inspect.Parameter.KEYWORD_ONLY}, kinds


@pytest.mark.parametrize("name", list_models("segmentation"))
def test_segmentation_models_need_num_classes(name):
    assert model_arguments(name)["num_classes"].default is inspect.Parameter.empty  # no dataset's count
    tiny = tiny_kwargs(name)
    del tiny["num_classes"]
    with pytest.raises(TypeError, match=f"{name} needs the argument\\(s\\) num_classes"):
        create(name, **tiny)


@pytest.mark.parametrize("name", list_models())
def test_unknown_argument_is_named_with_the_allowed_ones(name):
    with pytest.raises(TypeError, match="unknown argument\\(s\\) 'colour'") as error:
        create(name, colour=1)
    assert all(argument in str(error.value) for argument in model_arguments(name))


def test_unknown_model_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown model 'nope'; choose one of: context_net"):
        create("nope")
    with pytest.raises(ValueError, match="unknown model"):
        model_task("nope")


def _kwargs_builder(**kwargs) -> nn.Module:
    return nn.Identity()


def _positional_builder(num_classes: int) -> nn.Module:
    return nn.Identity()


def _digits_builder(*, num_classes: int = 11) -> nn.Module:
    return nn.Identity()


@pytest.mark.parametrize("builder, task, match", [
    (_kwargs_builder, "sequence", "keyword-only"),
    (_positional_builder, "segmentation", "keyword-only"),
    (_digits_builder, "segmentation", "num_classes` with no default"),
    (_digits_builder, "classification", "task must be one of"),
])
def test_register_model_refuses_other_builder_styles(builder, task, match):
    before = list_models()
    with pytest.raises((TypeError, ValueError), match=match):
        register_model(builder, task=task)
    assert list_models() == before


def test_register_model_refuses_a_taken_name():
    def context_net(*, num_classes: int) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="registered twice"):
        register_model(context_net)


def test_sequence_builders_default_to_their_configs():
    # The builders' defaults are read from the config dataclasses, so the two cannot drift apart.
    assert create("tcn").config == TCNConfig()
    assert create("wavenet", residual_channels=2, gate_channels=2, skip_channels=2).config == WaveNetConfig(
        residual_channels=2, gate_channels=2, skip_channels=2)
    assert {name: p.default for name, p in model_arguments("tcn").items()} == vars(TCNConfig())
