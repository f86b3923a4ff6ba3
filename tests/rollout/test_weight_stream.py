"""The weight push, without vLLM: the policy's weights stream one tensor at a time (LoRA merged out of place,
DTensors gathered lazily), both transports of ``update_weights`` consume the stream as it comes, sleep mode
wakes only what each step needs, and the external_launcher environment is filled in from the process group.

The vLLM engine itself is replaced by fakes that run the real worker-extension code.
"""

import gc
import inspect
import weakref
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
from vllm_testing import ENGINE_MODEL, perturb

import r1lightning.rollout.vllm as vllm_engine
from r1lightning.policy import LoraSettings, Policy, PolicyConfig
from r1lightning.rollout.vllm import VLLMRolloutEngine, WeightSyncExtension, external_launcher_env, policy_weights


@pytest.fixture(scope="module")
def policy():
    return Policy(PolicyConfig(tiny=ENGINE_MODEL))


@pytest.fixture(scope="module")
def lora_policy():
    p = Policy(PolicyConfig(tiny=ENGINE_MODEL, lora=LoraSettings(r=4, alpha=8)))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # peft initialises lora_B to 0 (a no-op adapter): give it a real delta
        for name, prm in p.build().named_parameters():
            if "lora_B" in name:
                prm.copy_(0.05 * torch.randn(prm.shape, generator=gen))
    return p


class LiveCounter:
    """Consumes a (name, tensor) stream, dropping each tensor before asking for the next; records how many of
    the tensors it received were alive at once (weak references: only the producer could keep them)."""

    def __init__(self):
        self.refs, self.max_alive, self.names = [], 0, []

    def consume(self, stream):
        for name, tensor in stream:
            self.refs.append(weakref.ref(tensor))
            self.names.append(name)
            del tensor
            gc.collect()
            self.max_alive = max(self.max_alive, sum(r() is not None for r in self.refs))
        return self


def test_stream_is_the_state_dict_one_tensor_at_a_time(policy):
    stream = policy_weights(policy)
    assert inspect.isgenerator(stream)  # nothing computed before the consumer asks
    pairs = list(stream)
    sd = policy.build().state_dict()
    assert [n for n, _ in pairs] == list(sd)
    assert all(torch.equal(t, sd[n]) for n, t in pairs)
    names = [n for n, _ in pairs]
    assert "lm_head.weight" in names and "model.embed_tokens.weight" in names  # tied: sent under both names


def test_cast_copies_are_never_alive_together(policy):
    # fp32 master weights pushed to a bf16 engine: every yielded tensor is a fresh cast copy
    counter = LiveCounter().consume(policy_weights(policy, dtype=torch.bfloat16))
    assert len(counter.refs) == len(policy.build().state_dict()) > 10
    assert counter.max_alive == 1  # the whole bf16 model never exists at once
    # a consumer that keeps everything (what `list(...)` did before) shows the counter can fail
    kept = list(policy_weights(policy, dtype=torch.bfloat16))
    refs = [weakref.ref(t) for _, t in kept]
    assert sum(r() is not None for r in refs) == len(kept)


class FakeDTensor:
    """What the stream needs of a DTensor: ``full_tensor()`` (a collective) and ``to_local()``."""

    log: list = []

    def __init__(self, name, full):
        self.name, self._full = name, full

    def full_tensor(self):
        FakeDTensor.log.append(self.name)
        return self._full.clone()  # a gather allocates a new full tensor

    def to_local(self):
        return self._full[:1]


def test_dtensors_are_gathered_lazily_in_state_dict_order():
    params = OrderedDict((f"layers.{i}.weight", FakeDTensor(f"layers.{i}.weight", torch.randn(4, 4))) for i in range(5))
    fake = Policy.__new__(Policy)
    torch.nn.Module.__init__(fake)
    fake.config = PolicyConfig(tiny=ENGINE_MODEL)
    fake.model = SimpleNamespace(state_dict=lambda: params)  # build() returns it
    FakeDTensor.log = []
    stream = fake.merged_weights()
    seen = []
    for i, (name, tensor) in enumerate(stream):
        assert FakeDTensor.log == list(params)[: i + 1]  # gathered only when asked for, in order
        assert isinstance(tensor, torch.Tensor) and torch.equal(tensor, params[name]._full)
        seen.append(name)
    assert seen == list(params)


