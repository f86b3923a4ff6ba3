"""What a shared cluster does to a run: rewards that hang, fail on every batch or return the
wrong number of scores; hostile answers for math-verify; a trainer SIGKILLed with its workers up.

Every timing assertion is a generous bound (the test machine is shared and noisy): a 1 s limit
must end the call in well under 10 s, where today's code hangs or takes ~50 s.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from r1lightning.rewards import RewardTerm, WeightedReward, accuracy, budget
from r1lightning.rewards.accuracy import accuracy_reward, math_verify_reward
from r1lightning.rewards.errors import RewardConfigError, RewardFailedError

GOOD = "<think>23+45=68, 68+17=85</think><answer>85</answer>"

_release = threading.Event()  # lets the sleeping rewards' leaked threads end with the test


@pytest.fixture(autouse=True)
def release_sleepers():
    _release.clear()
    yield
    _release.set()


def sleepy_reward(completions, **kwargs):
    _release.wait(600)  # "sleeps for ever" (until the test ends)
    return [1.0] * len(completions)


def raising_reward(completions, **kwargs):
    raise KeyError("solution")


def short_reward(completions, **kwargs):
    return [1.0]


def scalar_reward(completions, **kwargs):
    return 1.0


def reporting_reward(completions, **kwargs):
    budget.report_timeouts(2)  # a reward that bounds its own items says how many ran out
    return [0.5] * len(completions)


def deadline_reward(completions, **kwargs):
    left = budget.remaining()
    return [float(left is not None and 0 < left <= 2.0)] * len(completions)


# ----------------------------------------------------------------------------- per-call limit


def test_sleeping_user_reward_times_out_scores_zero_and_is_counted():
    reward = WeightedReward(["format", sleepy_reward], call_timeout_s=1.0)
    start = time.monotonic()
    total, per_fn = reward([GOOD, GOOD])
    elapsed = time.monotonic() - start
    assert elapsed < 10  # today: never returns
    assert per_fn == {"format": [1.0, 1.0], "sleepy_reward": [0.0, 0.0]}  # format unaffected
    assert total == [1.0, 1.0]
    assert reward.timeouts == {"sleepy_reward": 1}
    assert reward.failures == {}


def test_spec_call_timeout_overrides_and_a_hung_reward_is_not_called_twice():
    calls = []

    def counting_sleeper(completions, **kwargs):
        calls.append(1)
        return sleepy_reward(completions)

    reward = WeightedReward(
        [{"name": counting_sleeper, "call_timeout_s": 0.5}],  # spec key beats the 60 s default
        max_consecutive_failures=None,
    )
    start = time.monotonic()
    for _ in range(3):
        assert reward(["a"])[1] == {"counting_sleeper": [0.0]}
    assert time.monotonic() - start < 10  # 0.5 s, then two skipped calls
    assert len(calls) == 1  # its thread still runs: no second thread is started
    assert reward.timeouts == {"counting_sleeper": 3}


def test_consecutive_timeouts_stop_the_run_naming_the_reward():
    reward = WeightedReward([sleepy_reward], call_timeout_s=0.2, max_consecutive_failures=3)
    reward(["a"]), reward(["a"])  # two timeouts: carry on
    with pytest.raises(RewardFailedError, match=r"'sleepy_reward'.*3 consecutive.*timed out"):
        reward(["a"])


def test_batch_budget_is_shared_and_inline_rewards_run_first():
    reward = WeightedReward(
        [
            {"name": sleepy_reward, "label": "slow_a"},
            {"name": sleepy_reward, "label": "slow_b"},
            "format",  # listed last, run first: a hung user reward cannot starve it
        ],
        call_timeout_s=30.0,
        batch_timeout_s=1.0,
        max_consecutive_failures=None,
    )
    start = time.monotonic()
    total, per_fn = reward([GOOD])
    assert time.monotonic() - start < 10  # one 1 s budget, not 2 x 30 s
    assert list(per_fn) == ["slow_a", "slow_b", "format"]  # keys stay in spec order
    assert per_fn == {"slow_a": [0.0], "slow_b": [0.0], "format": [1.0]}
    # slow_a used the whole budget and timed out; slow_b was not called (budget spent).
    assert reward.timeouts == {"slow_a": 1, "slow_b": 1}


def test_rewards_see_their_deadline_and_report_item_timeouts():
    reward = WeightedReward(
        [deadline_reward, {"name": reporting_reward, "isolation": "inline"}], call_timeout_s=2.0
    )
    _, per_fn = reward(["a"])
    assert per_fn == {"deadline_reward": [1.0], "reporting_reward": [0.5]}  # scores kept
    assert reward.timeouts == {"reporting_reward": 2}  # its own report, no call timeout


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"call_timeout_s": 0}, "call_timeout_s must be a positive number"),  # zero limit
        ({"batch_timeout_s": "10"}, "batch_timeout_s must be a positive number"),  # YAML string
        ({"max_consecutive_failures": 0}, "max_consecutive_failures must be a positive int"),
        ({"max_consecutive_failures": True}, "max_consecutive_failures must be a positive int"),
    ],
)
def test_bad_limit_options(kwargs, match):
    with pytest.raises(RewardConfigError, match=match):
        WeightedReward(["format"], **kwargs)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"format": {"call_timeout_s": -1}}, "reward 'format': call_timeout_s"),  # negative
        ({"format": {"isolation": "process"}}, "isolation must be one of"),  # unknown mode
        ([RewardTerm("f", raising_reward, isolation="fork")], "isolation must be one of"),
    ],
)
def test_bad_per_reward_limit_options(spec, match):
    with pytest.raises(RewardConfigError, match=match):
        WeightedReward(spec)


# ----------------------------------------------------------------------------- failing rewards


@pytest.mark.parametrize("isolation", ["thread", "inline"])
def test_reward_raising_on_every_batch_stops_the_run_after_n(isolation):
    reward = WeightedReward(
        ["format", {"name": raising_reward, "isolation": isolation}], max_consecutive_failures=4
    )
    for _ in range(3):  # 3 failures in a row: zeros, counted, still running
        assert reward([GOOD])[1]["raising_reward"] == [0.0]
    assert reward.failures == {"raising_reward": 3}
    with pytest.raises(RewardFailedError) as info:
        reward([GOOD])
    message = str(info.value)
    assert "'raising_reward'" in message and "4 consecutive batches" in message
    assert "KeyError: 'solution'" in message  # the exception that caused it
    assert isinstance(info.value.__cause__, KeyError)


def test_a_success_resets_the_consecutive_count():
    state = {"n": 0}

    def flaky_reward(completions, **kwargs):
        state["n"] += 1
        if state["n"] % 3 == 0:  # fails, fails, succeeds, ...
            return [1.0] * len(completions)
        raise RuntimeError("flaky")

    reward = WeightedReward([flaky_reward], max_consecutive_failures=3)
    for _ in range(9):  # never 3 failures in a row
        reward(["a"])
    assert reward.failures == {"flaky_reward": 6}


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (short_reward, r"'short_reward' .* returned 1 scores for 3 completions"),  # wrong count
        (scalar_reward, r"'scalar_reward' .* returned float, expected a list of 3 scores"),
    ],
)
def test_wrong_number_of_scores_stops_at_once(fn, match):
    reward = WeightedReward([fn])
    with pytest.raises(RewardFailedError, match=match):
        reward(["a", "b", "c"])  # the first batch: a programming error is not retried


# ----------------------------------------------------------------------------- math-verify budget

POWER_TOWERS = [
    r"9^{9^{9^{9}}}",  # power tower
    r"100000!",  # huge factorial
    r"9^{9^{9^{9}}}!",  # both
    r"(10^{10^{10}})!",  # factorial of a tower
]


@pytest.mark.slow  # multi-process: spawns the math-verify pool
def test_hostile_batch_ends_within_the_batch_budget(mv_pool):
    answers = [POWER_TOWERS[i % len(POWER_TOWERS)] + f"+{i}" for i in range(32)]
    completions = [f"<think>x</think><answer>{a}</answer>" for a in answers]
    golds = [r"\sqrt{2}"] * 32  # non-numeric gold: accuracy hands every item to math-verify
    reward = WeightedReward([{"name": "accuracy", "batch_timeout_s": 1.0}])
    start = time.monotonic()
    total, per_fn = reward(completions, answer=golds)
    elapsed = time.monotonic() - start
    assert elapsed < 10  # today: ~50 s (each item its own 3 s timer)
    assert per_fn["accuracy"] == [0.0] * 32
    assert reward.timeouts["accuracy"] > 0  # unchecked items are counted, not silent
    # The pool recovers for the next batch.
    assert accuracy_reward([r"<answer>\boxed{2\sqrt{2}}</answer>"], answer=[r"\sqrt{8}"]) == [1.0]


@pytest.mark.slow  # multi-process: spawns the math-verify pool
def test_math_verify_honours_the_callers_deadline(mv_pool):
    reward = WeightedReward(
        [{"name": "math_verify", "call_timeout_s": 1.0}]  # math-verify's own budget: 60 s
    )
    completions = [f"<think>x</think><answer>{POWER_TOWERS[0]}+{i}</answer>" for i in range(16)]
    start = time.monotonic()
    reward(completions, answer=["1"] * 16)
    assert time.monotonic() - start < 10
    assert reward.timeouts["math_verify"] > 0


def test_in_process_math_verify_stops_at_the_budget():
    pytest.importorskip("math_verify")
    with budget.bounded(time.monotonic() - 1) as reported:  # deadline already passed
        out = math_verify_reward(["<answer>1/2</answer>"] * 3, answer=["0.5"] * 3, workers=0)
    assert out == [0.0, 0.0, 0.0] and reported == [3]  # none checked, all counted


# ----------------------------------------------------------------------------- orphaned workers

_TRAINER = textwrap.dedent(
    """
    import sys, time
    from r1lightning.rewards import accuracy

    if __name__ == "__main__":
        accuracy.warmup_pool(workers=2)
        pool = accuracy._pool
        # Busy in C code that never releases the GIL: only the kernel's deathsig can stop it.
        for _ in range(2):
            pool.submit(sum, range(10**15))
        time.sleep(0.5)
        print(" ".join(map(str, accuracy._pool_pids())), flush=True)
        time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


@pytest.mark.slow  # multi-process: a trainer subprocess with its math-verify pool
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_sigkilled_trainer(tmp_path):
    script = tmp_path / "trainer.py"
    script.write_text(_TRAINER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    finally:
        proc.kill()  # SIGKILL: no atexit, no finally, no shutdown_pool
        proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]  # today: orphaned to PID 1, alive 70 s later


@pytest.mark.slow  # multi-process: restarts the math-verify pool
def test_pool_started_from_a_short_lived_thread_outlives_it(mv_pool):
    # PR_SET_PDEATHSIG fires when the *thread* that started the worker exits; the pool is
    # therefore always started from one long-lived thread, whoever calls the reward.
    accuracy.shutdown_pool()
    t = threading.Thread(target=accuracy.warmup_pool)
    t.start()
    t.join()
    pids = accuracy._pool_pids()
    time.sleep(1.0)
    assert pids and all(_alive(p) for p in pids)
    assert math_verify_reward(["<answer>1/2</answer>"], answer=[r"\frac{1}{2}"]) == [1.0]
    assert accuracy._pool_pids() == pids  # the same workers served the call
