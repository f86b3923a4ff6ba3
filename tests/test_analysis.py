"""r1lightning.analysis against event files written here with known steps and wall times."""

import pytest


def write_run(path, points):
    """points: (tag, step, value, wall_time seconds)."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(path))
    for tag, step, value, wall in points:
        w.add_scalar(tag, value, step, walltime=wall)
    w.close()


def test_series_by_step_and_by_wall_clock_minutes(tmp_path):
    from r1lightning.analysis import load_scalars, series

    # the run starts at t = 1000 s; pass@1 logged at steps 0, 50 and 100 after 0, 3 and 7.5 minutes
    write_run(tmp_path, [("train/reward", 1, 0.1, 1000.0), ("val/pass@1", 0, 0.2, 1000.0),
                         ("val/pass@1", 50, 0.5, 1180.0), ("val/pass@1", 100, 0.8, 1450.0)])
    df = load_scalars(tmp_path)
    assert set(df.columns) == {"tag", "step", "value", "wall_time"}
    xs, ys = series(df, "val/pass@1", "step")
    assert list(xs) == [0, 50, 100] and list(ys) == pytest.approx([0.2, 0.5, 0.8])
    xs, ys = series(df, "val/pass@1", "minutes")
    assert list(xs) == pytest.approx([0.0, 3.0, 7.5])  # (1180 - 1000) / 60 = 3, (1450 - 1000) / 60 = 7.5
    with pytest.raises(ValueError, match="x must be"):
        series(df, "val/pass@1", "hours")


def test_a_resumed_step_logged_twice_keeps_the_later_value(tmp_path):
    from r1lightning.analysis import load_scalars, series

    write_run(tmp_path, [("train/reward", 3, 0.1, 1000.0), ("train/reward", 3, 0.4, 1300.0)])
    xs, ys = series(load_scalars(tmp_path), "train/reward", "minutes")
    assert list(ys) == pytest.approx([0.4]) and list(xs) == pytest.approx([5.0])


def test_compare_runs_and_cli_write_a_figure(tmp_path):
    from r1lightning.analysis import compare_runs, main

    write_run(tmp_path / "a", [("val/pass@1", 0, 0.2, 0.0), ("val/pass@1", 10, 0.6, 600.0)])
    write_run(tmp_path / "b", [("val/pass@1", 0, 0.2, 0.0), ("val/pass@1", 10, 0.6, 300.0)])
    fig = compare_runs([tmp_path / "a", tmp_path / "b"], ["sync", "async"])
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["sync", "async"]
    assert list(ax.lines[1].get_xdata()) == pytest.approx([0.0, 5.0])  # async reached 0.6 after 5 minutes
    out = tmp_path / "cmp.png"
    main([str(tmp_path / "a"), str(tmp_path / "b"), "--labels", "sync", "async", "--x", "minutes", "--out", str(out)])
    assert out.stat().st_size > 0
    with pytest.raises(ValueError, match="labels"):
        compare_runs([tmp_path / "a"], ["x", "y"])


def test_trend_table_first_and_last_tenth(tmp_path, capsys):
    from r1lightning.analysis import load_scalars, main, trend, trend_table

    # 20 steps of length 10..29 and mixing 0.5 falling to 0 at step 10; pass@1 at steps 0 and 20.
    points = [("train/completion_length/mean", s, 10.0 + s, 1000.0 + s) for s in range(20)]
    points += [("lang/mixing_rate", s, 0.5 if s < 10 else 0.0, 1000.0 + s) for s in range(20)]
    points += [("val/pass@1", 0, 0.2, 1000.0), ("val/pass@1", 10, 0.9, 1010.0), ("val/pass@1", 20, 0.45, 1020.0)]
    write_run(tmp_path / "a", points)
    df = load_scalars(tmp_path / "a")
    # a tenth of 20 logged steps = 2: mean(10, 11) and mean(28, 29)
    assert trend(df, "train/completion_length/mean") == pytest.approx((10.5, 28.5))
    assert trend(df, "train/completion_length/mean", fraction=0.25) == pytest.approx((12.0, 27.0))  # 10..14, 25..29
    assert trend(df, "val/pass@1") == pytest.approx((0.2, 0.45))  # evaluations: first and last, not a mean
    assert trend(df, "reflect/per_1k_tokens") is None
    write_run(tmp_path / "b", [("lang/mixing_rate", s, 0.25, 1000.0 + s) for s in range(10)])
    table = trend_table([tmp_path / "a", tmp_path / "b"], ["with", "without"])
    rows = table.splitlines()
    assert rows[0] == "| | with | without |"
    assert "| held-out pass@1 % | 20.0 -> 45.0 | - |" in rows
    assert "| response length (tokens) | 10.5 -> 28.5 | - |" in rows
    assert "| language mixing rate % | 50.0 -> 0.0 | 25.0 -> 25.0 |" in rows
    assert not any(r.startswith("| reflective words") for r in rows)  # no run logged it
    with pytest.raises(ValueError, match="labels"):
        trend_table([tmp_path / "a"], ["x", "y"])
    out = tmp_path / "beh.png"
    main(["trends", str(tmp_path / "a"), str(tmp_path / "b"), "--labels", "with", "without", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| language mixing rate % | 50.0 -> 0.0 | 25.0 -> 25.0 |" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