def _logits(policy, ids):
    model = policy.build()
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_stream_equals_merge_and_unload_and_leaves_the_adapter_alone(lora_policy):
    model = lora_policy.build()
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    before_params = {n: p.detach().clone() for n, p in model.named_parameters()}
    before_logits = _logits(lora_policy, ids)
    merged = lora_policy.merged_model().state_dict()  # the deep-copy reference
    counter = LiveCounter()
    pairs = []
    for name, tensor in lora_policy.merged_weights():
        pairs.append((name, tensor.clone()))
        counter.consume([(name, tensor)])
    assert [n for n, _ in pairs] == list(merged)  # save_pretrained's names: no base_model.model., no lora_
    assert not any("lora_" in n or "base_layer" in n or n.startswith("base_model") for n, _ in pairs)
    assert all(torch.equal(t, merged[n]) for n, t in pairs)  # bit-identical to merge_and_unload
    q = "model.layers.0.self_attn.q_proj.weight"
    base_q = before_params["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert not torch.equal(dict(pairs)[q], base_q)  # the adapter really was merged in
    assert counter.max_alive == 1
    # the trainer's model is exactly as before: same parameters (adapter included), same outputs, still a peft model
    after = dict(model.named_parameters())
    assert set(after) == set(before_params)
    assert all(torch.equal(after[n].detach(), before_params[n]) for n in before_params)
    assert torch.equal(_logits(lora_policy, ids), before_logits)
    assert hasattr(model, "peft_config") and any("lora_A" in n for n in after)
    model.train()


# ---------------------------------------------------------------- update_weights with a fake vLLM
class FakeWorker(WeightSyncExtension):
    """The real extension methods on a worker whose ``reload_weights`` records what arrives."""

    def __init__(self):
        self.received, self.reloads, self.counter = {}, 0, LiveCounter()

    def reload_weights(self, weights_iterator, is_checkpoint_format):
        assert is_checkpoint_format and not isinstance(weights_iterator, (list, tuple, dict))
        self.reloads += 1

        def record(stream):
            for name, tensor in stream:
                assert name not in self.received
                self.received[name] = tensor.detach().clone()
                yield name, tensor

        self.counter.consume(record(weights_iterator))


class FakeLLM:
    def __init__(self):
        self.worker, self.calls, self.blobs = FakeWorker(), [], []

    def collective_rpc(self, method, kwargs=None):
        self.calls.append(method)
        if "blob" in (kwargs or {}):
            self.blobs.append(len(kwargs["blob"]))
        return [getattr(self.worker, method)(**(kwargs or {}))]

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags)))

    def sleep(self, level=1):
        self.calls.append(("sleep", level))


def fake_engine(in_process=True, dtype=torch.float32, sleep_mode=False, bucket_bytes=vllm_engine.DEFAULT_BUCKET_BYTES):
    engine = VLLMRolloutEngine.__new__(VLLMRolloutEngine)  # no vLLM: only the attributes the push reads
    engine.llm, engine.in_process, engine.dtype, engine.update_method = FakeLLM(), in_process, dtype, "reload"
    engine.sleep_mode, engine._sleeping, engine.num_updates, engine.bucket_bytes = sleep_mode, set(), 0, bucket_bytes
    return engine


def test_in_process_push_hands_the_stream_to_the_worker(policy):
    engine = fake_engine(dtype=torch.bfloat16)
    info = engine.update_weights(policy)
    sd = policy.build().state_dict()
    worker = engine.llm.worker
    assert worker.reloads == 1 and list(worker.received) == list(sd)
    assert worker.counter.max_alive == 1  # consumed as produced, not collected into a list first
    assert all(torch.equal(worker.received[n], t.to(torch.bfloat16)) for n, t in sd.items())
    assert info["tensors"] == len(sd) and info["dtype"] == "bfloat16" and info["seconds"] > 0
    assert info["bytes"] == sum(t.numel() * 2 for t in sd.values())  # as sent: bf16
    assert engine.llm.calls == ["r1l_update_weights", "reset_prefix_cache"] and engine.num_updates == 1


