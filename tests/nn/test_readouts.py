import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from mslightning.nn.readouts import FactorisedReadout, GaussianReadout

SHAPE = (3, 5, 7)


def test_positions_stay_inside_for_any_parameters_and_optimizer_steps():
    torch.manual_seed(0)
    readout = GaussianReadout(SHAPE, 6)
    with torch.no_grad():
        readout.mu_raw.copy_(torch.tensor([-1e4, -50.0, -1.0, 0.0, 3.0, 1e6]).repeat(2, 1).T)
        readout.sigma_raw.fill_(10.0)
    for sample in (False, True):
        grid = readout.grid(4, sample=sample)
        assert grid.abs().max() <= 1.0 and torch.isfinite(grid).all()
    # steps that push every neuron outwards as hard as possible
    optimizer = torch.optim.SGD(readout.parameters(), lr=1e3)
    x = torch.randn(4, *SHAPE)
    for _ in range(5):
        optimizer.zero_grad()
        (-readout.mu.abs().sum() - readout(x).sum()).backward()
        optimizer.step()
        assert readout.mu.abs().max() <= 1.0
        assert readout.grid(4, sample=True).abs().max() <= 1.0


def test_eval_is_deterministic_and_training_samples():
    torch.manual_seed(0)
    readout = GaussianReadout(SHAPE, 4, init_sigma=0.5)
    x = torch.randn(2, *SHAPE)
    readout.eval()
    torch.testing.assert_close(readout(x), readout(x), rtol=0, atol=0)
    torch.testing.assert_close(readout(x), readout(x, sample=False), rtol=0, atol=0)
    readout.train()
    assert not torch.equal(readout(x), readout(x))


@pytest.mark.parametrize("readout_class", [GaussianReadout, FactorisedReadout])
def test_sessions_with_different_neuron_counts_share_the_features(readout_class):
    x = torch.randn(8, *SHAPE)
    readouts = torch.nn.ModuleDict({"a": readout_class(SHAPE, 5), "b": readout_class(SHAPE, 9)})
    assert readouts["a"](x).shape == (8, 5)
    assert readouts["b"](x).shape == (8, 9)


@pytest.mark.parametrize("output", ["softplus", "elu1", "exp"])
@pytest.mark.parametrize("readout_class", [GaussianReadout, FactorisedReadout])
def test_rates_are_strictly_positive_and_log_finite(readout_class, output):
    readout = readout_class(SHAPE, 4, output=output).eval()
    with torch.no_grad():
        readout.bias.fill_(-1e4)  # a drive where every nonlinearity underflows in float32
    rates = readout(torch.randn(2, *SHAPE))
    assert (rates > 0).all()
    assert torch.isfinite(torch.log(rates)).all()


@pytest.mark.parametrize("train", [False, True])
def test_gaussian_with_zero_sigma_at_a_grid_point_reads_that_pixel(train):
    torch.manual_seed(0)
    _, h, w = SHAPE
    readout = GaussianReadout(SHAPE, 2, output="exp", min_rate=0.0).train(train)
    # (row i, column j); the corner (4, 6) sits at (1, 1), which tanh approaches within 1e-6
    pixels = [(1, 2), (4, 6)]
    with torch.no_grad():
        for n, (i, j) in enumerate(pixels):
            position = torch.tensor([-1 + 2 * j / (w - 1), -1 + 2 * i / (h - 1)])
            readout.mu_raw[n] = torch.atanh(position.clamp(-1 + 1e-6, 1 - 1e-6))
        readout.sigma_raw.zero_()
        readout.bias.copy_(torch.tensor([0.3, -0.2]))
    x = torch.randn(2, *SHAPE)
    for n, (i, j) in enumerate(pixels):
        by_hand = torch.exp(x[:, :, i, j] @ readout.features[:, n] + readout.bias[n])
        torch.testing.assert_close(readout(x)[:, n], by_hand, atol=1e-4, rtol=1e-4)


