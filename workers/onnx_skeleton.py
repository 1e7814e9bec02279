"""An ONNX file's graph without its weights, read with memory bounded whatever the file's size.

`onnx.load` (and `onnx.checker.check_model` on a path) parse the whole protobuf, weights included: about twice
the file's size in memory. `skeleton` instead walks the protobuf wire format from the disk and copies every field
except the data of dense tensors (initializers, tensor attributes, in the main graph, subgraphs, functions and
training graphs), which it counts and skips without reading. What it checks of a skipped tensor is what
`onnx.checker` would have checked (one value field, at least as many values as the shape needs, no raw bytes
for strings); a tensor with external data (a path chosen by the file's author) is refused. Each skipped tensor
becomes an external-data entry naming one empty file, so `onnx.checker.check_model` on the skeleton checks the
rest of the graph as it would the whole file (it does not read external data).

Memory: the skeleton (at most SKELETON_MAX_BYTES) plus one read buffer; the weights are never read.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

SKELETON_MAX_BYTES = 32 * 2**20  # the graph without its weights: a large transformer's is a few MB
STRIPPED_LOCATION = "stripped-weights"  # the one (empty) external-data file the skeleton's tensors name
_READ = 1 << 20
_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5
# TensorProto's fields (onnx.proto).
_T_DIMS, _T_DATA_TYPE, _T_EXTERNAL, _T_LOCATION = 1, 2, 13, 14
_T_VALUES = {4: "float_data", 5: "int32_data", 6: "string_data", 7: "int64_data", 9: "raw_data",
             10: "double_data", 11: "uint64_data"}
_FIXED_WIDTH = {4: 4, 10: 8}  # packed float / double: bytes per value; the other numeric fields are varints
_SUB_BYTE_BITS = {"UINT4": 4, "INT4": 4, "FLOAT4E2M1": 4, "UINT2": 2, "INT2": 2, "FLOAT6E2M3": 6, "FLOAT6E3M2": 6}
_LOW_BYTES = bytes(range(0x80))  # a varint ends at its first byte under 0x80


class SkeletonError(Exception):
    """The file holds something the check refuses; the message says what, for the user."""


class Malformed(SkeletonError):
    """The file is not a well-formed protobuf."""


def _schema() -> tuple[dict, str]:
    """{message full name: {field number: child message full name}} for every message field that can hold a
    TensorProto (the walk descends only into those), and TensorProto's full name. Sparse tensors are copied
    whole: the checker reads their indices."""
    import onnx

    tensor = onnx.TensorProto.DESCRIPTOR
    sparse = onnx.SparseTensorProto.DESCRIPTOR
    holds: dict[str, bool] = {}

    def can_hold(desc, seen=()) -> bool:
        if desc.full_name in holds:
            return holds[desc.full_name]
        if desc is tensor:
            return True
        if desc is sparse or desc.full_name in seen:
            return False
        found = any(can_hold(f.message_type, (*seen, desc.full_name)) for f in desc.fields if f.message_type)
        if not seen:
            holds[desc.full_name] = found
        return found

    schema: dict[str, dict[int, str]] = {}
    stack = [onnx.ModelProto.DESCRIPTOR]
    while stack:
        desc = stack.pop()
        if desc.full_name in schema or desc is tensor:
            continue
        schema[desc.full_name] = {f.number: f.message_type.full_name for f in desc.fields
                                  if f.message_type and can_hold(f.message_type)}
        stack.extend(f.message_type for f in desc.fields if f.message_type and can_hold(f.message_type))
    return schema, tensor.full_name


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class _Walk:
    def __init__(self, fh, size: int):
        import onnx

        self.fh = fh
        self.size = size
        self.pos = 0
        self.kept = 0
        self.schema, self.tensor = _schema()
        self.type_names = dict((v, k) for k, v in onnx.TensorProto.DataType.items())

    # -- reading
    def _read(self, n: int, end: int) -> bytes:
        if self.pos + n > end:
            raise Malformed("truncated: a field runs past the end of its message")
        data = self.fh.read(n)
        if len(data) != n:
            raise Malformed("truncated: the file ends inside a field")
        self.pos += n
        return data

    def _skip(self, n: int, end: int) -> None:
        if self.pos + n > end:
            raise Malformed("truncated: a field runs past the end of its message")
        self.pos += n
        self.fh.seek(self.pos)

    def _varint(self, end: int) -> tuple[int, bytes]:
        raw = bytearray()
        while True:
            byte = self._read(1, end)[0]
            raw.append(byte)
            if byte < 0x80:
                break
            if len(raw) == 10:
                raise Malformed("malformed varint")
        value = 0
        for i, b in enumerate(raw):
            value |= (b & 0x7F) << (7 * i)
        return value, bytes(raw)

    def _field(self, end: int) -> tuple[int, int, bytes]:
        tag, raw = self._varint(end)
        number, wire = tag >> 3, tag & 7
        if number == 0 or wire not in (_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32):
            raise Malformed(f"malformed field (number {number}, wire type {wire})")
        return number, wire, raw

    def _copy_value(self, wire: int, end: int) -> bytes:
        """The rest of a field (after its tag) as bytes, for a field copied into the skeleton."""
        if wire == _WIRE_VARINT:
            return self._varint(end)[1]
        if wire == _WIRE_I64:
            return self._read(8, end)
        if wire == _WIRE_I32:
            return self._read(4, end)
        length, raw = self._varint(end)
        self.kept += length
        if self.kept > SKELETON_MAX_BYTES:
            raise SkeletonError(f"the graph without its weights is larger than {SKELETON_MAX_BYTES // 2**20} MiB")
        return raw + self._read(length, end)

    # -- messages
    def message(self, name: str, end: int) -> bytes:
        children = self.schema[name]
        out = []
        while self.pos < end:
            number, wire, tag = self._field(end)
            child = children.get(number)
            if child is None or wire != _WIRE_LEN:
                out.append(tag + self._copy_value(wire, end))
                continue
            length, _ = self._varint(end)
            sub_end = self.pos + length
            if sub_end > end:
                raise Malformed("truncated: a message runs past the end of its parent")
            body = self.tensor_(sub_end) if child == self.tensor else self.message(child, sub_end)
            out.append(tag + _varint_bytes(len(body)) + body)
        if self.pos != end:
            raise Malformed("truncated: a message runs past the end of its parent")
        return b"".join(out)

    def tensor_(self, end: int) -> bytes:
        out = []
        dims: list[int] = []
        data_type = 0
        values: dict[int, int] = {}  # value field -> values (bytes for raw_data)
        name = ""
        external = None
        while self.pos < end:
            number, wire, tag = self._field(end)
            if number in _T_VALUES:
                values[number] = values.get(number, 0) + self._count(number, wire, end)
                continue
            if number == _T_EXTERNAL:
                entry = _entry(self._copy_value(wire, end))
                if entry[0] == "location":
                    external = entry[1]
                continue
            if number == _T_LOCATION:
                if self._copy_value(wire, end) != b"\x00":  # not DEFAULT: the data is elsewhere
                    external = external or "?"
                continue
            value = self._copy_value(wire, end)
            out.append(tag + value)
            if number == _T_DIMS:
                dims.extend(_ints(value, wire))
            elif number == _T_DATA_TYPE:
                data_type = _ints(value, wire)[-1]
            elif number == 8:  # name
                name = _string(value)
        if self.pos != end:
            raise Malformed("truncated: a tensor runs past the end of its message")
        if external is not None:
            raise SkeletonError(f"references external data ({external}) in tensor {name!r}: upload a model that holds "
                                "its weights in the file itself (onnx.save(..., save_as_external_data=False))")
        if not values:
            return b"".join(out)  # nothing skipped: the checker sees the tensor as it is
        self._check_values(name, dims, data_type, values)
        location = (b"\x0a" + _varint_bytes(len(b"location")) + b"location" + b"\x12"
                    + _varint_bytes(len(STRIPPED_LOCATION)) + STRIPPED_LOCATION.encode())
        out.append(_varint_bytes(_T_EXTERNAL << 3 | _WIRE_LEN) + _varint_bytes(len(location)) + location)
        out.append(_varint_bytes(_T_LOCATION << 3 | _WIRE_VARINT) + b"\x01")  # EXTERNAL
        return b"".join(out)

    def _count(self, number: int, wire: int, end: int) -> int:
        """Skip one occurrence of a tensor's value field: the values it holds (bytes for raw_data)."""
        if wire == _WIRE_VARINT:
            self._varint(end)
            return 1
        if wire in (_WIRE_I64, _WIRE_I32):
            self._skip(8 if wire == _WIRE_I64 else 4, end)
            return 1
        length, _ = self._varint(end)
        if number in (6, 9):  # one string, or the raw bytes
            self._skip(length, end)
            return 1 if number == 6 else length
        if number in _FIXED_WIDTH:  # packed floats / doubles
            if length % _FIXED_WIDTH[number]:
                raise Malformed("malformed packed field")
            self._skip(length, end)
            return length // _FIXED_WIDTH[number]
        count, left, last = 0, length, 0  # packed varints: one value per byte under 0x80
        if self.pos + length > end:
            raise Malformed("truncated: a field runs past the end of its message")
        while left:
            chunk = self._read(min(left, _READ), end)
            left -= len(chunk)
            count += len(chunk) - len(chunk.translate(None, _LOW_BYTES))
            last = chunk[-1]
        if length and last >= 0x80:
            raise Malformed("malformed packed varints")
        return count

    def _check_values(self, name: str, dims: list[int], data_type: int, values: dict[int, int]) -> None:
        """What onnx.checker checks of a tensor's data, on the counts."""
        import onnx

        type_name = self.type_names.get(data_type, "UNDEFINED")
        if type_name == "UNDEFINED":
            raise SkeletonError(f"tensor {name!r} has no (or an unknown) element type")
        if len(values) != 1:
            raise SkeletonError(f"tensor {name!r} should contain one and only one value field")
        if any(d < 0 for d in dims):
            raise SkeletonError(f"tensor {name!r} has a negative dimension")
        (field, count), = values.items()
        nelem = math.prod(dims)
        if field == 9:
            if type_name == "STRING":
                raise SkeletonError(f"tensor {name!r}: STRING data cannot be stored in raw_data")
            bits = _SUB_BYTE_BITS.get(type_name) or 8 * onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
            need = math.ceil(nelem * bits / 8)
        else:
            expected_field = onnx.helper.tensor_dtype_to_field(data_type)
            if _T_VALUES[field] != expected_field:
                raise SkeletonError(f"tensor {name!r} of type {type_name} holds its values in "
                                    f"{_T_VALUES[field]}, not {expected_field}")
            bits = _SUB_BYTE_BITS.get(type_name)
            need = 2 * nelem if type_name.startswith("COMPLEX") else math.ceil(nelem * bits / 32) if bits \
                else nelem
        if count < need:
            unit = "bytes" if field == 9 else "values"
            raise SkeletonError(f"tensor {name!r}: {_T_VALUES[field]} holds {count} {unit}, fewer than its shape "
                                f"{dims} of {type_name} needs ({need})")


