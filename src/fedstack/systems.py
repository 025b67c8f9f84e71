"""Simulated device time: turns a client's work and bytes into seconds on a virtual clock."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceProfile:
    """One device's speed. The default fleet is uniform: every device alike, none fails."""

    samples_per_s: float = 100.0
    down_bytes_per_s: float = 20e6 / 8  # 20 Mbit/s
    up_bytes_per_s: float = 5e6 / 8  # 5 Mbit/s

    def task_seconds(self, samples: int, bytes_down: int, bytes_up: int) -> float:
        """Download the model, train on `samples` examples, upload the update."""
        return (bytes_down / self.down_bytes_per_s + samples / self.samples_per_s
                + bytes_up / self.up_bytes_per_s)


class UniformSystem:
    """Every client has the same DeviceProfile; a synchronous round lasts as long as its slowest client."""

    def __init__(self, profile: DeviceProfile = DeviceProfile()):
        self.profile = profile

    def device(self, client_id: int) -> DeviceProfile:
        return self.profile
