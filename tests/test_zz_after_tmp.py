import torch
def test_after():
    import torch.distributed as dist
    print("\n[after] dist initialized:", dist.is_initialized(), "set_num_threads patched:", torch.set_num_threads.__name__)
