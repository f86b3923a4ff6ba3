"""One vLLM CPU engine per rank beside an FSDP2-sharded policy (2 gloo ranks, launched by torchrun from
tests/rollout/test_vllm_fsdp.py): start-up from the gathered folder, then a push after every rank changed its
shards. Writes OUT/rank{r}.json with the engine-vs-policy probe gaps."""

import json
import os
import sys
from pathlib import Path

for key, value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                   "VLLM_CPU_KVCACHE_SPACE": "1"}.items():
    os.environ.setdefault(key, value)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_testing import ENGINE_MODEL  # noqa: E402

from r1lightning.callbacks import VLLMRolloutRefresh  # noqa: E402
from r1lightning.policy import Policy, PolicyConfig  # noqa: E402
from r1lightning.rollout.vllm import VLLMRolloutEngine  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    policy = Policy(PolicyConfig(tiny=ENGINE_MODEL))
    policy.build(device_mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
    engine = VLLMRolloutEngine.from_policy(policy, enforce_eager=True)
    ids = VLLMRolloutRefresh().probe_ids(policy.tokenizer)

    def gap() -> tuple[float, list[float]]:
        engine_lp = torch.tensor(engine.probe_logprobs(ids))
        return float((engine_lp - VLLMRolloutRefresh.policy_probe(policy, ids)).abs().max()), engine_lp.tolist()

    start_gap, before = gap()
    gen = torch.Generator().manual_seed(dist.get_rank())
    with torch.no_grad():
        for p in policy.build().parameters():  # each rank moves its own shard: a stand-in for an optimizer step
            local = p.to_local()
            local.add_(0.05 * torch.randn(local.shape, generator=gen))
    info = engine.update_weights(policy)
    push_gap, after = gap()
    moved = max(abs(a - b) for a, b in zip(before, after))
    out.joinpath(f"rank{dist.get_rank()}.json").write_text(json.dumps(
        {"start_gap": start_gap, "push_gap": push_gap, "engine_moved": moved, "tensors": info["tensors"]}))
    engine.close()


if __name__ == "__main__":
    main()
