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

`dist_strategy: fsdp` shards instead of replicating: PyTorch's FSDP2 (`fully_shard`) on each decoder layer
of the model's Hugging Face backbone (`model.llm`), then on the backbone as the root, so a backbone whose
weights, gradients and optimizer state do not fit one device trains across several (`shard_model`). The
optimizer is built after sharding, over the shards. A checkpoint gathers the shards whole on rank 0, so it
is exactly a one-process run's (a plain NaviGen loads it); reloading it gives each rank its own shard.
FSDP all-gathers the weights in every forward call, so every rank must make as many: NaviGen trains on one
padded batch per step then, and its beam search makes a fixed number of calls per batch.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from logging import getLogger
from typing import Any

import torch
import torch.distributed as dist

STRATEGIES = ("ddp", "fsdp")
# RecBole's keys for the processes of one distributed run (`run_distributed` sets them for each rank).
RUN_KEYS = ("nproc", "world_size", "ip", "port", "offset", "local_rank")


def backend(config) -> str:
    """`dist_backend`, or nccl when CUDA is available and gloo otherwise."""
    return config["dist_backend"] or ("nccl" if torch.cuda.is_available() else "gloo")


def check_strategy(final: dict) -> str:
    """`dist_strategy` if it is known and the run can use it; a ValueError naming the key otherwise."""
    strategy = final.get("dist_strategy", "ddp")
    if strategy not in STRATEGIES:
        raise ValueError(f"dist_strategy must be one of {list(STRATEGIES)}, not {strategy!r}")
    if strategy == "fsdp" and max(final.get("nproc") or 1, final.get("world_size") or 1) < 2:
        raise ValueError("dist_strategy: fsdp shards the model across the processes of a distributed run: it "
                         "needs nproc > 1 (--nproc=N); one process trains the whole model (dist_strategy: ddp)")
    return strategy


def one_process_settings(settings: dict) -> dict:
    """A distributed run's settings (e.g. a checkpoint's) for one process: without the keys of the run's
    processes, which would make RecBole join a process group, nor `dist_strategy`."""
    return {key: value for key, value in settings.items() if key not in (*RUN_KEYS, "dist_strategy")}


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


