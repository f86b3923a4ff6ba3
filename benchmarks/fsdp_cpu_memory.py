"""Per-rank peak memory of FSDP2 on CPU: one process (unsharded) vs the same model sharded over 2 gloo ranks.

Each rank builds the policy the way the trainer does (``Policy.build``, with ``device_mesh`` for FSDP2: built on
the meta device, rank 0 loads and broadcasts), then takes ``--steps`` SFT-style steps (log-probs through the
root forward, backward, gradient clipping, AdamW). Measured per rank:

* ``state_mb``: bytes this rank holds of parameters + gradients + AdamW moments (local shards under FSDP2),
  counted from the tensors themselves;
* ``load_peak_mb``: VmHWM growth over the post-import RSS while the model is built and loaded (rank 0 of the
  sharded run holds the full source copy until the broadcast ends; the other rank never does);
* ``train_peak_mb``: VmHWM growth over the RSS before the first step, with VmHWM reset (``/proc/self/clear_refs``)
  once the model is built: the peak of training itself (gradients, AdamW moments, activations, gathered layers);
* ``peak_mb``: the whole run's peak (build and training) over the RSS after the imports.

glibc is told to mmap blocks of 64 KiB and more (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave the resident
set and the peaks are the tensors', not the heap's. One intra-op thread per rank.

    python benchmarks/fsdp_cpu_memory.py                      # hidden 512, 8 layers (~34M parameters)
    python benchmarks/fsdp_cpu_memory.py --hidden 256 --layers 4 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS


def _worker(rank: int, world: int, port: int, args, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    from r1lightning.policy import Policy, PolicyConfig, TinyModelSettings

    mesh = None
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",))
    cfg = PolicyConfig(tiny=TinyModelSettings(hidden_size=args.hidden, num_hidden_layers=args.layers,
                                              num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden))
    policy = Policy(cfg)
    _reset_peak()
    base = _status_kb("VmRSS")
    model = policy.build(device_mesh=mesh)
    load_peak = _status_kb("VmHWM") - base
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(rank)
    _reset_peak()
    before = _status_kb("VmRSS")
    for _ in range(args.steps):
        ids = torch.randint(3, model.config.vocab_size, (args.batch, args.seq), generator=g)
        logp, _ = policy.token_logprobs(ids)
        (-logp.mean()).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)  # the gradients stay allocated: counted in the state
    train_peak = _status_kb("VmHWM") - before

    def local_bytes(t) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    state = sum(local_bytes(p) for p in params) + sum(local_bytes(p.grad) for p in params if p.grad is not None)
    state += sum(local_bytes(v) for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim > 0)
    n_params = sum(p.numel() for p in params)
    result = {"rank": rank, "world": world, "params": n_params, "state_mb": state / 2**20,
              "load_peak_mb": load_peak / 1024, "train_peak_mb": train_peak / 1024,
              # the whole run's peak (build + training) over the RSS after the imports
              "peak_mb": max(load_peak, before - base + train_peak) / 1024,
              "rss_after_mb": _status_kb("VmRSS") / 1024}
    Path(out, f"rank{rank}_of{world}.json").write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world: int, args, out: str) -> list[dict]:
    import torch.multiprocessing as mp

    mp.start_processes(_worker, args=(world, _free_port(), args, out), nprocs=world, start_method="spawn")
    return [json.loads(Path(out, f"rank{r}_of{world}.json").read_text()) for r in range(world)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "fsdp_cpu_memory.json"))
    args = ap.parse_args()
    # inherited by the spawned ranks, read by glibc at their start
    os.environ.update(MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    import tempfile

    tmp = tempfile.mkdtemp(prefix="r1l_fsdp_mem_")
    one = measure(1, args, tmp)
    two = measure(2, args, tmp)
    report = {"config": vars(args), "one_process": one, "fsdp2_two_ranks": two,
              "ratios_two_ranks_over_one": {
                  k: [round(r[k] / one[0][k], 3) for r in two]
                  for k in ("state_mb", "peak_mb", "train_peak_mb", "load_peak_mb")}}
    print(json.dumps(report, indent=1))
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
