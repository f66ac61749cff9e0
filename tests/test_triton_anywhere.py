"""backend="triton" works on a machine without a GPU with no environment variable set, and a CUDA
device that is not there is a one-line error, not torch's assertion."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import avalon as av

SCRIPT = """
import numpy as np, avalon as av
x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
f = av.compile(lambda x: av.ops.exp(x) * 2.0 + x, backend="triton")
got = f(x).numpy()
want = np.exp(x) * 2.0 + x
assert np.allclose(got, want, rtol=1e-5, atol=1e-6), (got, want)
print("ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter fallback is for machines without a GPU")
def test_triton_backend_runs_in_the_interpreter_without_a_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
    said = [line for line in r.stderr.splitlines() if "interpreter" in line]
    assert len(said) == 1 and "slower" in said[0], r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="device 'cuda:0' is not available") as e:
        av.tensor(np.ones(3, np.float32), device="cuda")
    assert "\n" not in str(e.value)
