"""StepStatistics and bind_streams without a Trainer: values against direct torch computations."""

import math

import pytest
import torch
from torch import nn

from mslightning.callbacks.step_statistics import StepStatistics, bind_streams, optimizer_names, stream_inputs
from mslightning.streams import match_streams


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rgb = nn.Linear(3, 4)
        self.depth = nn.Linear(2, 4)
        self.head = nn.Linear(8, 2)

    def forward(self, inputs):
        return self.head(torch.cat([self.rgb(inputs["rgb"]), self.depth(inputs["depth"])], 1))


def _setup(optimizer_cls=torch.optim.SGD, **kwargs):
    torch.manual_seed(0)
    net = Net()
    groups = [
        {"params": net.rgb.parameters(), "name": "rgb", "lr": 0.1},
        {"params": net.depth.parameters(), "lr": 0.01},
        {"params": net.head.parameters(), "name": "head"},
    ]
    optimizer = optimizer_cls(groups, lr=0.05, **kwargs)
    names = match_streams(net, {"rgb": ["rgb.*"], "depth": ["depth.*"]})
    bindings = bind_streams(dict(net.named_parameters()), names, [optimizer], optimizer_names([optimizer]))
    return net, optimizer, bindings


def _batch(nan_in=None):
    inputs = {"rgb": torch.randn(5, 3), "depth": torch.randn(5, 2)}
    if nan_in:
        inputs[nan_in][0, 0] = float("nan")
    return inputs, torch.randint(0, 2, (5,))


def _step(net, optimizer, stats, batch):
    inputs, target = batch
    optimizer.zero_grad()
    nn.functional.cross_entropy(net(inputs), target).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    stats.capture([optimizer], optimizer)
    optimizer.step()
    return stats.finish(batch), grads, before


def _norm(tensors):
    return torch.linalg.vector_norm(torch.cat([t.double().flatten() for t in tensors])).item()


def test_binding_names_groups_as_lightning_does():
    _, _, bindings = _setup()
    assert bindings["rgb"].group_name == "rgb"  # the group's own name
    assert bindings["depth"].group_name == "SGD/pg2"  # LearningRateMonitor's name for an unnamed group
    assert bindings["rgb"].numel == 16 and bindings["rgb"].optimized and bindings["rgb"].shares_with == []


def test_optimizer_names_count_classes_in_learning_rate_monitor_order():
    a, b, c = (torch.optim.AdamW([nn.Parameter(torch.ones(1))]) for _ in range(3))
    sgd = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    assert optimizer_names([a, sgd, b, c]) == ["AdamW", "SGD", "AdamW-1", "AdamW-2"]
    assert optimizer_names([a, b], scheduled=[(b, None)]) == ["AdamW-1", "AdamW"]  # scheduled ones are counted first
    assert optimizer_names([a, b], scheduled=[(a, "backbone_lr")]) == ["backbone_lr", "AdamW"]  # a named scheduler


def test_step_values_equal_direct_computation():
    net, optimizer, bindings = _setup(momentum=0.9)
    stats = StepStatistics(bindings)
    for _ in range(3):
        values, grads, before = _step(net, optimizer, stats, _batch())
    for stream in ("rgb", "depth"):
        names = bindings[stream].names
        after = dict(net.named_parameters())
        gn, wn = _norm([grads[n] for n in names]), _norm([before[n] for n in names])
        dw = _norm([after[n].detach() - before[n] for n in names])
        assert values[("grad_norm", stream)] == pytest.approx(gn, rel=1e-6)
        assert values[("grad_max", stream)] == pytest.approx(max(grads[n].abs().max().item() for n in names))
        assert values[("weight_norm", stream)] == pytest.approx(wn, rel=1e-6)
        assert values[("update_ratio", stream)] == pytest.approx(dw / wn, rel=1e-4)
        assert values[("rel_grad_norm", stream)] == pytest.approx(gn / wn, rel=1e-6)
        weight_sum = sum(before[n].double().sum().item() for n in names)
        assert values[("weight_mean", stream)] == pytest.approx(weight_sum / bindings[stream].numel, rel=1e-5, abs=1e-7)
    assert values[("lr", "rgb")] == 0.1 and values[("lr", "depth")] == 0.01
    assert values[("grad_norm_ratio", "rgb_vs_depth")] == pytest.approx(
        values[("grad_norm", "rgb")] / values[("grad_norm", "depth")]
    )
    acc = stats.accumulators["rgb"]
    assert acc.steps == 3 and acc.grad_steps == 3 and acc.update_steps == 3
    assert acc.max_update_ratio >= acc.update_ratio / 3 > 0


def test_without_track_updates_the_accumulator_gets_the_lr_proxy():
    net, optimizer, bindings = _setup()
    stats = StepStatistics(bindings, track_updates=False)
    values, _, _ = _step(net, optimizer, stats, _batch())
    assert ("update_ratio", "rgb") not in values
    proxy = values[("lr", "rgb")] * values[("rel_grad_norm", "rgb")]
    assert stats.accumulators["rgb"].update_ratio == pytest.approx(proxy)


def test_nan_in_one_streams_input_is_counted_for_that_stream_only():
    net, optimizer, bindings = _setup()
    stats = StepStatistics(bindings)
    values, _, _ = _step(net, optimizer, stats, _batch(nan_in="depth"))
    # the NaN reaches every stream's gradients through the shared head...
    assert values[("nonfinite_grads", "rgb")] > 0 and values[("nonfinite_grads", "depth")] > 0
    # ...but only depth's inputs hold it
    assert stats.accumulators["depth"].nonfinite_inputs == 1
    assert stats.accumulators["rgb"].nonfinite_inputs == 0 and stats.accumulators["rgb"].inputs_scanned


def test_initial_weight_norm_is_kept_across_epochs_and_shared():
    net, optimizer, bindings = _setup()
    shared = {}
    stats = StepStatistics(bindings, initial_weight_norm=shared)
    _step(net, optimizer, stats, _batch())
    first = dict(shared)
    stats.start_epoch()
    _step(net, optimizer, stats, _batch())
    assert shared == first and stats.accumulators["rgb"].steps == 1
    assert math.isfinite(first["rgb"])


def test_finish_without_capture_is_an_error():
    _, _, bindings = _setup()
    with pytest.raises(RuntimeError, match="without a captured step"):
        StepStatistics(bindings).finish()


@pytest.mark.parametrize(
    ("batch", "found"),
    [
        (({"rgb": torch.ones(1)}, torch.ones(1)), ["rgb"]),
        ({"rgb": torch.ones(1), "x": 1}, ["rgb"]),
        (torch.ones(1), []),
    ],
)
def test_stream_inputs_finds_the_streams_of_common_batch_layouts(batch, found):
    assert list(stream_inputs(batch, ["rgb", "depth"])) == found
