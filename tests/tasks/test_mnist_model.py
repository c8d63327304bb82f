import pytest
import torch

from tests.helpers import PARAM_SHAPES
from tasks.mnist.model import ReflectCNN


def test_parameter_names_and_shapes_are_the_documented_contract():
    shapes = {name: list(p.shape) for name, p in ReflectCNN().named_parameters()}
    assert shapes == PARAM_SHAPES
    assert ReflectCNN()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_dropout_is_settable_and_validated():
    model = ReflectCNN(dropout=0.2)
    model.dropout = 0.35
    assert model.fc[2].p == 0.35
    with pytest.raises(ValueError, match="dropout must be in"):
        model.dropout = 1.5
