import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Every test uses tiny models and tensors, which gain nothing from intra-op threads; on a
    loaded 2-core machine spinning OpenMP workers made a 10-image forward pass take seconds.
    The simulated clients set one thread themselves (fedal.client.configure_threads)."""
    try:
        import torch
    except ImportError:  # the pure-numpy tests run without torch
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
