"""torch.export weights mapped from the .pt2 file (ptserve.loading.mapped)."""

from pathlib import Path

import torch
from torch import nn

from ptserve.loading.mapped import map_export_weights


def exported(path: Path, seed: int) -> Path:
    """Linear, BatchNorm (random statistics), Linear: parameters and buffers, all from seed."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 3)).eval()
    norm = model[1]
    assert isinstance(norm, nn.BatchNorm1d)
    for tensor in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
        assert tensor is not None
        tensor.data = torch.rand_like(tensor) + 0.5
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.zeros(2, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    return path


def in_file(tensor: torch.Tensor, path: Path) -> bool:
    """Whether ``tensor``'s data lies in a memory mapping of ``path`` (from /proc/self/maps)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(path.resolve()):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= tensor.data_ptr() < end:
                return True
    return False


def test_every_weight_becomes_a_view_of_the_file_with_the_same_outputs(tmp_path: Path) -> None:
    path = exported(tmp_path / "m.pt2", seed=0)
    x = torch.randn(5, 8)
    expected = torch.export.load(path).module()(x)
    program = torch.export.load(path)
    assert not any(in_file(t, path) for t in program.state_dict.values())  # torch copies

    mapped = map_export_weights(program, path)

    weights = program.state_dict
    assert mapped == len(weights) == 9  # 3 x (weight, bias), mean, var, batches tracked
    assert all(in_file(t, path) for t in weights.values())
    assert isinstance(weights["1.weight"], nn.Parameter)
    assert not isinstance(weights["1.running_mean"], nn.Parameter)
    torch.testing.assert_close(program.module()(x), expected, rtol=0, atol=0)


def test_a_weight_whose_bytes_differ_keeps_its_copy(tmp_path: Path) -> None:
    """The equality check: a program mapped against another file of the same layout (other
    values) keeps every weight torch read but the one equal in both (batches tracked, 0)."""
    program = torch.export.load(exported(tmp_path / "a.pt2", seed=0))
    other = exported(tmp_path / "b.pt2", seed=1)
    assert map_export_weights(program, other) == 1
    assert not in_file(program.state_dict["0.weight"], other)
    assert in_file(program.state_dict["1.num_batches_tracked"], other)
