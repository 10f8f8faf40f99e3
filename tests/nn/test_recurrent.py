import inspect

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from mslightning.nn import ConvGRU, ConvGRUCell

B, T, C, HID = 3, 7, 4, 6


def _gru_cell_pair(bias: bool = True) -> tuple[ConvGRUCell, nn.GRUCell]:
    torch.manual_seed(0)
    gru = nn.GRUCell(C, HID, bias=bias)
    cell = ConvGRUCell(C, HID, kernel_size=1, bias=bias)
    with torch.no_grad():
        cell.conv_x.weight.copy_(gru.weight_ih[:, :, None, None])
        cell.conv_h.weight.copy_(gru.weight_hh[:, :, None, None])
        if bias:
            cell.conv_x.bias.copy_(gru.bias_ih)
            cell.conv_h.bias.copy_(gru.bias_hh)
    return cell, gru


@pytest.mark.parametrize("bias", [True, False])
def test_cell_equals_torch_gru_cell_over_a_sequence(bias: bool) -> None:
    cell, gru = _gru_cell_pair(bias)
    xs = torch.randn(T, B, C)
    h_ref = torch.randn(B, HID)
    h = h_ref[:, :, None, None].clone()
    for x in xs:
        h_ref = gru(x, h_ref)
        out, h = cell(x[:, :, None, None], h)
        assert out is h
        torch.testing.assert_close(h[:, :, 0, 0], h_ref, atol=1e-6, rtol=0)


def test_convgru_equals_iterated_gru_cell() -> None:
    cell, gru = _gru_cell_pair()
    model = ConvGRU(C, HID, kernel_size=1)
    model.cell.load_state_dict(cell.state_dict())
    x = torch.randn(B, T, C, 1, 1)
    outputs, last = model(x)
    assert outputs.shape == (B, T, HID, 1, 1)
    h = torch.zeros(B, HID)
    for t in range(T):
        h = gru(x[:, t, :, 0, 0], h)
        torch.testing.assert_close(outputs[:, t, :, 0, 0], h, atol=1e-6, rtol=0)
    torch.testing.assert_close(last[:, :, 0, 0], h, atol=1e-6, rtol=0)


def per_gate_step(cell: ConvGRUCell, x: Tensor, h: Tensor) -> Tensor:
    """Hand-written reference: six separate convolutions with the fused weights split out."""
    pad = cell.kernel_size // 2
    wx, wh = cell.conv_x.weight.split(cell.hidden_channels), cell.conv_h.weight.split(cell.hidden_channels)
    bx, bh = cell.conv_x.bias.split(cell.hidden_channels), cell.conv_h.bias.split(cell.hidden_channels)
    r = torch.sigmoid(F.conv2d(x, wx[0], bx[0], padding=pad) + F.conv2d(h, wh[0], bh[0], padding=pad))
    z = torch.sigmoid(F.conv2d(x, wx[1], bx[1], padding=pad) + F.conv2d(h, wh[1], bh[1], padding=pad))
    n = torch.tanh(F.conv2d(x, wx[2], bx[2], padding=pad) + r * F.conv2d(h, wh[2], bh[2], padding=pad))
    return (1 - z) * n + z * h


def test_spatial_convgru_equals_per_gate_reference() -> None:
    torch.manual_seed(1)
    model = ConvGRU(C, HID, kernel_size=3)
    x = torch.randn(2, 5, C, 8, 8)
    h0 = torch.randn(2, HID, 8, 8)
    outputs, last = model(x, h0)
    h = h0
    for t in range(5):
        h = per_gate_step(model.cell, x[:, t], h)
        torch.testing.assert_close(outputs[:, t], h, atol=1e-6, rtol=0)
    torch.testing.assert_close(last, h, atol=1e-6, rtol=0)


