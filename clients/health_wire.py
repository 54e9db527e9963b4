"""The `grpc.health.v1` messages in protobuf wire format, so the clients need no health package.

The two messages are one field each, small enough to encode and decode by hand:
`HealthCheckRequest {string service = 1;}` and `HealthCheckResponse {ServingStatus status = 1;}`.
"""

from __future__ import annotations

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
# grpc.health.v1.HealthCheckResponse.ServingStatus, by number.
HEALTH_STATUS_NAMES = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")


def _varint(value: int) -> bytes:
    """Encodes a non-negative integer as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decodes the varint at `data[pos:]`; returns it and the position after it."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def encode_health_request(service: str) -> bytes:
    """Encodes `grpc.health.v1.HealthCheckRequest {string service = 1;}` in protobuf wire format.

    Field 1 is length-delimited (tag byte 0x0A); proto3 leaves out the empty default.
    """
    if not service:
        return b""
    encoded = service.encode()
    return b"\x0a" + _varint(len(encoded)) + encoded


def decode_health_response(data: bytes) -> str:
    """Decodes `grpc.health.v1.HealthCheckResponse {ServingStatus status = 1;}` to the status name.

    Field 1 is a varint (tag byte 0x08); other fields are skipped, as protobuf parsers do.

    Raises:
        ValueError: `data` is not a well-formed protobuf message.
    """
    status, pos = 0, 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        field, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
            status = value if field == 1 else status
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
    if pos > len(data):
        raise ValueError("truncated field")
    return HEALTH_STATUS_NAMES[status] if status < len(HEALTH_STATUS_NAMES) else str(status)
