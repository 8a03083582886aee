"""A launched process leaves its process group at exit only after a run that succeeded."""

import pytest
import torch.distributed as dist

from alignkit import cli


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("succeeded", [True, False])
def test_the_exit_handler_leaves_the_process_group_only_after_a_successful_run(process_group, monkeypatch, succeeded):
    monkeypatch.setattr(cli._exit_state, "last_run_succeeded", succeeded)
    cli._leave_process_group_at_exit()
    # After a failure the group is kept: the barrier would wait for ranks the launcher is about to end.
    assert dist.is_initialized() is not succeeded
