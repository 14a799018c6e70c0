"""Multi-process training through RecBole's own distributed path, one process per device.

RecBole 1.2.1 spawns `nproc` processes (keys `nproc`, `world_size`, `ip`, `port`, `offset`), gives each a
`DistributedSampler`, wraps the model in `DistributedDataParallel` and averages metrics across ranks. Three
things are extended here, nothing forked:

- the backend is a config key, `dist_backend` (`~`: nccl with CUDA, gloo without), so CPU runs work
  (`Config._init_device` calls `init_process_group` with it);
- the trainer wraps the model for the device it is on (RecBole passes `device_ids=[rank]`, which
  DistributedDataParallel refuses for a CPU model): `distributed_trainer`;
- metrics are computed once on every user: each rank's per-user rows (the collector's `rec.*` tensors)
  are gathered, put back in the sampler's order without its padding, and scored by RecBole's evaluator.
  RecBole instead averages per-rank metrics weighted by a count of batches, which is slightly wrong
  whenever ranks differ in size.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def backend(config) -> str:
    """`dist_backend`, or nccl when CUDA is available and gloo otherwise."""
    return config["dist_backend"] or ("nccl" if torch.cuda.is_available() else "gloo")


def init_process(final: dict) -> None:
    """Join the process group of a distributed run described by RecBole's keys in `final` (a config dict),
    and set its device, as RecBole's `_init_device` does but with the configured backend."""
    chosen = backend(final)
    if chosen == "nccl":
        visible = [gpu for gpu in str(final["gpu_id"]).split(",") if gpu]
        if len(visible) < final["nproc"]:
            raise ValueError(f"nproc={final['nproc']} needs as many GPUs in gpu_id, got {final['gpu_id']!r}")
    dist.init_process_group(backend=chosen, rank=final["local_rank"] + final["offset"],
                            world_size=final["world_size"], init_method=f"tcp://{final['ip']}:{final['port']}")
    if chosen == "nccl":
        final["device"] = torch.device("cuda", final["local_rank"])
        torch.cuda.set_device(final["local_rank"])
    else:
        final["device"] = torch.device("cpu")
    final["single_spec"] = False
    if final["local_rank"] != 0:  # one rank speaks, as in RecBole
        final.update(state="error", show_progress=False, verbose=False)


class _GatheringEvaluator:
    """RecBole's evaluator, fed with every rank's per-user rows in the sampler's order."""

    def __init__(self, evaluator, total: int) -> None:
        self.evaluator, self.total = evaluator, total

    def evaluate(self, struct) -> Any:
        rows = struct.get("rec.topk").shape[0] if "rec.topk" in struct else None
        world = dist.get_world_size()
        for key in list(struct._data_dict):
            value = struct.get(key)
            if rows is None or not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != rows:
                continue
            parts: list = [None] * world
            dist.all_gather_object(parts, value.cpu())
            struct.set(key, interleave(parts, self.total))
        return self.evaluator.evaluate(struct)


def interleave(parts: list[torch.Tensor], total: int) -> torch.Tensor:
    """Undo `DistributedSampler(shuffle=False)`: rank r held samples r, r + world, ...; the sampler padded
    the end with repeats to even shares, which are dropped (only the first `total` are real)."""
    if len({len(part) for part in parts}) != 1:
        raise ValueError(f"ranks hold {[len(p) for p in parts]} rows: a padded DistributedSampler gives equal shares")
    by_position = torch.stack(parts, dim=1)  # [rows per rank, world, ...]: sample j * world + r at [j, r]
    return by_position.reshape(-1, *parts[0].shape[1:])[:total]


def distributed_trainer(base: type) -> type:
    """`base` (a RecBole Trainer class) for a distributed run: the model wrapped for its own device, and
    evaluation on every user's rows (module docstring)."""
    from torch.nn.parallel import DistributedDataParallel

    class DistributedTrainer(base):
        def __init__(self, config, model) -> None:
            config["single_spec"] = True  # RecBole's own wrapper is for GPUs only: build ours below
            try:
                super().__init__(config, model)
            finally:
                config["single_spec"] = False
            device_ids = [config["local_rank"]] if config["device"].type == "cuda" else None
            self.distributed_model = DistributedDataParallel(self.model, device_ids=device_ids)
            # Rank 0 writes the checkpoint every rank reloads; its name holds the time, which ranks may
            # read a second apart.
            names = [self.saved_model_file]
            dist.broadcast_object_list(names, src=0)
            self.saved_model_file = names[0]

        @torch.no_grad()
        def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
            if not eval_data:
                return None
            if load_best_model:
                dist.barrier()  # rank 0 writes the best checkpoint: every rank reloads it only once it is whole
            evaluator = self.evaluator
            self.evaluator = _GatheringEvaluator(evaluator, eval_data.sample_size)
            self.config["single_spec"] = True  # metrics are exact already: no averaging across ranks
            try:
                return super().evaluate(eval_data, load_best_model, model_file, show_progress)
            finally:
                self.evaluator = evaluator
                self.config["single_spec"] = False

    DistributedTrainer.__name__ = DistributedTrainer.__qualname__ = f"Distributed{base.__name__}"
    return DistributedTrainer


def make_shared_folders(config) -> None:
    """Create the folders every rank writes into (RecBole's log folder, the checkpoints) before the ranks
    do: RecBole checks and creates them without `exist_ok`, so two ranks at once race."""
    for folder in ("log", os.path.join("log", str(config["model"])), config["checkpoint_dir"]):
        os.makedirs(folder, exist_ok=True)


def free_port() -> int:
    """A free TCP port on this machine for the process group's rendezvous."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, run, args: tuple, settings: dict, queue) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = run(*args[:2], args[2], {**(args[3] or {}), **settings, "local_rank": rank}, *args[4:])
    if rank == 0:
        queue.put(result)
    dist.destroy_process_group()


def run_distributed(run, model, dataset, config_file_list, config_dict, cmd_args, nproc: int,
                    ip: str = "127.0.0.1", port: int | None = None, offset: int = 0, world_size: int = -1):
    """`run(model, dataset, config_file_list, config_dict, cmd_args)` in `nproc` spawned processes of one
    group (RecBole's keys), returning rank 0's result."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    settings = {"nproc": nproc, "world_size": nproc if world_size == -1 else world_size, "ip": ip,
                "port": str(port or free_port()), "offset": offset}
    mp.spawn(_worker, args=(run, (model, dataset, config_file_list, config_dict, cmd_args), settings, queue),
             nprocs=nproc, join=True)
    return None if queue.empty() else queue.get()
