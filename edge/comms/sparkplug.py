"""Sparkplug B payloads and topics: the protobuf messages an Ignition MQTT Engine reads.

The message schema is the Sparkplug B specification's (``Payload`` with its ``Metric``s), built
here with protobuf's own descriptors rather than generated code, so that no ``protoc`` output
(tied to one protobuf release) is committed. Only the fields linewatch writes or reads are
declared; a field a host adds (properties, metadata, datasets) is kept as unknown by protobuf and
ignored. Field numbers and data-type codes are the specification's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

NAMESPACE = "spBv1.0"
# Sparkplug B data types (the specification's DataType enumeration), those linewatch uses
INT64, UINT32, UINT64, DOUBLE, BOOLEAN, STRING = 4, 7, 8, 10, 11, 12
VALUE_FIELDS = {UINT32: "int_value", INT64: "long_value", UINT64: "long_value", DOUBLE: "double_value",
                BOOLEAN: "boolean_value", STRING: "string_value"}


def _payload_class() -> Any:
    """``Payload`` (with ``Payload.Metric``) from a descriptor written out here, proto2 as in the specification."""
    F = descriptor_pb2.FieldDescriptorProto
    schema = descriptor_pb2.FileDescriptorProto(name="linewatch/sparkplug_b.proto", package="linewatch.sparkplug_b",
                                                syntax="proto2")
    payload = schema.message_type.add(name="Payload")
    metric = payload.nested_type.add(name="Metric")
    metric.oneof_decl.add(name="value")
    for number, name, kind in ((1, "name", F.TYPE_STRING), (2, "alias", F.TYPE_UINT64),
                               (3, "timestamp", F.TYPE_UINT64), (4, "datatype", F.TYPE_UINT32),
                               (5, "is_historical", F.TYPE_BOOL), (6, "is_transient", F.TYPE_BOOL),
                               (7, "is_null", F.TYPE_BOOL)):
        metric.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL)
    for number, name, kind in ((10, "int_value", F.TYPE_UINT32), (11, "long_value", F.TYPE_UINT64),
                               (12, "float_value", F.TYPE_FLOAT), (13, "double_value", F.TYPE_DOUBLE),
                               (14, "boolean_value", F.TYPE_BOOL), (15, "string_value", F.TYPE_STRING),
                               (16, "bytes_value", F.TYPE_BYTES)):
        metric.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL, oneof_index=0)
    payload.field.add(name="timestamp", number=1, type=F.TYPE_UINT64, label=F.LABEL_OPTIONAL)
    payload.field.add(name="metrics", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                      type_name=".linewatch.sparkplug_b.Payload.Metric")
    payload.field.add(name="seq", number=3, type=F.TYPE_UINT64, label=F.LABEL_OPTIONAL)
    payload.field.add(name="uuid", number=4, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    payload.field.add(name="body", number=5, type=F.TYPE_BYTES, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(schema)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("linewatch.sparkplug_b.Payload"))


Payload = _payload_class()


@dataclass(frozen=True)
class Metric:
    """One Sparkplug metric: its name (``/`` makes folders in Ignition), data type and value (None: null)."""

    name: str
    datatype: int
    value: Any


def encode(metrics: list[Metric], timestamp_ms: int, seq: int | None) -> bytes:
    """A payload's bytes; ``seq`` None for NDEATH, which carries none."""
    payload = Payload(timestamp=timestamp_ms)
    if seq is not None:
        payload.seq = seq
    for metric in metrics:
        entry = payload.metrics.add(name=metric.name, datatype=metric.datatype, timestamp=timestamp_ms)
        if metric.value is None:
            entry.is_null = True
        else:
            setattr(entry, VALUE_FIELDS[metric.datatype], metric.value)
    return bytes(payload.SerializeToString())


def decode(data: bytes) -> dict[str, Any]:
    """A payload as ``{"seq": …, "timestamp": …, "metrics": {name: value}}`` (raises ``ValueError`` on bytes that
    are no payload)."""
    payload = Payload()
    try:
        payload.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError, and what its C implementation raises instead
        raise ValueError(f"not a Sparkplug B payload: {exc}") from None
    metrics = {}
    for metric in payload.metrics:
        field = metric.WhichOneof("value")
        metrics[metric.name] = None if metric.is_null or field is None else getattr(metric, field)
    return {"seq": payload.seq if payload.HasField("seq") else None, "timestamp": payload.timestamp,
            "metrics": metrics}


def topic(group: str, kind: str, node: str, device: str | None = None) -> str:
    """``spBv1.0/<group>/<kind>/<node>[/<device>]``."""
    return "/".join([NAMESPACE, group, kind, node] + ([device] if device else []))
