"""numerics = portable: the same bits whatever the CPU's instruction sets (fedal/numerics.py).

A second machine is not at hand in a test, so the test caps this machine's: MKL's and oneDNN's
instruction sets are capped from the environment (the way a CPU without AVX-512 would dispatch),
and the portable golden must not move while the native one may. Each case runs in a fresh
process, as PyTorch and MKL choose their kernels once per process."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys

import pytest

from fedal.config import Config, ConfigError, experiment_hash
from fedal.numerics import NUMERICS, NumericsError, apply, process_env
from fedal.results import CONFIG_FILE, ResultsMismatch, RunRecorder

X86_AVX2 = platform.machine().lower() in ("x86_64", "amd64") and "avx2" in open("/proc/cpuinfo").read()
needs_avx2 = pytest.mark.skipif(not X86_AVX2, reason="portable numerics needs an x86-64 CPU with AVX2")
CAPS = {"none": {}, "mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
        "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
        "both-sse": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}}
SCRIPT = ("import json, sys; from fedal import numerics; numerics.apply(sys.argv[1]); "
          "print(json.dumps(numerics.fingerprint(sys.argv[1])))")


def _fingerprint(mode: str, env: dict) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "OPENBLAS_CORETYPE")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env={**clean, **process_env(mode), **env}, capture_output=True,
                         text=True, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_avx2
def test_portable_numerics_compute_the_same_bits_under_every_instruction_set_cap():
    prints = {cap: _fingerprint("portable", env) for cap, env in CAPS.items()}
    assert {p["golden"] for p in prints.values()} == {prints["none"]["golden"]}, prints
    p = prints["none"]
    assert (p["cpu_capability"], p["mkldnn"], p["mkl_cbwr"], p["numerics"]) == ("AVX2", False, "COMPATIBLE", "portable")
    # and the caps do reach the kernels: native numerics change under them (oneDNN's convolutions)
    native = {cap: _fingerprint("native", env)["golden"] for cap, env in CAPS.items()}
    assert len(set(native.values())) > 1, native
    assert p["golden"] not in native.values()


def test_native_numerics_leave_the_process_as_it_is(monkeypatch):
    monkeypatch.delenv("MKL_CBWR", raising=False)
    apply("native")
    assert "MKL_CBWR" not in os.environ


def test_portable_numerics_are_refused_once_torch_has_chosen_its_kernels():
    # this pytest process has computed with torch long before: its capability is fixed
    import torch

    torch.ones(64).sum()
    if torch.backends.cpu.get_cpu_capability() == "AVX2":
        pytest.skip("this CPU's own kernels are the portable ones")
    with pytest.raises(NumericsError, match=r"numerics = portable needs PyTorch's AVX2 kernels, but this process uses"):
        apply("portable")


def test_a_bad_numerics_value_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"^numerics = 'fast' is invalid; valid: native, portable$"):
        Config.from_run_config({"numerics": "fast"})
    with pytest.raises(ValueError, match="valid values: native, portable"):
        apply("fast")
    assert NUMERICS == ("native", "portable")


def test_native_keeps_every_recorded_hash_and_portable_is_another_experiment():
    base = {"dataset": "mnist1d", "partition": "shard", "client-strategy": "divfl", "point-strategy": "base"}
    h = experiment_hash(Config.from_run_config(base).to_run_config())
    assert Config.from_run_config({**base, "numerics": "native"}).config_hash() == h
    assert Config.from_run_config({**base, "numerics": "portable"}).config_hash() != h


def _recorder(tmp_path, golden, resume):
    meta = {"config_hash": "abc", "seed": 0, "experiment": "abc-s0", "started": "t",
            "environment": {"golden": golden, "cpu": "CPU-1", "cpu_capability": "AVX512", "numerics": "native"}}
    return RunRecorder(tmp_path, meta, resume=resume)


def test_a_run_is_not_resumed_on_numerics_that_compute_other_bits(tmp_path):
    _recorder(tmp_path, "aaaa", resume=False).add_round({"round": 0, "accuracy": 0.5})
    before = (tmp_path / CONFIG_FILE).read_text()
    with pytest.raises(ResultsMismatch, match=r"golden aaaa: CPU-1, AVX512 kernels.*computes golden bbbb.*nothing was written"):
        _recorder(tmp_path, "bbbb", resume=True)
    assert (tmp_path / CONFIG_FILE).read_text() == before
    _recorder(tmp_path, "aaaa", resume=True)  # the same numerics resume
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["resumed"] == ["t"]


def test_a_run_recorded_before_the_golden_existed_still_resumes(tmp_path):
    RunRecorder(tmp_path, {"config_hash": "abc", "seed": 0, "experiment": "abc-s0", "started": "t"}, resume=False)
    _recorder(tmp_path, "bbbb", resume=True)


def test_portable_numerics_refuse_a_run_that_trains_on_the_gpu():
    with pytest.raises(ConfigError, match=r"numerics = portable fixes CPU kernels, but device = cuda trains on the GPU"):
        Config.from_run_config({"numerics": "portable", "device": "cuda"})
    assert Config.from_run_config({"numerics": "portable", "device": "cpu"}).numerics == "portable"


def test_portable_adam_takes_torchs_adam_step():
    import numpy as np
    import torch

    from fedal.portable_adam import PortableAdam

    rng = np.random.default_rng(1)
    start = torch.from_numpy(rng.standard_normal(4000).astype(np.float32))
    grads = [torch.from_numpy(rng.standard_normal(4000).astype(np.float32)) for _ in range(5)]
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    opt_ours, opt_theirs = PortableAdam([ours], lr=3e-3), torch.optim.Adam([theirs], lr=3e-3, foreach=False)
    for g in grads:
        for p, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            p.grad = g.clone()
            opt.step()
    # the same Adam: moments agree to the bit (no root in them), parameters to float32's last bits
    assert torch.equal(opt_ours.state[ours]["exp_avg_sq"], opt_theirs.state[theirs]["exp_avg_sq"])
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-6) and not torch.equal(ours, start)
    # that its root is the one every CPU rounds alike is tested under QEMU (below)


def test_portable_numerics_train_with_portable_adam_and_native_with_torchs(monkeypatch):
    import torch

    from fedal import numerics
    from fedal.portable_adam import PortableAdam
    from fedal.training import make_optimizer

    p = [torch.zeros(3, requires_grad=True)]
    monkeypatch.setattr(numerics, "_ACTIVE", "portable")
    assert type(make_optimizer(p, 1e-3, "adam")) is PortableAdam
    monkeypatch.setattr(numerics, "_ACTIVE", "native")
    assert type(make_optimizer(p, 1e-3, "adam")) is torch.optim.Adam


def test_portable_numerics_refuse_openblas_on_other_kernels():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env.update(OPENBLAS_CORETYPE="Sandybridge", ATEN_CPU_CAPABILITY="avx2", MKL_CBWR="COMPATIBLE")
    out = subprocess.run([sys.executable, "-c", SCRIPT, "portable"], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode != 0
    assert "numerics = portable needs numpy's OpenBLAS on its Haswell kernels, but this process loaded" in out.stderr


QEMU = shutil.which("qemu-x86_64")


@needs_avx2
@pytest.mark.skipif(QEMU is None, reason="qemu-user is not installed (.ci/run installs it)")
@pytest.mark.parametrize("cpu", ["Haswell-v4", "EPYC-Rome"])
def test_portable_numerics_compute_the_same_bits_on_another_cpu_emulated_by_qemu(cpu):
    # QEMU's user mode runs this venv's Python on an emulated CPU of another vendor or generation
    # (its own CPUID: MKL, OpenBLAS and PyTorch choose their kernels for it); the fixed kernels
    # must give this machine's golden there. Native numerics, unfixed, give another one.
    env = {**{k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "OPENBLAS_CORETYPE")}}
    here = _fingerprint("portable", {})
    out = subprocess.run([QEMU, "-cpu", cpu, sys.executable, "-c", SCRIPT, "portable"],
                         env={**env, **process_env("portable")}, capture_output=True, text=True, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-2000:]
    there = json.loads(out.stdout.strip().splitlines()[-1])
    assert there["golden"] == here["golden"], (here, there)


def test_the_golden_leaves_the_global_random_state_as_it_found_it():
    import numpy as np
    import torch

    from fedal.numerics import golden

    torch.manual_seed(3)
    np.random.seed(3)
    first = golden()
    after = (torch.rand(4), np.random.rand(4))
    torch.manual_seed(3)
    np.random.seed(3)
    expected = (torch.rand(4), np.random.rand(4))
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1])
    assert golden() == first  # and it is a fixed job


def test_flwr_run_reads_the_numerics_from_the_run_config_as_flwr_does(tmp_path):
    # the SuperLink's processes get the OpenBLAS setting only when the run will ask for portable
    # numerics (simulations/flwr_run.py): key=value overrides, a .toml file, or pyproject's default
    from simulations.flwr_run import requested_numerics

    assert requested_numerics("") == "native"  # pyproject.toml's default
    assert requested_numerics("numerics='portable'") == "portable"
    assert requested_numerics("seed=2 numerics=\"portable\" al-rounds=3") == "portable"
    assert requested_numerics("numerics='native' seed=2") == "native"
    toml = tmp_path / "overrides.toml"
    toml.write_text('numerics = "portable"\nseed = 4\n')
    assert requested_numerics(str(toml)) == "portable"
