"""The `code` reward: code extraction, program building, test splitting, scores from the sandbox,
time budgets, and the real HumanEval / MBPP reference solutions."""

from __future__ import annotations

import time

import pytest

from r1lightning import sandbox
from r1lightning.rewards import (
    REWARD_FUNCS,
    RewardConfigError,
    WeightedReward,
    build_program,
    code_reward,
    extract_code,
    get_reward_fn,
    split_tests,
)
from r1lightning.rewards import budget

F_OK = "def f(x):\n    return x * x"
F_TESTS = "assert f(1) == 1\nassert f(2) == 4\nassert f(3) == 9\n"

# (completion, prompt, expected code)
EXTRACT_ROWS = [
    # a fenced python block is the code
    (f"Here you go:\n```python\n{F_OK}\n```\nDone.", None, F_OK),
    # the answer block wins, and a fence inside it is unwrapped
    (f"<think>try\n```python\nx = 0\n```</think><answer>```python\n{F_OK}\n```</answer>", None,
     F_OK),
    # an answer block without a fence is the code itself
    (f"<think>easy</think><answer>{F_OK}</answer>", None, F_OK),
    # of several python blocks the last one counts (the model's final version)
    ("```py\nx = 1\n```\nbetter:\n```python\nx = 2\n```", None, "x = 2"),
    # a python-tagged block beats a later untagged one (typically printed output)
    ("```python\nx = 1\n```\nOutput:\n```\n1\n```", None, "x = 1"),
    # an untagged block is used when nothing is tagged python
    ("```\nx = 3\n```", None, "x = 3"),
    # a block in another language is not python; the text is not python either
    ("Run:\n```bash\nrm -rf /\n```", None, None),
    # plain code without fences is accepted when it compiles
    (F_OK, None, F_OK),
    # a HumanEval body continuation compiles only after its prompt: kept, indent intact
    ("    return x + 1\n", "def f(x):\n", "    return x + 1"),
    # ... and without the prompt it is not code
    ("    return x + 1\n", None, None),
    # prose is not code
    ("The answer is that you sort the list.", None, None),
    # an empty answer block, and one of only NULs
    ("<think>a</think><answer></answer>", None, None),
    ("<think>a</think><answer>\x00\x00</answer>", None, None),
    # code only inside the reasoning is not submitted
    ("<think>```python\nx = 1\n```</think>I am done.", None, None),
    # a truncated (unclosed) fence and no other code: nothing to run
    ("```python\ndef f(x):\n    return", None, None),
    # an inline ```x``` span is not a block
    ("use ```x = 1``` here", None, None),
    # garbage types: no code, no crash
    (None, None, None),
    (12345, None, "12345"),
    ([{"role": "assistant", "content": f"```python\n{F_OK}\n```"}], None, F_OK),
    # a million characters of noise: too long, no code
    ("x" * 1_000_000, None, None),
    # NUL inside a fence: returned as is (the sandbox then fails it)
    ("```python\nx = 1\x00\n```", None, "x = 1\x00"),
]


@pytest.mark.parametrize(("completion", "prompt", "expected"), EXTRACT_ROWS)
def test_extract_code(completion, prompt, expected):
    assert extract_code(completion, prompt) == expected


def test_extract_code_is_linear_on_many_fences():
    start = time.monotonic()
    assert extract_code("```python\n" * 30_000) is None  # unclosed fences
    assert extract_code("```\n```" * 30_000) is None  # empty blocks
    assert time.monotonic() - start < 2.0


HE_PROMPT = (
    "from typing import List\n\n\ndef helper(x):\n    return x\n\n\n"
    'def f(xs: List[int]) -> int:\n    """Sum."""\n'
)


