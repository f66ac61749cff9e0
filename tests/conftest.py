import os

# Triton reads this when @triton.jit runs, so it must be set before any kernel module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
# The reference interpreter does many small matmuls; OpenBLAS threads only add contention there
# (measured: the LeNet conv2d_grad_input rule took 147 ms with 2 threads on a busy 2-core machine,
# 9 ms with 1). Must be set before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI draws the same examples every run (a failure it finds is one anyone can rerun); HYPOTHESIS_PROFILE=explore
# draws new ones, more of them, to look for bugs the fixed set misses.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("explore", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (the README's command): a worker per CPU this process may use, at most 4 (each holds
    torch, transformers and compiled kernels, ~2 GB; tests start processes of their own too). Files,
    not tests, are shared out (`--dist loadfile`): a file's tests share their compiled kernels and
    module fixtures, and run in their written order, as in one process."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cpus))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def torch_on_one_thread():
    """torch's side of a port test runs tiny tensors, where its intra-op threads only wait on each other (on a
    loaded machine each op then takes milliseconds): one thread for the module, restored after."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def torch_validates():
    """torch.distributions as the oracle with its documented default, validation on: torch.compile and
    torch.export (dynamo) switch it off for the whole process the first time they run, so in a full run
    torch's side of a check passed silently. Use with `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch
    old = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(True)
    yield
    torch.distributions.Distribution.set_default_validate_args(old)


@pytest.fixture(scope="module")
def module_kernel_cache(tmp_path_factory):
    """Kernel files go to a temporary cache, one per test module, not ~/.cache/avalon.
    Use with `pytestmark = pytest.mark.usefixtures("module_kernel_cache")`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AVALON_CACHE_DIR", str(tmp_path_factory.mktemp("avalon_cache")))
        yield
