import pytest
import torch

from mslightning.nn.modulators import ConcatModulator, FiLMModulator


def _inputs(b=2, t=3, c=4, h=5, w=6, d=7):
    torch.manual_seed(0)
    return torch.randn(b, t, c, h, w), torch.randn(b, t, d)


@pytest.mark.parametrize("hidden", [16, None])
def test_concat_appends_the_tiled_embedding(hidden):
    features, behaviour = _inputs()
    modulator = ConcatModulator(4, 7, embedding_dim=3, hidden=hidden)
    out = modulator(features, behaviour)
    assert modulator.out_channels == 7
    assert out.shape == (2, 3, 7, 5, 6)
    torch.testing.assert_close(out[:, :, :4], features)
    embedded = modulator.embedding(behaviour)
    torch.testing.assert_close(out[:, :, 4:], embedded[..., None, None].expand(-1, -1, -1, 5, 6))
    # each time step gets its own behaviour
    changed = behaviour.clone()
    changed[:, 1] += 1
    diff = modulator(features, changed) - out
    assert diff[:, 1].abs().sum() > 0 and diff[:, [0, 2]].abs().sum() == 0


@pytest.mark.parametrize("hidden", [16, None])
def test_film_starts_as_identity(hidden):
    features, behaviour = _inputs()
    modulator = FiLMModulator(4, 7, hidden=hidden)
    assert modulator.out_channels == 4
    torch.testing.assert_close(modulator(features, behaviour), features, rtol=0, atol=0)
    modulator(features, behaviour).square().sum().backward()
    assert modulator.last_layer.weight.grad.abs().sum() > 0


def test_film_is_features_times_one_plus_gamma_plus_beta():
    features, behaviour = _inputs()
    modulator = FiLMModulator(4, 7, hidden=None)
    with torch.no_grad():
        modulator.last_layer.weight.normal_()
        modulator.last_layer.bias.normal_()
    params = behaviour @ modulator.last_layer.weight.T + modulator.last_layer.bias
    gamma, beta = params[..., :4], params[..., 4:]
    expected = features * (1 + gamma)[..., None, None] + beta[..., None, None]
    torch.testing.assert_close(modulator(features, behaviour), expected)


def test_film_learns_to_suppress():
    """Behaviour that halves the features: the learned gain goes below 1."""
    features, behaviour = _inputs(d=2)
    behaviour = behaviour.abs()
    modulator = FiLMModulator(4, 2, hidden=8)
    optimizer = torch.optim.Adam(modulator.parameters(), lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        loss = (modulator(features, behaviour) - 0.5 * features).square().mean()
        loss.backward()
        optimizer.step()
    gain, shift = modulator.gain_and_shift(behaviour)
    assert loss.item() < 1e-2
    assert gain.max() < 0.8 and gain.mean().item() == pytest.approx(0.5, abs=0.1)
    assert shift.abs().max() < 0.2


@pytest.mark.parametrize("modulator_class", [ConcatModulator, FiLMModulator])
@pytest.mark.parametrize(
    ("features_shape", "behaviour_shape"),
    [
        ((2, 3, 4, 5, 6), (2, 3, 6)),  # wrong behaviour dim
        ((2, 3, 4, 5, 6), (2, 4, 7)),  # T differs
        ((2, 3, 4, 5, 6), (1, 3, 7)),  # B differs
        ((2, 3, 5, 5, 6), (2, 3, 7)),  # wrong channels
        ((6, 4, 5, 6), (2, 3, 7)),  # time not separated
    ],
)
def test_bad_shapes_raise_naming_both(modulator_class, features_shape, behaviour_shape):
    modulator = modulator_class(4, 7)
    with pytest.raises(ValueError) as error:
        modulator(torch.randn(features_shape), torch.randn(behaviour_shape))
    assert str(tuple(features_shape)) in str(error.value) and str(tuple(behaviour_shape)) in str(error.value)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="behaviour_dim"):
        FiLMModulator(4, 0)
    with pytest.raises(ValueError, match="embedding"):
        ConcatModulator(4, 2, embedding_dim=0)
