"""Fixtures every test module gets.

Every test module runs torch on one thread. The models here are tiny: a second intra-op thread
buys nothing, and on a shared 2-core machine an OpenMP thread pool that competes with other
processes can make a 1 s training run take a minute (spin-waiting). The previous setting is
restored after each test module.

Module-scoped fixtures' temporary directories are removed when their module passes. The main
job's checkpoints are about 260 MB each and a full run writes several GB; CI's disk filled up
with them. Per-test directories go by pytest's own `tmp_path_retention_policy = "failed"`
(pyproject); a failing module keeps everything for inspection.
"""

import shutil

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="module")
def _remove_module_temporaries(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    basetemp = tmp_path_factory.getbasetemp()
    before = set(basetemp.iterdir())
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed != failed_before:
        return
    for path in set(basetemp.iterdir()) - before:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
