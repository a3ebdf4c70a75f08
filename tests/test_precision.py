"""`--precision auto` picks bf16 only where the hardware computes in bf16 natively."""

import pytest
import torch

from sda_cli.denoiser import autocast_dtype, cpu_has_native_bf16

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(False, False, None), (True, False, torch.bfloat16), (False, True, torch.bfloat16)],
)
def test_auto_on_cpu_follows_native_bf16(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, expected: torch.dtype | None
) -> None:
    """A CPU with plain AVX-512 (where oneDNN only emulates bf16, slower than float32) gets float32."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert cpu_has_native_bf16() is (avx512_bf16 or amx)
    assert autocast_dtype("auto", CPU) is expected


def test_auto_without_the_cpu_queries_is_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """An older torch without the queries falls back to float32, never to emulated bf16."""
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert autocast_dtype("auto", CPU) is None


@pytest.mark.parametrize(("name", "expected"), [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_explicit_precision_is_obeyed(name: str, expected: torch.dtype | None) -> None:
    assert autocast_dtype(name, CPU) is expected


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown precision"):
        autocast_dtype("int8", CPU)
