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