def test_same_padding_does_not_shift_the_map() -> None:
    # With flip-symmetric kernels, flipping the input must flip every state: true for a centred
    # kernel with 'same' padding, false for the predecessor's even kernels with k // 2 padding.
    torch.manual_seed(11)
    model = ConvGRU(C, HID, kernel_size=3)
    with torch.no_grad():
        for conv in (model.cell.conv_x, model.cell.conv_h):
            conv.weight.copy_(conv.weight + conv.weight.flip(-1, -2))
    x = torch.randn(2, 4, C, 7, 7)
    outputs, _ = model(x)
    flipped, _ = model(x.flip(-1, -2))
    torch.testing.assert_close(flipped, outputs.flip(-1, -2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("depthwise", [False, True])
def test_convgru_equals_stepping_the_cell_with_every_option(depthwise: bool) -> None:
    torch.manual_seed(2)
    options = dict(
        gate_norm_groups=2,
        learnable_h0=True,
        residual=True,
        groups=2,
        depthwise=depthwise,
        orthogonal_init=True,
        hidden_clamp=0.7,
    )
    model = ConvGRU(C, HID, **options)
    with torch.no_grad():
        model.cell.h0.normal_()
    x = torch.randn(2, 4, C, 5, 5)
    outputs, last = model(x)
    h = None
    for t in range(4):
        out, h = model.cell(x[:, t], h)
        torch.testing.assert_close(outputs[:, t], out, atol=1e-6, rtol=0)
    torch.testing.assert_close(last, h, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernel_size", [2, 4])
def test_even_kernel_is_an_error(kernel_size: int) -> None:
    with pytest.raises(ValueError, match=f"kernel_size must be odd.*got {kernel_size}"):
        ConvGRUCell(C, HID, kernel_size=kernel_size)


def test_gate_norm_groups_must_divide_hidden() -> None:
    with pytest.raises(ValueError, match="gate_norm_groups=4 does not divide hidden_channels=6"):
        ConvGRUCell(C, HID, gate_norm_groups=4)


def test_gate_norm_is_per_gate() -> None:
    torch.manual_seed(3)
    cell = ConvGRUCell(C, HID, gate_norm_groups=3)
    assert isinstance(cell.norm_x, nn.GroupNorm) and cell.norm_x.num_groups == 9
    gates = cell.input_gates(torch.randn(2, C, 6, 6))
    # Each gate's pre-activation is normalised on its own: every (gate, group) block has mean 0, var 1.
    blocks = gates.view(2, 3, 3, HID // 3, 6, 6)
    torch.testing.assert_close(blocks.mean(dim=(3, 4, 5)), torch.zeros(2, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(blocks.var(dim=(3, 4, 5), unbiased=False), torch.ones(2, 3, 3), atol=1e-3, rtol=0)


@pytest.mark.parametrize(("groups", "name", "channels"), [(3, "in_channels", 4), (4, "hidden_channels", 6)])
def test_groups_must_divide_both_channel_counts(groups: int, name: str, channels: int) -> None:
    with pytest.raises(ValueError, match=f"groups={groups} does not divide {name}={channels}"):
        ConvGRUCell(C, HID, groups=groups)


def test_residual_identity_and_projection() -> None:
    torch.manual_seed(4)
    same = ConvGRUCell(HID, HID, residual=True)
    assert isinstance(same.proj, nn.Identity)
    x = torch.randn(2, HID, 5, 5)
    out, h = same(x)
    torch.testing.assert_close(out, h + x)

    other = ConvGRUCell(C, HID, residual=True)
    assert isinstance(other.proj, nn.Conv2d) and other.proj.kernel_size == (1, 1)
    x = torch.randn(2, C, 5, 5)
    out, h = other(x)
    torch.testing.assert_close(out, h + other.proj(x))
    assert not torch.allclose(out, h)
    # The residual feeds the output only: the next state is computed from h', not from the output.
    _, h2 = other(x, h)
    torch.testing.assert_close(h2, other.recur(other.input_gates(x), h))
    assert not torch.allclose(h2, other.recur(other.input_gates(x), out))

    assert ConvGRUCell(C, HID).proj is None


def test_clamp_same_in_train_and_eval_and_bounded() -> None:
    torch.manual_seed(5)
    model = ConvGRU(C, HID, hidden_clamp=0.3)
    x = torch.randn(2, 4, C, 5, 5) * 3
    h0 = torch.randn(2, HID, 5, 5) * 5
    model.train()
    train_out, _ = model(x, h0)
    model.eval()
    eval_out, _ = model(x, h0)
    torch.testing.assert_close(train_out, eval_out, atol=0, rtol=0)
    assert train_out.abs().max() <= 0.3
    assert train_out.abs().max().item() == pytest.approx(0.3)  # the clamp is active here
    with pytest.raises(ValueError, match="hidden_clamp must be > 0"):
        ConvGRUCell(C, HID, hidden_clamp=0.0)


def test_learnable_h0_is_a_parameter_with_gradient() -> None:
    torch.manual_seed(6)
    model = ConvGRU(C, HID, learnable_h0=True)
    names = dict(model.named_parameters())
    assert "cell.h0" in names and names["cell.h0"].shape == (1, HID, 1, 1)
    outputs, _ = model(torch.randn(2, 3, C, 5, 5))
    outputs.sum().backward()
    assert model.cell.h0.grad is not None and model.cell.h0.grad.abs().sum() > 0
    assert ConvGRUCell(C, HID).h0 is None


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_grouped_and_depthwise_shapes_and_parameter_counts() -> None:
    torch.manual_seed(7)
    k, cin, hid = 3, 4, 8
    x = torch.randn(2, 3, cin, 6, 6)
    standard = ConvGRU(cin, hid)
    grouped = ConvGRU(cin, hid, groups=2)
    depthwise = ConvGRU(cin, hid, depthwise=True)
    both = ConvGRU(cin, hid, depthwise=True, groups=2)
    assert _count(standard) == 3 * hid * (cin + hid) * k * k + 2 * 3 * hid
    assert _count(grouped) == 3 * hid * (cin + hid) * k * k // 2 + 2 * 3 * hid
    assert _count(depthwise) == (cin + hid) * k * k + 3 * hid * (cin + hid) + 2 * 3 * hid
    assert _count(both) == (cin + hid) * k * k + 3 * hid * (cin + hid) // 2 + 2 * 3 * hid
    for model in (standard, grouped, depthwise, both):
        outputs, last = model(x)
        assert outputs.shape == (2, 3, hid, 6, 6) and last.shape == (2, hid, 6, 6)


def test_grouped_gates_see_only_their_input_group() -> None:
    torch.manual_seed(8)
    cell = ConvGRUCell(4, 6, groups=2)
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    gates = cell.input_gates(x)  # gate-major (r, z, n) x 6 channels
    for gate in range(3):
        first_half = gates[:, gate * 6 : gate * 6 + 3].sum()
        (grad,) = torch.autograd.grad(first_half, x, retain_graph=True)
        assert grad[:, :2].abs().sum() > 0 and grad[:, 2:].abs().sum() == 0


@pytest.mark.parametrize("options", [{}, {"groups": 2}, {"depthwise": True}, {"kernel_size": 1}])
def test_orthogonal_init(options: dict) -> None:
    torch.manual_seed(9)
    cell = ConvGRUCell(C, HID, orthogonal_init=True, **options)
    blocks = cell.gate_blocks(cell.recurrent_weight)
    assert len(blocks) == 3 * cell.groups
    for block in blocks:
        flat = block.reshape(block.shape[0], -1)
        torch.testing.assert_close(flat @ flat.T, torch.eye(flat.shape[0]), atol=1e-5, rtol=0)
    default = ConvGRUCell(C, HID, kernel_size=1)
    flat = default.recurrent_weight[:HID].reshape(HID, -1)
    assert not torch.allclose(flat @ flat.T, torch.eye(HID), atol=1e-2)


def test_gradients_flow_through_time() -> None:
    torch.manual_seed(10)
    model = ConvGRU(C, HID)
    x = torch.randn(2, 6, C, 5, 5, requires_grad=True)
    _, last = model(x)
    last.sum().backward()  # only the last state: earlier inputs reach it through the recurrence
    per_step = x.grad.abs().sum(dim=(0, 2, 3, 4))
    assert (per_step > 0).all()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bad_shapes_are_named() -> None:
    model = ConvGRU(C, HID)
    with pytest.raises(ValueError, match=r"x must be \(B, T >= 1, C_in=4, H, W\), got \(2, 4, 5, 5\)"):
        model(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"C_in=4, H, W\), got \(2, 3, 5, 5, 5\)"):
        model(torch.randn(2, 3, C + 1, 5, 5))
    with pytest.raises(ValueError, match=r"ConvGRUCell: x must be \(B, 4, H, W\), got \(2, 5, 5, 5\)"):
        model.cell(torch.randn(2, C + 1, 5, 5))
    with pytest.raises(ValueError, match=r"h must be \(2, 6, 5, 5\)"):
        model(torch.randn(2, 3, C, 5, 5), torch.zeros(2, HID, 4, 4))


def test_convgru_takes_the_cells_options() -> None:
    cell_params = inspect.signature(ConvGRUCell).parameters
    assert inspect.signature(ConvGRU).parameters.keys() == cell_params.keys()
    model = ConvGRU(C, HID, 5, gate_norm_groups=3, groups=2, depthwise=True, hidden_clamp=2.0, bias=False)
    cell = model.cell
    options = (cell.kernel_size, cell.gate_norm_groups, cell.groups, cell.depthwise, cell.hidden_clamp)
    assert options == (5, 3, 2, True, 2.0)
    assert cell.conv_x.pointwise.bias is None
