"""The handshake over Modbus TCP, served by pymodbus on its own thread and event loop.

pymodbus parses the frames and answers the malformed ones; ``HandshakeStore`` stands where its
datastore would and reads every value from the ``Handshake`` at the moment of the request, so a
PLC never sees a copy that lags. Only the handshake's coils are writable: any other address
answers exception 2 (illegal data address), as do the holding registers (there are none). A
request for another unit id answers exception 11 (gateway target failed to respond). A client
not on ``allow`` is disconnected as it connects, logged once per address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import SimData, SimDevice

from linewatch.edge.device.plc.handshake import POINTS, Handshake, Table
from linewatch.edge.errors import UsageError

logger = logging.getLogger(__name__)

FUNCTION_TABLES: dict[int, Table] = {1: "coil", 5: "coil", 15: "coil", 2: "discrete_input", 4: "input_register",
                                     3: "holding_register", 6: "holding_register", 16: "holding_register",
                                     22: "holding_register", 23: "holding_register"}
BIT_TABLES = ("coil", "discrete_input")
WRITES = (5, 15)  # a write's read-back (its response echoes the request) comes with the write's function code
START_TIMEOUT_S = 10.0


class HandshakeStore:
    """What pymodbus asks of a datastore (``device_ids``, ``async_getValues``, ``async_setValues``), over the
    handshake."""

    def __init__(self, handshake: Handshake, unit_id: int) -> None:
        self.handshake = handshake
        self.unit_id = unit_id
        self.coils = [point.name for point in POINTS if point.table == "coil"]
        self.refused: Counter[str] = Counter()  # requests answered with an exception, by why
        self._written: dict[int, bool] = {}

    def device_ids(self) -> list[int]:
        return [self.unit_id]

    def _refuse(self, why: str, code: ExcCodes) -> ExcCodes:
        self.refused[why] += 1
        return code

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        if device_id != self.unit_id:
            return self._refuse("unit_id", ExcCodes.GATEWAY_NO_RESPONSE)
        if func_code in WRITES:
            return [self._written.get(address + i, False) for i in range(count)]
        table = FUNCTION_TABLES.get(func_code)
        if table is None:
            return self._refuse("function", ExcCodes.ILLEGAL_FUNCTION)
        words = self.handshake.table(table)
        if address < 0 or count < 1 or address + count > len(words):
            return self._refuse("address", ExcCodes.ILLEGAL_ADDRESS)
        chosen = words[address:address + count]
        return [bool(word) for word in chosen] if table in BIT_TABLES else chosen

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: Sequence[int] | Sequence[bool]) -> ExcCodes | None:
        if device_id != self.unit_id:
            return self._refuse("unit_id", ExcCodes.GATEWAY_NO_RESPONSE)
        if FUNCTION_TABLES.get(func_code) != "coil" or address < 0 or address + len(values) > len(self.coils):
            return self._refuse("read_only" if func_code in FUNCTION_TABLES else "function", ExcCodes.ILLEGAL_ADDRESS)
        for offset, value in enumerate(values):
            self._written[address + offset] = bool(value)
            self.handshake.write(self.coils[address + offset], int(bool(value)))
        return None


class _Allowed(ServerRequestHandler):
    """pymodbus's per-connection handler, closed at once for a peer not on the allow-list."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server: _Server = self.server
        peer = (transport.get_extra_info("peername") or ("?",))[0]
        if not server.allows(peer):
            transport.close()


class _Server(ModbusTcpServer):
    """pymodbus's TCP server with linewatch's store and allow-list."""

    def __init__(self, store: HandshakeStore, host: str, port: int,
                 allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        # pymodbus wants a device to build its own store from; the requests never reach it (``context`` below)
        super().__init__(SimDevice(store.unit_id, simdata=SimData(0)), address=(host, port))
        self.context: Any = store
        self.allow = allow
        self.refused_peers: Counter[str] = Counter()

    def allows(self, peer: str) -> bool:
        if not self.allow:
            return True
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            address = None
        if address is not None and any(address in network for network in self.allow):
            return True
        if not self.refused_peers[peer]:
            logger.warning("modbus: refused a connection from %s: not in modbus.allow (logged once per address)",
                           peer)
        self.refused_peers[peer] += 1
        return False

    def callback_new_connection(self) -> _Allowed:
        return _Allowed(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class ModbusServer:
    """The Modbus TCP server, on a thread of its own; bound in ``start()`` so that a port in use is an error at start.
    """

    def __init__(self, handshake: Handshake, host: str, port: int, unit_id: int = 1,
                 allow: Sequence[str] = ()) -> None:
        self.store = HandshakeStore(handshake, unit_id)
        self.host, self.port = host, port
        self.allow = [ipaddress.ip_network(entry, strict=False) for entry in allow]  # checked by the config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: _Server | None = None
        self._started = threading.Event()
        self._failure: str | None = None
        self._thread = threading.Thread(target=self._run, name="modbus", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S) or self._failure:
            raise UsageError(f"modbus.listen {self.host}:{self.port}: cannot listen ({self._failure or 'timed out'}): "
                             "choose another port, or stop what holds it")
        logger.info("modbus: serving the handshake on %s:%d, unit id %d%s", self.host, self.port, self.store.unit_id,
                    f", for {', '.join(map(str, self.allow))} only" if self.allow else "")

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # refusals are counted and logged here, once
        server = _Server(self.store, self.host, self.port, self.allow)
        if not await server.listen():
            self._failure = _bind_error(self.host, self.port)
            self._started.set()
            return
        assert isinstance(server.transport, asyncio.Server)
        self.port = server.transport.sockets[0].getsockname()[1]
        self._server = server
        self._started.set()
        await server.serving

    def stats(self) -> dict[str, Any]:
        server = self._server
        return {"refused_requests": dict(self.store.refused),
                "refused_connections": sum(server.refused_peers.values()) if server else 0}

    def stop(self) -> None:
        """Close the listener and every connection; say what was refused while it ran."""
        if self._loop is not None and self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(5)
        self._thread.join(5)
        stats = self.stats()
        if stats["refused_requests"] or stats["refused_connections"]:
            logger.info("modbus: refused %s", stats)


def _bind_error(host: str, port: int) -> str:
    """Why pymodbus could not listen (it logs the reason and answers only False): bind once more to ask the OS."""
    try:
        with socket.create_server((host, port)):
            return "unknown"
    except OSError as exc:
        return exc.strerror or str(exc)
