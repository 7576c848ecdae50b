"""pixverve.models.devices: a GPU job whose torch sees no GPU stops with the reason (torch mocked)."""

import pytest

from pixverve.models import devices


@pytest.fixture
def clean_env(monkeypatch):
    for name in (*devices.GPU_ENV, devices.ALLOW_CPU_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_auto_is_cpu_without_a_gpu_job(clean_env):
    clean_env.setattr("torch.cuda.is_available", lambda: False)
    assert devices.resolve_device("auto") == "cpu"
    assert devices.resolve_device("cpu") == "cpu"
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "")  # GPUs hidden on purpose: a CPU job
    assert devices.resolve_device("auto") == "cpu"


def test_auto_is_cuda_when_torch_sees_one(clean_env):
    clean_env.setattr("torch.cuda.is_available", lambda: True)
    clean_env.setenv("SLURM_GPUS_ON_NODE", "1")
    assert devices.resolve_device("auto") == "cuda"
    assert devices.resolve_device("cuda:1") == "cuda:1"


@pytest.mark.parametrize(
    "var, value", [("SLURM_GPUS_ON_NODE", "1"), ("SLURM_JOB_GPUS", "0,1"), ("CUDA_VISIBLE_DEVICES", "0")]
)
def test_gpu_job_without_cuda_torch_stops(clean_env, var, value):
    clean_env.setattr("torch.cuda.is_available", lambda: False)
    clean_env.setenv(var, value)
    with pytest.raises(RuntimeError, match=rf"holds a GPU \({var}={value}\).*sees no CUDA device.*CONDA_OVERRIDE_CUDA"):
        devices.resolve_device("auto")
    clean_env.setenv(devices.ALLOW_CPU_ENV, "1")  # CI's declared-but-absent GPUs
    assert devices.resolve_device("auto") == "cpu"


def test_explicit_cuda_without_a_gpu_stops(clean_env):
    clean_env.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(RuntimeError, match="device setting is 'cuda'"):
        devices.resolve_device("cuda")
    clean_env.setenv(devices.ALLOW_CPU_ENV, "1")
    assert devices.resolve_device("cuda") == "cpu"


def test_torch_dtype_reads_the_config_names():
    import torch

    from pixverve.models.loading import torch_dtype

    assert torch_dtype("float16", "k") is torch.float16 and torch_dtype(None, "k") is torch.bfloat16
    assert torch_dtype(None, "k", default="auto") == "auto" and torch_dtype("float32", "k") is torch.float32
    with pytest.raises(ValueError, match="config key train.runs.x.sample.dtype: dtype 'fp8'"):
        torch_dtype("fp8", "train.runs.x.sample.dtype")
