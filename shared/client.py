"""What every service's synchronous client shares: the channel it owns (or borrows), its stub, its timeout.

`tls` (a ClientTlsSettings: CA, optional client certificate for mutual TLS) switches the channel to TLS;
`token` is sent on every call as `authorization: Bearer <token>`; `priority="bulk"` puts every call in the services'
bulk lane (shared/priority.py).
"""
from __future__ import annotations

from typing import Any, ClassVar, Self

import grpc
from pydantic import SecretStr

from nlpsuite.shared.batcher import Lane
from nlpsuite.shared.config import ClientTlsSettings
from nlpsuite.shared.security import open_channel


class ServiceClient:
    stub_class: ClassVar[type]

    def __init__(self, target: str, timeout: float | None = 30.0, channel: grpc.Channel | None = None, *,
                 tls: ClientTlsSettings | None = None, token: str | SecretStr | None = None,
                 priority: Lane | None = None) -> None:
        if channel is not None and (tls is not None or token is not None or priority is not None):
            raise ValueError("tls, token and priority configure the client's own channel; not with channel=")
        self._own = channel is None
        self.channel = channel or open_channel(target, tls, token, priority=priority)
        self.stub: Any = self.stub_class(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        if self._own:
            self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