def _ints(value: bytes, wire: int) -> list[int]:
    """The int64 values of a copied varint field (one value, or packed), two's complement."""
    if wire == _WIRE_LEN:
        value = _payload(value)
    out, cur, shift = [], 0, 0
    for b in value:
        cur |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            out.append(cur - (1 << 64) if cur >= 1 << 63 else cur)
            cur, shift = 0, 0
    return out


def _payload(value: bytes) -> bytes:
    """A copied length-delimited field's content (its length prefix dropped)."""
    length_bytes = 0
    while value[length_bytes] >= 0x80:
        length_bytes += 1
    return value[length_bytes + 1:]


def _string(value: bytes) -> str:
    return _payload(value).decode("utf-8", "replace")


def _entry(value: bytes) -> tuple[str, str]:
    """A copied StringStringEntryProto as (key, value)."""
    import onnx

    entry = onnx.StringStringEntryProto.FromString(_payload(value))
    return entry.key, entry.value


def skeleton(path: Path) -> bytes:
    """The serialized ModelProto of `path` with its dense tensors' data replaced by external-data entries naming
    STRIPPED_LOCATION. Raises SkeletonError."""
    import onnx

    path = Path(path)
    size = os.path.getsize(path)
    with open(path, "rb", buffering=_READ) as fh:
        walk = _Walk(fh, size)
        return walk.message(onnx.ModelProto.DESCRIPTOR.full_name, size)
