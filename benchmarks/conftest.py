"""pytest setup for `pytest benchmarks/ --benchmark-only`: harness importable, the environment and
the device's measured limits in the JSON's machine_info, device memory released between cases."""

import gc
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import resnet_fast  # noqa: E402


def pytest_benchmark_update_json(config, benchmarks, output_json):
    harness.add_speedups(output_json["benchmarks"])


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["resnet_fast"] = {**harness.environment(), "backend": resnet_fast.backend_info(),
                                   "device_limits": harness.device_limits()}


def pytest_report_header(config):
    return f"resnet_fast benchmarks: {harness.BENCH_SET} set on {harness.device_name()}, dtype {harness.DTYPE}"


@pytest.fixture(autouse=True)
def _release_memory():
    yield
    gc.collect()
    if harness.CUDA:
        torch.cuda.empty_cache()
