"""`autolfads run` on a machine with several GPUs: one trainer per GPU by
default (`default_workers`), so each trainer must see its own GPU. Every
trainer's "cuda" was the first GPU: all of them trained on GPU 0."""

from __future__ import annotations

import pytest

from autolfads.launcher import trainer_gpus
from autolfads.worker_pool import slot_env


def test_trainers_are_spread_over_the_visible_gpus() -> None:
    gpus = trainer_gpus("auto", 4, {})
    assert gpus == ["0", "1", "2", "3"]
    envs = [slot_env({"PATH": "/bin"}, gpus, slot) for slot in range(6)]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["0", "1", "2", "3", "0", "1"]
    assert all(env["PATH"] == "/bin" for env in envs)


def test_a_gpu_subset_chosen_by_the_user_is_kept() -> None:
    assert trainer_gpus("cuda", 2, {"CUDA_VISIBLE_DEVICES": "5, 7"}) == ["5", "7"]
    assert trainer_gpus("auto", 2, {"CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b"}) == ["GPU-a", "GPU-b"]


def test_cpu_training_and_a_single_gpu_leave_the_environment_alone() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "3", "PATH": "/bin"}
    assert trainer_gpus("cpu", 4, {}) == []
    assert trainer_gpus("auto", 1, env) == []
    assert trainer_gpus("auto", 0, {}) == []
    assert slot_env(env, [], 2) == env


def test_counting_gpus_imports_no_torch_where_there_is_no_nvidia_driver() -> None:
    # The launcher imported torch to count GPUs (about 2 s of every
    # `autolfads run` before its trainers could start, on every machine).
    import ctypes
    import subprocess
    import sys

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        pass
    else:
        pytest.skip("this machine has NVIDIA's driver: torch counts its GPUs")
    code = (
        "import sys\n"
        "from autolfads.launcher import default_workers, gpu_count\n"
        "assert gpu_count('auto') == 0 and gpu_count('cuda') == 0\n"
        "default_workers()\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "torch imported: False" in proc.stdout
