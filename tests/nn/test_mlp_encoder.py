"""MLPEncoder: the encoder of a vector stream."""

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from mslightning.nn import MLPEncoder


@pytest.mark.parametrize(("hidden", "norm"), [((), "layer"), ((16,), "layer"), ((16, 8), None)])
def test_shapes_and_parameter_names(hidden, norm):
    encoder = MLPEncoder(5, hidden=hidden, out_features=3, norm=norm)
    assert encoder(torch.randn(4, 5)).shape == (4, 3)
    assert encoder.out_features == 3 and encoder.in_features == 5 and encoder.hidden == tuple(hidden)
    assert encoder.input_ndim == 2
    names = [name for name, _ in encoder.named_parameters()]
    expected = []
    for i in range(len(hidden)):
        expected += [f"blocks.{i}.linear.weight", f"blocks.{i}.linear.bias"]
        if norm == "layer":
            expected += [f"blocks.{i}.norm.weight", f"blocks.{i}.norm.bias"]
    assert names == [*expected, "output.weight", "output.bias"]


def test_matches_the_same_layers_written_in_torch():
    torch.manual_seed(0)
    encoder = MLPEncoder(6, hidden=(7,), out_features=4, dropout=0.5).eval()
    x = torch.randn(3, 6)
    block = encoder.blocks[0]
    hidden = F.relu(F.layer_norm(F.linear(x, block.linear.weight, block.linear.bias), (7,)))  # LN starts at (1, 0)
    expected = F.linear(hidden, encoder.output.weight, encoder.output.bias)
    torch.testing.assert_close(encoder(x), expected)
    # no hidden layer: one linear projection
    linear = MLPEncoder(6, hidden=[], out_features=2)
    torch.testing.assert_close(linear(x), F.linear(x, linear.output.weight, linear.output.bias))


def test_batch_of_one_in_train_mode_and_dropout_only_in_training():
    torch.manual_seed(0)
    encoder = MLPEncoder(4, hidden=(32,), out_features=8, dropout=0.5).train()
    x = torch.randn(1, 4)
    assert encoder(x).shape == (1, 8)  # LayerNorm: no "Expected more than 1 value per channel"
    assert not torch.equal(encoder(x), encoder(x))  # dropout on
    encoder.eval()
    assert torch.equal(encoder(x), encoder(x))
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in encoder.modules())


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (
            torch.randn(2, 3, 8, 8),
            r"stream 'audio' expects vectors \(B, 5\), got shape \(2, 3, 8, 8\) \(an image batch",
        ),
        (torch.randn(2, 4), r"stream 'audio' expects vectors \(B, 5\), got shape \(2, 4\)"),
        (torch.randn(5), r"stream 'audio' expects vectors \(B, 5\), got shape \(5,\)"),
    ],
)
def test_forward_names_the_stream_on_a_wrong_shape(x, match):
    with pytest.raises(ValueError, match=match):
        MLPEncoder(5, name="audio")(x)
    with pytest.raises(ValueError, match=r"^MLPEncoder expects vectors"):
        MLPEncoder(5)(x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_features": 0}, r"in_features must be a positive int .*got 0"),
        ({"in_features": True}, r"in_features must be a positive int .*got True"),
        ({"in_features": 2.0}, r"in_features must be a positive int .*got 2.0"),
        ({"hidden": 16}, r"hidden must be a sequence of widths, e.g. \[256\] \(or \[\] for none\), got 16"),
        ({"hidden": "16"}, r"hidden must be a sequence of widths.*got '16'"),
        ({"hidden": (16, 0)}, r"hidden\[1\] must be a positive int, got 0 \(hidden=\[16, 0\]\)"),
        ({"out_features": -1}, r"out_features must be a positive int, got -1"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\), got -0.1"),
        ({"dropout": float("nan")}, r"dropout must be in \[0, 1\), got nan"),
        ({"norm": "batch"}, r"norm must be 'layer' or None, got 'batch'"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    arguments = {"in_features": 5, **kwargs}
    with pytest.raises(ValueError, match=r"^stream 'text': " + match):
        MLPEncoder(**arguments, name="text")
