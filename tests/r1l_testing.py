"""Helpers shared by tests (a unique module name: several test folders have a conftest.py)."""


def read_scalars(root) -> dict:
    """All TensorBoard scalars under ``root``: {tag: [(step, value), ...]}."""
    import glob

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict = {}
    for path in sorted(glob.glob(f"{root}/**/events.out.tfevents*", recursive=True)):
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out
