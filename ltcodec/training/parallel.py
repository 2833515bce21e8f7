"""Data parallelism over processes on one machine: the two cores train one model.

One training process on one thread leaves the second core idle, and a second thread in the same process
buys little for these small convolutions.  Two processes of one thread each, every one holding the whole
model, optimizer and moving average, each computing the gradient of its slice of the batch, do scale: on
one thread the audio model's step on 4 crops takes less than half the time of a step on 8.  The
gradients are averaged over the processes (gloo on the loopback) before every step, so the ranks stay
identical and the run computes what one process would on the whole batch (up to the noise each process
draws for itself).

Rank 0 is the run as the recipe knows it (log, evals, checkpoints); the others only compute.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import sys
from typing import Callable, Iterable, Sequence, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

T = TypeVar("T")


class Ranks:
    """The processes of one run; with one process every operation is the identity (no process group)."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @property
    def main(self) -> bool:
        return self.rank == 0

    def part(self, batch: int) -> slice:
        """This rank's slice of a batch of ``batch`` samples (a multiple of the number of ranks)."""
        share = batch // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def main_first(self, load: Callable[[], T]) -> T:
        """``load()`` on rank 0, then on the others: what rank 0 writes on the way (a cache of converted
        files) the others read instead of writing it at the same time."""
        if self.main:
            result = load()
        if self.world > 1:
            dist.barrier()
        if not self.main:
            result = load()
        return result

    def broadcast_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Overwrite the tensors, in place, with rank 0's."""
        if self.world > 1:
            for t in tensors:
                dist.broadcast(t, 0)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """The ranks' tensors (of one shape) concatenated along the first axis, in rank order."""
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def assert_same(self, model: torch.nn.Module) -> None:
        """Raise if the ranks' weights differ.  They take the same averaged steps from the same start, so
        they stay equal bit for bit unless something a rank did alone reached them."""
        if self.world == 1:
            return
        sums = torch.stack([torch.stack([t.double().sum(), t.double().abs().sum()])
                            for t in model.state_dict().values() if t.is_floating_point()]).flatten()
        everyone = self.gather(sums[None])
        if not torch.equal(everyone, everyone[:1].expand_as(everyone)):
            raise RuntimeError("the training processes' weights have drifted apart")

    def share(self, columns: Sequence[torch.Tensor], cpu_seconds: float) -> tuple[list[torch.Tensor], float]:
        """The whole batch's per-sample columns (each rank's slice in rank order) and the CPU seconds the
        other ranks have spent, from this rank's columns (one value per sample of its slice) and its own
        CPU seconds: one gather per step."""
        mine = torch.cat([torch.stack([c.detach().float() for c in columns], 1).flatten(),
                          torch.tensor([cpu_seconds], dtype=torch.float32)])
        everyone = self.gather(mine[None]).double()
        others = float(everyone[:, -1].sum() - everyone[self.rank, -1])
        whole = everyone[:, :-1].reshape(-1, len(columns))
        return [whole[:, k].float() for k in range(len(columns))], others

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over the ranks (one reduction of one flat buffer); parameters
        without a gradient (held fixed) are left out alike on every rank."""
        if self.world == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when the one that started it dies, however it dies.

    torch's spawn asks for SIGINT, which a command started in the background (``nohup … &``) inherits as
    ignored: killing such a run left its ranks training on, rank 0 writing into the run's folder."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def _rank_main(rank: int, world: int, port: int, fn: Callable, args, parent: int) -> None:
    _die_with(parent)
    if rank:  # rank 0 speaks for the run
        sys.stdout = open(os.devnull, "w")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    fn(args, Ranks(rank, world))
    # A rank that raised does not come here: spawn ends the others and reports the error.  The others leave
    # together (rank 0 writes the last checkpoint while the rest wait) and skip the interpreter's teardown:
    # a rank has been aborted on its way out ("terminate called without an active exception") after its
    # work was done, which spawn reports as a failed run.  Everything a rank writes is closed by now.
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def add_argument(parser: argparse.ArgumentParser) -> None:
    """The recipes' ``--ranks`` option."""
    parser.add_argument("--ranks", type=int, default=1,
                        help="processes that share each batch (ltcodec.training.parallel), one thread each")


def run(fn: Callable, args: argparse.Namespace) -> None:
    """``fn(args, ranks)`` in ``args.ranks`` processes (in this one when that is 1), each batch of
    ``args.batch`` split evenly over them.

    Killing this process stops the run: the kernel kills each rank when its parent dies (PR_SET_PDEATHSIG
    on Linux), so rank 0 does not train on alone, writing into the run's folder.
    """
    world = args.ranks
    if world < 1 or args.batch % world:
        raise SystemExit(f"--ranks {world}: the batch of {args.batch} must split evenly over the processes")
    if world == 1:
        fn(args, Ranks())
        return
    mp.spawn(_rank_main, args=(world, _free_port(), fn, args, os.getpid()), nprocs=world, join=True)
