"""What a stream is: names, owned parameters (exactly one owner), and the output protocol's parsing."""

import pytest
import torch
from torch import nn

from mslightning.optim import ParamGroup, build_param_groups
from mslightning.optim.patterns import assign_owners
from mslightning.streams import (
    ClassificationOutputs,
    RankingOutputs,
    check_stream_inputs,
    match_streams,
    parse_stream_outputs,
    stream_patterns_of,
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rgb = nn.Linear(2, 2)
        self.depth = nn.Linear(2, 2)
        self.head = nn.Linear(4, 2)


def test_assign_owners_gives_each_name_to_its_one_owner():
    names = ["rgb.weight", "rgb.bias", "head.weight"]
    assert assign_owners(names, {"rgb": "rgb.*", "x": "nothing.*"}, "stream") == {"rgb": names[:2], "x": []}


def test_the_one_overlap_rule_speaks_for_groups_and_streams():
    with pytest.raises(
        ValueError, match=r"'rgb.weight' is matched by stream 'a' .* and by stream 'b'.*one stream only"
    ):
        assign_owners(["rgb.weight"], {"a": "rgb.*", "b": "*.weight"}, "stream")
    with pytest.raises(ValueError, match=r"matched by group 'a' .* and by group 'b'.*one group only"):
        build_param_groups(Net(), [ParamGroup("a", "rgb.*"), ParamGroup("b", "*.weight"), ParamGroup("rest")])


def test_match_streams_from_the_modules_declaration_and_errors():
    net = Net()
    net.stream_patterns = {"rgb": "rgb.*", "depth": ["depth.*"]}
    patterns = stream_patterns_of(net)
    assert match_streams(net, patterns) == {"rgb": ["rgb.weight", "rgb.bias"], "depth": ["depth.weight", "depth.bias"]}
    with pytest.raises(ValueError, match=r"StreamMonitor: stream\(s\) 'ir' -> \['ir.\*'\] match no parameter of Net"):
        match_streams(net, {"ir": ["ir.*"]})
    with pytest.raises(ValueError, match="StreamMonitor: Parameter 'rgb.weight' is matched by stream"):
        match_streams(net, {"a": ["rgb.*"], "b": ["*.weight"]})
    with pytest.raises(ValueError, match="needs streams.*'rgb.weight'"):
        stream_patterns_of(Net())
    with pytest.raises(ValueError, match="stream name 'a.b' is not valid"):
        stream_patterns_of(net, {"a.b": "rgb.*"})


def test_parse_accepts_the_typed_form_and_the_classification_dict():
    target = torch.tensor([0, 1])
    typed = RankingOutputs({"rgb": torch.zeros(2)}, torch.ones(2))
    assert parse_stream_outputs({"loss": torch.tensor(1.0), "stream_outputs": typed}) is typed
    parsed = parse_stream_outputs({"loss": 1, "target": target, "stream_logits": {"rgb": torch.zeros(2, 3)}})
    assert isinstance(parsed, ClassificationOutputs) and parsed.target is target
    assert parse_stream_outputs(torch.tensor(1.0)) is None and parse_stream_outputs({"loss": 1}) is None
    with pytest.raises(ValueError, match="must be a ClassificationOutputs, RankingOutputs or PoissonOutputs"):
        parse_stream_outputs({"stream_outputs": {"rgb": torch.zeros(2)}})


def test_stream_ranks_are_checked_where_the_model_declares_them():
    streams = {"rgb": 3, "audio": 8, "other": 2}
    ndims = {"rgb": 4, "audio": 2, "other": None}
    good = {"rgb": torch.zeros(2, 3, 4, 4), "audio": torch.zeros(2, 8), "other": torch.zeros(2, 2, 5)}
    check_stream_inputs(good, streams, "M", ndims=ndims)  # None: any rank with the right channels
    check_stream_inputs({**good, "audio": torch.zeros(2, 8, 1, 1)}, streams, "M")  # no ndims: channels only
    with pytest.raises(
        ValueError,
        match=r"Stream 'audio' is a vector stream: M expects vectors \(B, 8\), but the data "
        r"has images of shape \(2, 8, 1, 1\)",
    ):
        check_stream_inputs({**good, "audio": torch.zeros(2, 8, 1, 1)}, streams, "M", ndims=ndims)
    with pytest.raises(
        ValueError,
        match=r"Stream 'rgb' is an image stream: M expects images \(B, 3, H, W\), but the "
        r"data has a 3-D tensor of shape \(2, 3, 4\)\. For vector data give the stream a vector encoder",
    ):
        check_stream_inputs({**good, "rgb": torch.zeros(2, 3, 4)}, streams, "M", ndims=ndims)
    with pytest.raises(
        ValueError, match=r"Stream 'other' is a stream of 3-D batches: M expects \(B, 2, \.\.\.\) with 3"
    ):
        check_stream_inputs({**good, "other": torch.zeros(2, 2)}, streams, "M", ndims={**ndims, "other": 3})
