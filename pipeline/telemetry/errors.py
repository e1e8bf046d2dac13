"""The one exception of the telemetry codec."""

from __future__ import annotations


class TelemetryError(ValueError):
    """Malformed telemetry. The message always starts with "offset N: " (N = byte offset in the input)."""

    def __init__(self, offset: int, reason: str):
        self.offset = int(offset)
        self.reason = reason
        super().__init__(f"offset {self.offset}: {reason}")

    def __reduce__(self):  # keep picklable (multiprocessing) despite the two-argument constructor
        return (type(self), (self.offset, self.reason))
