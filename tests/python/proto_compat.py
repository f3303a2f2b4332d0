"""Checks Prism's gRPC protos against the descriptors tritonclient.grpc was built from.

Every message, field and enum value Prism declares must exist in Triton's with the same
number, type and label (Prism may leave fields out: proto3 skips what it does not know),
and every RPC Prism serves must be Triton's, with the same request and response types.
Returns the list of differences (empty: wire-compatible).
"""

import pathlib
import tempfile

from google.protobuf import descriptor_pb2
from grpc_tools import protoc
from tritonclient.grpc import model_config_pb2, service_pb2

PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "protocol" / "proto"


def prism_files():
    with tempfile.TemporaryDirectory() as d:
        out = pathlib.Path(d) / "set.pb"
        rc = protoc.main(
            [
                "protoc",
                f"-I{PROTO_DIR}",
                f"--descriptor_set_out={out}",
                "grpc_service.proto",
                "model_config.proto",
            ]
        )
        assert rc == 0, f"protoc failed on {PROTO_DIR}"
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {f.name: f for f in fds.file}


def triton_files():
    files = {}
    for module in (service_pb2, model_config_pb2):
        p = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(p)
        files[p.name] = p
    return files


def _messages(prefix, messages, out):
    for m in messages:
        name = f"{prefix}.{m.name}"
        out[name] = m
        _messages(name, m.nested_type, out)


def _enums(prefix, file_or_message, out):
    for e in file_or_message.enum_type:
        out[f"{prefix}.{e.name}"] = {v.name: v.number for v in e.value}
    for m in getattr(file_or_message, "nested_type", getattr(file_or_message, "message_type", [])):
        _enums(f"{prefix}.{m.name}", m, out)


def index(files):
    messages, enums, services = {}, {}, {}
    for f in files.values():
        _messages(f".{f.package}", f.message_type, messages)
        _enums(f".{f.package}", f, enums)
        for s in f.service:
            services[f"{f.package}.{s.name}"] = {m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming) for m in s.method}
    return messages, enums, services


def differences():
    ours, theirs = index(prism_files()), index(triton_files())
    diffs = []
    for name, m in ours[0].items():
        t = theirs[0].get(name)
        if t is None:
            diffs.append(f"message {name}: not in Triton's protos")
            continue
        tf = {f.name: f for f in t.field}
        for f in m.field:
            g = tf.get(f.name)
            if g is None:
                diffs.append(f"{name}.{f.name}: not in Triton's message")
            elif (f.number, f.type, f.label, f.type_name) != (g.number, g.type, g.label, g.type_name):
                diffs.append(
                    f"{name}.{f.name}: number/type/label/type_name {(f.number, f.type, f.label, f.type_name)}"
                    f" != Triton's {(g.number, g.type, g.label, g.type_name)}"
                )
            elif f.HasField("oneof_index") != g.HasField("oneof_index"):
                diffs.append(f"{name}.{f.name}: oneof membership differs")
    for name, values in ours[1].items():
        t = theirs[1].get(name)
        if t is None:
            diffs.append(f"enum {name}: not in Triton's protos")
        elif any(t.get(k) != v for k, v in values.items()):
            diffs.append(f"enum {name}: {values} differs from {t}")
    for name, methods in ours[2].items():
        t = theirs[2].get(name, {})
        for method, sig in methods.items():
            if t.get(method) != sig:
                diffs.append(f"rpc {name}/{method}: {sig} != Triton's {t.get(method)}")
    return diffs


if __name__ == "__main__":
    found = differences()
    print("\n".join(found) or "wire-compatible with tritonclient's descriptors")
    raise SystemExit(1 if found else 0)