@pytest.mark.parametrize(
    ("code", "prompt", "entry", "expected"),
    [
        # no prompt: the code alone
        (F_OK, None, "f", F_OK),
        # a body continuation: prompt + code, as human-eval concatenates
        ("    return sum(xs)", HE_PROMPT, "f", HE_PROMPT + "    return sum(xs)\n"),
        # the code defines the entry point: the prompt (imports, helper, stub) first
        ("def f(xs):\n    return helper(sum(xs))", HE_PROMPT, "f",
         HE_PROMPT + "\n\ndef f(xs):\n    return helper(sum(xs))\n"),
        # an MBPP prompt is prose: dropped when the code defines the entry point
        (F_OK, "Write a function.\nassert f(2) == 4", "f", F_OK + "\n"),
    ],
)
def test_build_program(code, prompt, entry, expected):
    assert build_program(code, prompt, entry) == expected


def test_split_tests_mbpp_and_humaneval():
    # MBPP: setup code runs but is not scored; each assert is one unit
    units, scored = split_tests("import math\nassert f(1) == 1\nassert f(2) == 4\n")
    assert units == ["import math", "assert f(1) == 1", "assert f(2) == 4"]
    assert scored == [1, 2]
    # HumanEval: check's body statements, candidate bound to the entry point first
    he = ("METADATA = {}\n\ndef check(candidate):\n    import math\n    assert candidate(1) == 1\n"
          "    for x in range(3):\n        assert candidate(x) == x * x\n\ncheck(f)\n")
    units, scored = split_tests(he)
    assert units[0] == "METADATA = {}\ncandidate = f"
    assert units[1:] == ["import math", "assert candidate(1) == 1",
                         "for x in range(3):\n    assert candidate(x) == x * x"]
    assert scored == [2, 3]  # the loop is one unit
    # unsplittable: a check that returns, a test without asserts, unparsable text
    ret = ("def check(candidate):\n    if candidate(0):\n        return\n"
           "    assert False\n\ncheck(f)")
    for text in (ret, "f(1)\n", "assert (\n"):
        assert split_tests(text) == ([text], [0])


SQUARE_CHECK = (
    "def check(candidate):\n    assert candidate(1) == 1\n"
    "    assert candidate(2) == 4\n    assert candidate(3) == 9\n\ncheck(f)\n"
)

# (completion, tests, entry_point, prompt, score in mode "all", score in mode "fraction")
REWARD_ROWS = [
    # correct fenced code: full marks in both modes
    (f"```python\n{F_OK}\n```", F_TESTS, "f", None, 1.0, 1.0),
    # correct code in answer tags
    (f"<think>square</think><answer>{F_OK}</answer>", F_TESTS, "f", None, 1.0, 1.0),
    # no code at all
    ("I don't know.", F_TESTS, "f", None, 0.0, 0.0),
    # a syntax error: nothing runs
    ("```python\ndef f(x) return x\n```", F_TESTS, "f", None, 0.0, 0.0),
    # right on 2 of 3 asserts (f(1)=1, f(2)=4, f(3)=6 instead of 9)
    ("```python\ndef f(x):\n    return x * x if x < 3 else 2 * x\n```", F_TESTS, "f", None,
     0.0, 2 / 3),
    # the same against HumanEval's check(candidate) form: per body statement
    ("```python\ndef f(x):\n    return x * x if x < 3 else 2 * x\n```", SQUARE_CHECK, "f", None,
     0.0, 2 / 3),
    # tests given as a list: each string is a unit
    ("```python\ndef f(x):\n    return 1\n```", ["assert f(1) == 1", "assert f(2) == 4"], "f",
     None, 0.0, 0.5),
    # a body continuation of the prompt
    ("    return x * x\n", F_TESTS, "f", "def f(x):\n", 1.0, 1.0),
    # exiting early to skip the tests scores nothing
    (f"```python\n{F_OK}\nimport os\nos._exit(0)\n```", F_TESTS, "f", None, 0.0, 0.0),
    # an exception at import time: no test can run
    (f"```python\n{F_OK}\nraise ValueError\n```", F_TESTS, "f", None, 0.0, 0.0),
    # an infinite loop in the function: killed at the wall limit, a score not a hang
    ("```python\ndef f(x):\n    while True:\n        pass\n```", F_TESTS, "f", None, 0.0, 0.0),
    # garbage completions: None, NUL bytes, a lone surrogate, megabytes
    (None, F_TESTS, "f", None, 0.0, 0.0),
    ("\x00" * 1000, F_TESTS, "f", None, 0.0, 0.0),
    ("```python\ndef f(x):\n    return '\ud800'\n```", F_TESTS, "f", None, 0.0, 0.0),
    ("```python\n" + "x = 1\n" * 200_000 + "```", F_TESTS, "f", None, 0.0, 0.0),
    # a row without usable tests cannot be verified: 0.0
    (f"```python\n{F_OK}\n```", None, "f", None, 0.0, 0.0),
]