def whole(value):
    """An FSDP2 shard's whole value (a DTensor gathered, on CPU), or `value` itself when it is not one.
    Every rank must ask for the same shards in the same order: gathering is a collective."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor().cpu() if isinstance(value, DTensor) else value


def whole_values(state):
    """`state` (nested dicts and lists, e.g. an optimizer's state_dict) with every shard gathered whole."""
    if isinstance(state, dict):
        return type(state)((key, whole_values(value)) for key, value in state.items())
    if isinstance(state, (list, tuple)):
        return type(state)(whole_values(value) for value in state)
    return whole(state)


def shard_like(value, parameter):
    """`value`, a whole tensor, as this rank's shard of `parameter` when that is an FSDP2 shard (a DTensor;
    each rank cuts its own part, no communication); `value` itself otherwise."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(parameter, DTensor) or isinstance(value, DTensor):
        return value
    return distribute_tensor(value.to(parameter.dtype), parameter.device_mesh, parameter.placements,
                             src_data_rank=None)


def decoder_layers(backbone: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks a Hugging Face model says must not be split across devices (`_no_split_modules`: its
    decoder layers), in module order."""
    names: set[str] = set()
    for module in backbone.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    layers = [module for module in backbone.modules() if type(module).__name__ in names]
    if not layers:
        raise ValueError(f"dist_strategy: fsdp found no decoder layers in {type(backbone).__name__} "
                         "(no module of its _no_split_modules)")
    return layers


def shard_model(model: torch.nn.Module, device: torch.device) -> None:
    """Shard `model`'s Hugging Face backbone (`model.llm`) across the process group with FSDP2, in place:
    one group per decoder layer, the rest (embeddings, final norm, head) in the backbone's, the root; then
    move the whole model to `device`.

    As DDP does, every rank starts from rank 0's trainable weights (a LoRA adapter's random start is seeded
    per rank); frozen ones come from the same files everywhere. FSDP2 puts new parameters in place of the
    old: their public attributes (the row mask of `llm/backbone.py`) are carried over, and a row-masked
    weight's gradient hook, which would no longer run, becomes a hook zeroing the masked rows of this rank's
    gradient shard once it is reduced (`_mask_sharded_rows`)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    backbone = getattr(model, "llm", None)
    if not isinstance(backbone, torch.nn.Module):
        raise ValueError(f"dist_strategy: fsdp shards a model's Hugging Face backbone (its `llm`); "
                         f"{type(model).__name__} has none: use dist_strategy: ddp")
    layers, kind = decoder_layers(backbone), type(backbone).__name__
    with torch.no_grad():
        for parameter in backbone.parameters():
            if parameter.requires_grad:
                value = parameter.detach().to(device)
                dist.broadcast(value, src=0)
                parameter.copy_(value)
    attributes = {name: {key: value for key, value in vars(parameter).items() if not key.startswith("_")}
                  for name, parameter in backbone.named_parameters()}
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in reversed(layers):  # bottom-up, as fully_shard wants
        fully_shard(layer, mesh=mesh)
    # The root too is resharded after each forward call (FSDP2 would keep it whole until backward): between
    # calls every parameter is then its shard, with the attributes carried below (e.g. when saving).
    fully_shard(backbone, mesh=mesh, reshard_after_forward=True)
    model.to(device)  # what lies outside the backbone (NaviGen's token table)
    parameters = dict(backbone.named_parameters())
    for name, carried in attributes.items():
        for key, value in carried.items():
            setattr(parameters[name], key, value)
    _mask_sharded_rows(parameters.values())
    for module in backbone.modules():  # Hugging Face's generate then keeps every rank stepping until all end
        if hasattr(module, "generate"):
            module._is_fsdp_managed_module = True
    getLogger().info(f"dist_strategy fsdp: {kind} sharded across {dist.get_world_size()} "
                     f"processes ({len(layers)} decoder layers, then the rest as the root)")


def _mask_sharded_rows(parameters) -> None:
    """For each sharded weight with a row mask: zero its masked rows in this rank's gradient shard right after
    FSDP2 reduces it (it runs a shard's post-accumulate-grad hooks then), before clipping and the optimizer."""
    from torch.distributed.tensor import distribute_tensor

    from recbole_navigen.llm.backbone import _ROW_MASK

    for parameter in parameters:
        keep = getattr(parameter, _ROW_MASK, None)
        if keep is None:
            continue
        # The mask cut as the weight is (rows on dim 0): this rank's rows, as a column to broadcast.
        local = distribute_tensor(keep.unsqueeze(-1), parameter.device_mesh, parameter.placements,
                                  src_data_rank=None).to_local()

        def zero_masked_rows(shard, local=local) -> None:
            shard.grad.to_local().masked_fill_(~local, 0.0)

        parameter.register_post_accumulate_grad_hook(zero_masked_rows)


@contextmanager
def _returning(owner, state):
    """`owner.state_dict()` returns `state` for the duration."""
    owner.state_dict = lambda *args, **kwargs: state
    try:
        yield
    finally:
        del owner.state_dict


def distributed_trainer(base: type) -> type:
    """`base` (a RecBole Trainer class) for a distributed run: the model wrapped for its own device, and
    evaluation on every user's rows (module docstring)."""
    from torch.nn.parallel import DistributedDataParallel

    class DistributedTrainer(base):
        def __init__(self, config, model) -> None:
            self.strategy = check_strategy(config.final_config_dict)
            if self.strategy == "fsdp":
                shard_model(model, config["device"])  # before the optimizer is built: it holds the shards
            config["single_spec"] = True  # RecBole's own wrapper is for GPUs only: build ours below
            try:
                super().__init__(config, model)
            finally:
                config["single_spec"] = False
            if self.strategy == "ddp":
                device_ids = [config["local_rank"]] if config["device"].type == "cuda" else None
                self.distributed_model = DistributedDataParallel(self.model, device_ids=device_ids)
            # Rank 0 writes the checkpoint every rank reloads; its name holds the time, which ranks may
            # read a second apart.
            names = [self.saved_model_file]
            dist.broadcast_object_list(names, src=0)
            self.saved_model_file = names[0]

        def set_reduce_hook(self):
            if self.strategy == "ddp":  # FSDP2 reduces gradients in its own backward hooks
                super().set_reduce_hook()

        def sync_grad_loss(self):
            return super().sync_grad_loss() if self.strategy == "ddp" else 0

        def _save_checkpoint(self, epoch, verbose=True, **kwargs):
            if self.strategy == "ddp":
                return super()._save_checkpoint(epoch, verbose, **kwargs)
            # Every rank takes part in gathering the shards whole; rank 0 writes them as one process would.
            model_state = whole_values(self.model.state_dict())
            optimizer_state = whole_values(self.optimizer.state_dict())
            if self.config["local_rank"] != 0:  # as RecBole: one writer per machine
                return None
            with _returning(self.model, model_state), _returning(self.optimizer, optimizer_state):
                return super()._save_checkpoint(epoch, verbose, **kwargs)

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


@contextmanager
def rank_zero_first():
    """In a process group, rank 0 runs the block first and the other ranks after it (then finding what it
    cached: identifiers, the tiny backbone), so no two ranks build one cache folder at once; without a
    group, just the block."""
    group = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if group and dist.get_rank() != 0:
        dist.barrier()
    try:
        yield
    finally:
        if group and dist.get_rank() == 0:
            dist.barrier()


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
