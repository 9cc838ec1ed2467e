"""The PLC's side of the line: a smart camera's handshake (``handshake``) and the protocols that serve it
(``modbus``). docs/plc.md is generated from the points the handshake declares."""
