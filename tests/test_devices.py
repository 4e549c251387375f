"""Device choice from Ray's reservation, pinned host-to-GPU copies, per-device constants."""

import pytest
import torch

from empssl_ray.devices import device_constant, device_for_reserved_gpus, to_device


def test_device_follows_the_gpus_ray_reserved() -> None:
    # A CPU-reserved actor on a GPU node sees CUDA but must stay on the CPU.
    assert device_for_reserved_gpus([], cuda_available=True) == torch.device("cpu")
    assert device_for_reserved_gpus([], cuda_available=False) == torch.device("cpu")
    # Ray points CUDA_VISIBLE_DEVICES at the reserved GPU: it is cuda:0, whatever its node id.
    assert device_for_reserved_gpus(["3"], cuda_available=True) == torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="reserved GPU"):
        device_for_reserved_gpus([0], cuda_available=False)


def test_host_tensors_bound_for_a_gpu_are_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    x = torch.zeros(4, dtype=torch.uint8)

    def fake_pin(self: torch.Tensor) -> torch.Tensor:
        calls.append("pin")
        return self

    def fake_to(self: torch.Tensor, device: torch.device, non_blocking: bool = False):
        calls.append(f"to {device} non_blocking={non_blocking}")
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    to_device(x, "cuda")
    assert calls == ["pin", "to cuda non_blocking=True"]
    calls.clear()
    to_device(x, "cpu")
    assert calls == ["to cpu non_blocking=False"]  # no pinning off the GPU path


def test_device_constants_are_built_once() -> None:
    a = device_constant((1.0, 2.0), torch.device("cpu"))
    assert a is device_constant((1.0, 2.0), torch.device("cpu"))
    assert torch.equal(a, torch.tensor([1.0, 2.0]))
    assert device_constant((1.0, 2.0), torch.device("cpu"), torch.int64).dtype == torch.int64