@pytest.mark.parametrize("mode", ["all", "fraction"])
def test_code_reward_table(mode):
    completions = [row[0] for row in REWARD_ROWS]
    scores = code_reward(
        completions,
        tests=[row[1] for row in REWARD_ROWS],
        entry_point=[row[2] for row in REWARD_ROWS],
        prompt=[row[3] for row in REWARD_ROWS],
        mode=mode,
        wall_s=3,
        solution=["ignored column"] * len(REWARD_ROWS),  # other columns are ignored
    )
    expected = [row[4] if mode == "all" else row[5] for row in REWARD_ROWS]
    assert scores == pytest.approx(expected, abs=1e-12)


def test_configuration_errors_are_raised():
    with pytest.raises(RewardConfigError, match="tests"):
        code_reward(["x"])  # no tests column
    with pytest.raises(RewardConfigError, match="mode"):
        code_reward(["x"], tests=["assert 1"], mode="most")
    with pytest.raises(RewardConfigError, match="entries"):
        code_reward(["x", "y"], tests=["assert 1"])
    with pytest.raises(RewardConfigError, match="wall_s"):
        code_reward(["x"], tests=["assert 1"], wall_s=0)


def test_missing_sandbox_stops_the_run(monkeypatch):
    def unavailable(*args, **kwargs):
        raise sandbox.SandboxUnavailable("the sandbox needs util-linux's `unshare`")

    monkeypatch.setattr(sandbox, "run_many", unavailable)
    with pytest.raises(RewardConfigError, match="unshare"):
        code_reward([f"```python\n{F_OK}\n```"], tests=[F_TESTS])
    # with no code to run the sandbox is not needed
    assert code_reward(["no code"], tests=[F_TESTS]) == [0.0]


def test_identical_programs_run_once(monkeypatch):
    calls = []
    real = sandbox.run_many

    def counting(sources, *args, **kwargs):
        calls.append(len(sources))
        return real(sources, *args, **kwargs)

    monkeypatch.setattr(sandbox, "run_many", counting)
    group = [f"```python\n{F_OK}\n```"] * 4 + [f"<answer>{F_OK}</answer>", "def f(x): return x"]
    assert code_reward(group, tests=[F_TESTS] * 6) == [1.0] * 5 + [0.0]
    assert calls == [2]  # two distinct programs


def test_deadline_of_weighted_reward_is_respected():
    slow = "```python\nimport time\ntime.sleep(10)\ndef f(x):\n    return x * x\n```"
    # distinct programs (a comment each) so nothing is deduplicated
    completions = [slow.replace("import time", f"import time  # {i}") for i in range(4)]
    start = time.monotonic()
    with budget.bounded(time.monotonic() + 1.5) as reported:
        scores = code_reward(completions, tests=[F_TESTS] * 4, max_workers=1)
    assert time.monotonic() - start < 1.5 + 2.0
    assert scores == [0.0] * 4
    assert sum(reported) == 4  # one cut short by the deadline, three never started


