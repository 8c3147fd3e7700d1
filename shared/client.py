"""What every service's synchronous client shares: the channel it owns (or borrows), its stub, its timeout."""
from __future__ import annotations

from typing import Any, ClassVar, Self

import grpc


class ServiceClient:
    stub_class: ClassVar[type]

    def __init__(self, target: str, timeout: float | None = 30.0, channel: grpc.Channel | None = None) -> None:
        self._own = channel is None
        self.channel = channel or grpc.insecure_channel(target)
        self.stub: Any = self.stub_class(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        if self._own:
            self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
