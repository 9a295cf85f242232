"""A CPU whose native bf16 flags and bf16 matmul speed are set by the test (the precision
decision's inputs, mocked); conftest's `cpu` fixture puts one behind pick_device."""

from __future__ import annotations

from dpo_engine.precision import cpu_precision


class FakeCpu:
    """A CPU with the given native bf16 flags whose bf16 matmul runs `speedup` x fp32."""

    def __init__(self, flags=("avx512_bf16",), speedup=2.5):
        self.flags, self.speedup, self.measured = list(flags), speedup, 0

    def measure(self):
        self.measured += 1
        return {"fp32_ms": 10.0, "bf16_ms": 10.0 / self.speedup, "speedup": self.speedup,
                "measured": "2026-12-02T10:00:00+00:00"}

    def decide(self, path):
        return cpu_precision(path, self.measure, lambda: self.flags)
