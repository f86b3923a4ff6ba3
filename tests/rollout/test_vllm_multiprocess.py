"""The other transport: engine core in its own process (VLLM_ENABLE_V1_MULTIPROCESSING=1), weights sent
in safetensors buckets through the worker extension (small buckets here, so a push takes many RPCs and
the worker reloads them in one pass). Runs in a subprocess (the setting is process-wide
and vLLM caches it); about a minute on 2 CPU cores, most of it engine start-up."""

import json
import os
import subprocess
import sys

import pytest
from vllm_testing import SKIP_REASON

pytest.importorskip("vllm", reason=SKIP_REASON)
pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, torch
from vllm_testing import ENGINE_MODEL, SKIP_REASON, perturb
from r1lightning.callbacks import VLLMRolloutRefresh
from r1lightning.policy import Policy, PolicyConfig
from r1lightning.rollout.vllm import VLLMRolloutEngine

def gap(engine, policy, ids):
    ours = VLLMRolloutRefresh.policy_probe(policy, ids)
    return float((torch.tensor(engine.probe_logprobs(ids)) - ours).abs().max())

if __name__ == "__main__":
    policy = Policy(PolicyConfig(tiny=ENGINE_MODEL))
    engine = VLLMRolloutEngine.from_policy(policy, enforce_eager=True, bucket_bytes=64 << 10)
    ids = VLLMRolloutRefresh().probe_ids(policy.tokenizer)
    res = {"in_process": engine.in_process, "start": gap(engine, policy, ids)}
    perturb(policy)
    res["stale"] = gap(engine, policy, ids)
    res["stats"] = engine.update_weights(policy)
    res["expected_tensors"] = len(policy.build().state_dict())
    res["after"] = gap(engine, policy, ids)
    engine.close()
    print("RESULT " + json.dumps(res))
"""


def test_weight_refresh_through_a_separate_engine_process(tmp_path):
    script = tmp_path / "mp_refresh.py"
    script.write_text(SCRIPT)
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT "):])
    assert res["in_process"] is False
    assert res["start"] < 1e-4
    assert res["stale"] > 0.05
    assert res["stats"]["tensors"] == res["expected_tensors"]  # every tensor of every bucket arrived
    assert res["after"] < 1e-4
