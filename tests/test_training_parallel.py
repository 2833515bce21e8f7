import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ltcodec.training.parallel import Ranks, run

SLEEPING_RANKS = """
import argparse, os, sys, time
from ltcodec.training.parallel import run

def sleep(args, ranks):
    with open(args.pids, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(120)

if __name__ == "__main__":
    run(sleep, argparse.Namespace(pids=sys.argv[1], ranks=2, batch=2))
"""


def _finish_late_or_fail(args, ranks):
    """Rank 0 writes its result after the others are done, as it writes the last checkpoint; rank
    ``args.failing`` raises."""
    torch.distributed.all_reduce(torch.ones(4))
    if ranks.rank == args.failing:
        raise ValueError("this rank failed")
    if ranks.main:
        time.sleep(1.0)
        (args.out / "done").write_text(str(ranks.world))


def test_a_run_returns_after_every_rank_is_done_and_fails_when_one_fails(tmp_path):
    import argparse

    args = argparse.Namespace(out=tmp_path, ranks=2, batch=2, failing=-1)
    run(_finish_late_or_fail, args)
    assert (tmp_path / "done").read_text() == "2"
    with pytest.raises(Exception, match="this rank failed"):
        run(_finish_late_or_fail, argparse.Namespace(**{**vars(args), "failing": 1}))


def test_one_rank_is_the_whole_batch_and_changes_nothing():
    ranks = Ranks()
    assert ranks.main and ranks.part(8) == slice(0, 8)
    t = torch.arange(6.0)
    assert ranks.gather(t) is t
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    ranks.average_gradients([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    assert [Ranks(r, 2).part(8) for r in (0, 1)] == [slice(0, 4), slice(4, 8)]
    losses, rates = torch.rand(4), torch.rand(4)
    (whole_losses, whole_rates), others = ranks.share([losses, rates], 3.5)
    assert torch.equal(whole_losses, losses) and torch.equal(whole_rates, rates) and others == 0.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_the_ranks_end_when_the_command_that_started_them_is_killed(tmp_path):
    script, pids = tmp_path / "ranks.py", tmp_path / "pids"
    script.write_text(SLEEPING_RANKS)
    # Started as `nohup … &` starts a run: in the background, where SIGINT is ignored.
    parent = subprocess.Popen([sys.executable, str(script), str(pids)], cwd=tmp_path,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.time() + 60
    while (not pids.exists() or len(pids.read_text().split()) < 2) and time.time() < deadline:
        time.sleep(0.2)
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 2
    parent.send_signal(signal.SIGTERM)  # as `pkill -f` stops the run: its ranks are not told
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(p) for p in children):
        time.sleep(0.2)
    assert not any(_alive(p) for p in children)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by init) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
