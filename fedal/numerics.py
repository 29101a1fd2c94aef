"""Which CPU kernels a run computes with, and a fingerprint that says so.

Float32 training on the CPU is exact only on the same kernels: PyTorch picks its vectorised
kernels by the CPU's instruction set (AVX2, AVX-512), oneDNN picks convolution kernels by the CPU
and its caches, and MKL picks GEMM code paths by the CPU. Two machines can therefore train the same
seed to different accuracies (MNIST-1D Dirichlet, pretrained, Rand seed 0: 47.5% after round 0 on
one machine, 44.4% on another; results/v2/README.md). Over 15 FedAvg rounds the last-bit
differences grow, so a suite resumed on another machine mixes two environments in one table.

``numerics = native`` (the default) keeps the fastest kernels of this machine. ``numerics =
portable`` fixes each choice to one that every x86-64 CPU with AVX2 computes alike:

- ``ATEN_CPU_CAPABILITY=avx2``: PyTorch's own kernels at AVX2 even where AVX-512 exists;
- oneDNN off (``torch.backends.mkldnn.enabled = False``): convolutions go through im2col and MKL;
- ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility, one code path on every
  Intel or compatible CPU.

Measured on one machine (AMD EPYC, AVX-512), every cap of MKL's and oneDNN's instruction sets gives
the same bits under ``portable``; a pretrained MNIST-1D run takes about 1.5× as long
(simulations/benchmarks/results/numerics.md).

``fingerprint`` records what a run computed with, and ``golden`` is the hash of a small, fixed
training job on these kernels: two runs whose goldens agree computed on the same numerics.
``fedal.results.RunRecorder`` refuses to resume a run on a machine whose golden differs.
"""

from __future__ import annotations

import hashlib
import os
import platform

NUMERICS = ("native", "portable")
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"}
PORTABLE_CAPABILITY = "AVX2"
# numpy's OpenBLAS picks its kernels when it loads, so this one must be in the environment before
# the process starts (simulations/compare.py and simulations/engine.py see to it)
OPENBLAS_ENV = {"OPENBLAS_CORETYPE": "Haswell"}
_X86 = ("x86_64", "amd64")
_ACTIVE = "native"


def process_env(mode: str) -> dict[str, str]:
    """What a process must find in its environment at start to compute under ``mode``."""
    return {**PORTABLE_ENV, **OPENBLAS_ENV} if mode == "portable" else {}


def active() -> str:
    """The numerics this process was set to (``apply``); ``native`` until then."""
    return _ACTIVE


def openblas_cores() -> list[str]:
    """The kernel families of the OpenBLAS libraries loaded in this process (numpy's, scipy's)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # comes with scikit-learn; without it the check cannot be made
        return []
    return sorted({str(i.get("architecture")) for i in threadpool_info() if i.get("internal_api") == "openblas"})


class NumericsError(RuntimeError):
    """Portable numerics cannot hold in this process (the CPU, or kernels chosen already)."""


def apply(mode: str, device: str = "cpu") -> None:
    """Fix this process's CPU kernels for ``mode``; call it before torch computes anything.
    ``device``: the run's ``device`` key; portable numerics fix CPU kernels only, so a run that
    would train on CUDA is refused.

    PyTorch reads ``ATEN_CPU_CAPABILITY`` at its first kernel dispatch and MKL reads ``MKL_CBWR``
    at its first call, so a process that has already computed keeps what it chose: that is
    checked (the capability in use is read back) and refused rather than recorded wrongly."""
    if mode not in NUMERICS:
        raise ValueError(f"numerics = {mode!r} is not valid; valid values: {', '.join(NUMERICS)}")
    global _ACTIVE
    if mode == "native":
        _ACTIVE = mode
        return
    if platform.machine().lower() not in _X86:
        raise NumericsError(f"numerics = portable needs an x86-64 CPU with AVX2; this machine is "
                            f"{platform.machine()}: use numerics = native")
    os.environ.update(PORTABLE_ENV)
    import torch

    if device != "cpu" and torch.cuda.is_available():
        raise NumericsError(f"numerics = portable fixes CPU kernels, but device = {device} trains on CUDA "
                            "here: set device = cpu, or numerics = native")

    torch.backends.mkldnn.enabled = False
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != PORTABLE_CAPABILITY:
        raise NumericsError(
            f"numerics = portable needs PyTorch's {PORTABLE_CAPABILITY} kernels, but this process uses "
            f"{capability}: either the CPU lacks AVX2 or torch had computed before the setting was "
            "applied (set ATEN_CPU_CAPABILITY=avx2 and MKL_CBWR=COMPATIBLE in the environment, or use "
            "numerics = native)")
    import numpy  # noqa: F401  (loads OpenBLAS, whose kernels are then read back)

    cores = openblas_cores()
    if any(c.lower() != OPENBLAS_ENV["OPENBLAS_CORETYPE"].lower() for c in cores):
        raise NumericsError(
            f"numerics = portable needs numpy's OpenBLAS on its {OPENBLAS_ENV['OPENBLAS_CORETYPE']} kernels, but "
            f"this process loaded {', '.join(cores)}: start it with OPENBLAS_CORETYPE="
            f"{OPENBLAS_ENV['OPENBLAS_CORETYPE']} in the environment (python -m simulations.engine, "
            "python -m simulations.compare and fedal run set it themselves), or use numerics = native")
    _ACTIVE = mode


def adam(params, lr: float):
    """The Adam a run trains with: ``torch.optim.Adam``, or under portable numerics
    ``fedal.portable_adam.PortableAdam``, the same step with a root every CPU rounds alike."""
    import torch

    if _ACTIVE == "portable":
        from fedal.portable_adam import PortableAdam

        return PortableAdam(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)


def golden() -> str:
    """SHA-256 (16 hex digits) of a small CNN's weights after 10 Adam steps on fixed random data,
    and of a float64 matrix product in numpy.

    The ops are the ones fedal computes with: 1-D convolutions, a linear head, cross-entropy and
    Adam (``adam``, as a run's training gets it) in torch; OpenBLAS's products in
    numpy, which the client graph and the point strategies use. A different kernel anywhere in
    them changes the last bits, and so the hash."""
    import numpy as np
    import torch


    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((64, 1, 40)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, 64))
    with torch.random.fork_rng(devices=[]):  # the layers' own init draws must not move the run's RNG
        model = torch.nn.Sequential(torch.nn.Conv1d(1, 16, 5), torch.nn.ReLU(), torch.nn.Conv1d(16, 16, 3),
                                    torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16 * 34, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(0.1 * rng.standard_normal(tuple(p.shape)).astype(np.float32)))
    opt = adam(list(model.parameters()), 3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a reduction split over threads sums in another order
    try:
        for _ in range(10):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().numpy().tobytes())
    a = rng.standard_normal((96, 333))
    digest.update((a @ a.T).tobytes())  # sums of 333 products: the order is the kernel's
    return digest.hexdigest()[:16]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(mode: str) -> dict:
    """What a run computes with: the numerics mode, the kernels in use and the golden hash."""
    import numpy as np
    import torch

    return {"numerics": mode, "golden": golden(), "cpu": _cpu_model(), "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn": bool(torch.backends.mkldnn.enabled), "mkl_cbwr": os.environ.get("MKL_CBWR", ""),
            "openblas": ",".join(openblas_cores()),
            "torch": torch.__version__, "numpy": np.__version__}
