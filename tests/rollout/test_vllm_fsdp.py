"""vLLM CPU engines beside an FSDP2-sharded policy on 2 torchrun ranks (gloo): each rank's engine starts from the
gathered weights and, after every rank changed its own shards, a push (gathered one tensor at a time, in the same
order on both ranks) makes it compute what the sharded policy computes."""

import json
import sys
from pathlib import Path

import pytest
from vllm_testing import SKIP_REASON

from r1l_testing import run_process_group

pytest.importorskip("vllm", reason=SKIP_REASON)


@pytest.mark.slow
def test_fsdp_push_into_per_rank_vllm_engines(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           Path(__file__).with_name("vllm_fsdp_worker.py"), tmp_path]
    run_process_group(cmd, tmp_path, 400, "the 2-rank vLLM + FSDP2 run did not finish in 400 s")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["tensors"] > 0
        assert r["start_gap"] < 1e-4  # the engine started from the gathered (unsharded) weights
        assert r["engine_moved"] > 1e-2  # the push changed the engine ...
        assert r["push_gap"] < 1e-4  # ... into the sharded policy as it is now