def test_registered_and_usable_from_a_yaml_spec():
    assert REWARD_FUNCS["code"] is code_reward
    assert get_reward_fn("code") is code_reward
    reward = WeightedReward({"code": {"weight": 1.0, "mode": "fraction", "wall_s": 5}})
    total, per_fn = reward(
        [f"```python\n{F_OK}\n```", "```python\ndef f(x):\n    return 1\n```"],
        tests=[F_TESTS, F_TESTS], entry_point=["f", "f"], id=["a", "b"],
    )
    assert per_fn["code"] == pytest.approx([1.0, 1 / 3])
    assert total == pytest.approx([1.0, 1 / 3])
    with pytest.raises(RewardConfigError, match="unknown option"):
        WeightedReward({"code": {"wall_sec": 5}})  # a typo is an error, not a silent no-op


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PIECES = st.sampled_from(["```python\n", "```\n", "<answer>", "</answer>", "</think>", "def f(x):",
                          "\n    return x", "\x00", "\ud800", "import os; os._exit(0)", "\n"])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(st.lists(st.lists(st.one_of(PIECES, st.text(max_size=5)), max_size=20).map("".join),
                min_size=1, max_size=4))
def test_arbitrary_text_gives_a_score(completions):
    scores = code_reward(completions, tests=[F_TESTS] * len(completions), mode="fraction",
                         wall_s=3)
    assert len(scores) == len(completions)
    assert all(0.0 <= s <= 1.0 for s in scores)


# ------------------------------------------------------------------------------------ benchmarks


def _score(rows, completions, mode="all", tests=None):
    return code_reward(
        completions,
        tests=tests or [r["tests"] for r in rows],
        entry_point=[r["entry_point"] for r in rows],
        prompt=[r["prompt"] for r in rows],
        mode=mode,
    )


@pytest.fixture(scope="module")
def humaneval():
    from r1lightning.data.benchmarks import BenchmarkNotInstalled, load_humaneval

    try:
        return load_humaneval()
    except BenchmarkNotInstalled as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def mbpp():
    from r1lightning.data.benchmarks import BenchmarkNotInstalled, load_mbpp

    try:
        return load_mbpp()
    except BenchmarkNotInstalled as exc:
        pytest.skip(str(exc))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["all", "fraction"])
def test_humaneval_canonical_solutions_all_pass(humaneval, mode):
    assert len(humaneval) == 164
    # The row's solution is prompt + canonical body; submit just the body, as a model would
    # (a continuation), fenced.
    bodies = [f"```python\n{r['solution'][len(r['prompt']):]}\n```" for r in humaneval]
    scores = _score(humaneval, bodies, mode)
    assert [r["task_id"] for r, s in zip(humaneval, scores) if s != 1.0] == []


@pytest.mark.slow
def test_humaneval_wrong_programs_fail(humaneval):
    solutions = [f"```python\n{r['solution']}\n```" for r in humaneval]
    # each problem's (complete) solution against the next problem's tests
    shifted = [r["tests"] for r in humaneval[1:] + humaneval[:1]]
    shifted_entry = [r["entry_point"] for r in humaneval[1:] + humaneval[:1]]
    scores = code_reward(solutions, tests=shifted, entry_point=shifted_entry)
    assert sum(scores) == 0.0
    # a stub returning None for every problem
    stubs = [f"```python\ndef {r['entry_point']}(*args, **kwargs):\n    return None\n```"
             for r in humaneval]
    assert sum(_score(humaneval, stubs)) == 0.0


@pytest.mark.slow
def test_mbpp_reference_solutions_pass(mbpp):
    assert len(mbpp) == 500
    scores = _score(mbpp, [f"```python\n{r['solution']}\n```" for r in mbpp])
    failing = [r["task_id"] for r, s in zip(mbpp, scores) if s != 1.0]
    assert len(failing) <= 1, failing
    # wrong: a solution against the next problem's tests (every 5th problem: 100 runs, since
    # a wrong program often runs to its wall limit and CI has 2 cores)
    some = mbpp[::5]
    shifted = [mbpp[(k + 1) % len(mbpp)]["tests"] for k in range(0, len(mbpp), 5)]
    wrong = _score(some, [f"```python\n{r['solution']}\n```" for r in some], tests=shifted)
    assert sum(wrong) == 0.0
