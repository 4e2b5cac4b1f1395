"""`autolfads run` on a machine with several GPUs: one trainer per GPU by
default (`default_workers`), so each trainer must see its own GPU. Every
trainer's "cuda" was the first GPU: all of them trained on GPU 0."""

from __future__ import annotations

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