def test_multiprocess_push_sends_bounded_buckets_and_reloads_once(policy):
    sd = policy.build().state_dict()
    largest = max(t.numel() * t.element_size() for t in sd.values())
    engine = fake_engine(in_process=False, bucket_bytes=largest)  # about one large matrix per bucket
    perturb(policy, seed=3)
    info = engine.update_weights(policy)
    worker = engine.llm.worker
    assert len(engine.llm.blobs) > 3  # really split
    assert max(engine.llm.blobs) <= largest + 4096  # a bucket's tensors never exceed the limit (+ header)
    assert worker.reloads == 1  # one reload over all buckets: no layer is reloaded from part of its weights
    assert list(worker.received) == list(sd)
    assert all(torch.equal(worker.received[n], t) for n, t in sd.items())
    assert info["tensors"] == len(sd)
    assert engine.llm.calls[-2:] == ["r1l_finish_buckets", "reset_prefix_cache"]


def test_sleep_mode_wakes_weights_for_a_push_and_the_cache_for_generate(policy, monkeypatch):
    emptied = []
    monkeypatch.setattr(vllm_engine, "_empty_cuda_cache", lambda: emptied.append(len(engine.llm.calls)))
    engine = fake_engine(sleep_mode=True)
    engine._sleep()  # after a rollout
    assert engine.asleep and engine.llm.calls == [("sleep", 1)]
    engine.update_weights(policy)
    assert engine.llm.calls[1] == ("wake_up", ("weights",))  # only the weights: the KV cache stays released
    assert engine.asleep
    engine._sleep()  # partially awake: vLLM would refuse a second sleep, and nothing more is to be freed
    assert ("sleep", 1) not in engine.llm.calls[1:]
    engine._wake(("weights", "kv_cache"))  # what generate() does first
    assert engine.llm.calls[-1] == ("wake_up", ("kv_cache",)) and not engine.asleep
    wakes = [i for i, c in enumerate(engine.llm.calls) if isinstance(c, tuple) and c[0] == "wake_up"]
    assert emptied == wakes  # the CUDA cache is emptied right before each wake-up
    engine._sleep()
    engine._wake(("weights", "kv_cache"))  # generate after no push: weights first, then the cache
    assert engine.llm.calls[-2:] == [("wake_up", ("weights",)), ("wake_up", ("kv_cache",))]


# ---------------------------------------------------------------- external_launcher environment
class FakeDist:
    def __init__(self, rank, world, initialized=True):
        self.rank, self.world, self.initialized = rank, world, initialized

    def is_available(self):
        return True

    def is_initialized(self):
        return self.initialized

    def get_rank(self):
        return self.rank

    def get_world_size(self):
        return self.world


class FakeClusterEnv:  # Lightning's ClusterEnvironment interface, the parts used
    main_address, main_port = "10.0.0.7", 29511

    def local_rank(self):
        return 3


class FakeTCPStore:
    host, port = "node-0", 40001


class FakePrefixStore:
    underlying_store = FakeTCPStore()


def test_launcher_env_from_lightning_cluster_environment():
    env = {}
    set_now = external_launcher_env(env, FakeDist(11, 16), FakeClusterEnv())
    assert env == {"RANK": "11", "WORLD_SIZE": "16", "LOCAL_RANK": "3", "MASTER_ADDR": "10.0.0.7",
                   "MASTER_PORT": "29511"}
    assert set_now == env


def test_launcher_env_keeps_what_lightning_exported_and_adds_rank():
    # Lightning's subprocess launcher exports these, but not RANK
    env = {"LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "12910"}
    assert external_launcher_env(env, FakeDist(1, 2)) == {"RANK": "1"}
    assert env["MASTER_PORT"] == "12910" and env["LOCAL_RANK"] == "1"


def test_launcher_env_reads_the_process_groups_store():
    env = {"LOCAL_WORLD_SIZE": "4"}
    external_launcher_env(env, FakeDist(6, 8), store=FakePrefixStore())
    assert (env["RANK"], env["LOCAL_RANK"], env["MASTER_ADDR"], env["MASTER_PORT"]) == ("6", "2", "node-0", "40001")


def test_launcher_env_refuses_a_contradicting_rank_and_ignores_no_process_group():
    with pytest.raises(RuntimeError, match="RANK=0 in the environment, but torch.distributed says 5"):
        external_launcher_env({"RANK": "0"}, FakeDist(5, 8), FakeClusterEnv())
    env = {}
    assert external_launcher_env(env, FakeDist(0, 1, initialized=False)) == {} and env == {}