def test_gaussian_matches_grid_sample_between_pixels():
    torch.manual_seed(0)
    readout = GaussianReadout(SHAPE, 3, output="exp", min_rate=0.0).eval()
    x = torch.randn(2, *SHAPE)
    read = F.grid_sample(x, readout.mu.expand(2, -1, -1).unsqueeze(2), align_corners=True).squeeze(-1)
    expected = torch.exp(torch.einsum("bcn,cn->bn", read, readout.features) + readout.bias)
    torch.testing.assert_close(readout(x), expected)


def test_gradient_reaches_mu_and_sigma():
    torch.manual_seed(0)
    readout = GaussianReadout(SHAPE, 4).train()
    readout(torch.randn(2, *SHAPE)).sum().backward()
    assert readout.mu_raw.grad.abs().sum() > 0
    assert readout.sigma_raw.grad.abs().sum() > 0
    readout.zero_grad()
    readout.eval()
    readout(torch.randn(2, *SHAPE)).sum().backward()
    assert readout.mu_raw.grad.abs().sum() > 0


@pytest.mark.parametrize("spatial", ["softmax", "l2", "none"])
def test_factorised_matches_a_hand_einsum(spatial):
    torch.manual_seed(0)
    readout = FactorisedReadout(SHAPE, 4, spatial=spatial, output="elu1", min_rate=0.0)
    x = torch.randn(2, *SHAPE)
    raw = readout.mask_raw.detach()
    if spatial == "softmax":
        mask = torch.exp(raw) / torch.exp(raw).sum(dim=(1, 2), keepdim=True)
    elif spatial == "l2":
        mask = raw / raw.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()
    else:
        mask = raw
    drive = torch.einsum("bchw,nhw,cn->bn", x, mask, readout.features.detach()) + readout.bias.detach()
    torch.testing.assert_close(readout(x), F.elu(drive) + 1)
    if spatial == "softmax":
        assert (readout.mask >= 0).all()
        torch.testing.assert_close(readout.mask.sum(dim=(1, 2)), torch.ones(4))


@pytest.mark.parametrize("output", ["softplus", "elu1", "exp"])
def test_initialize_bias_gives_the_mean_rates(output):
    readout = GaussianReadout(SHAPE, 4, output=output)
    with torch.no_grad():
        readout.features.zero_()
    mean_rates = torch.tensor([0.05, 0.7, 3.0, 0.0])
    readout.initialize_bias(mean_rates)
    rates = readout.eval()(torch.randn(2, *SHAPE))
    torch.testing.assert_close(rates[:, :3], mean_rates[:3].expand(2, -1), atol=1e-5, rtol=1e-4)
    assert (rates[:, 3] > 0).all() and (rates[:, 3] < 1e-5).all()  # silent neuron: finite, tiny
    with pytest.raises(ValueError, match=r"\(4,\)"):
        readout.initialize_bias(torch.ones(5))


def test_regularizer_is_the_l1_of_the_feature_weights():
    readout = FactorisedReadout(SHAPE, 4)
    torch.testing.assert_close(readout.regularizer(), readout.features.abs().sum())
    torch.testing.assert_close(readout.regularizer("mean"), readout.features.abs().mean())
    readout.regularizer().backward()
    assert readout.features.grad is not None


def test_bad_inputs_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(B, 3, 5, 7\).*\(2, 3, 5, 6\)"):
        FactorisedReadout(SHAPE, 2)(torch.randn(2, 3, 5, 6))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(2, 4, 5, 7\)"):
        GaussianReadout(SHAPE, 2)(torch.randn(2, 4, 5, 7))
    assert GaussianReadout(SHAPE, 2)(torch.randn(2, 3, 9, 4)).shape == (2, 2)  # positions are relative
    with pytest.raises(ValueError, match="neurons"):
        GaussianReadout(SHAPE, 0)
    with pytest.raises(ValueError, match="'relu'"):
        GaussianReadout(SHAPE, 2, output="relu")
    with pytest.raises(ValueError, match="'l1'"):
        FactorisedReadout(SHAPE, 2, spatial="l1")
