"""Tampered model metadata, in ONNX files and engine headers: EngineError naming the field, never a traceback or a
model that loads and then gives odd results."""

from __future__ import annotations

import dataclasses
import json
import struct

import onnx
import pytest
from toy_deployment_graph import toy_metadata, write_toy_graph

from deploy_sdk import EngineError, Predictor
from deploy_sdk.backends.onnxruntime import OnnxRuntimeBackend
from deploy_sdk.engine_file import EngineHeader, GpuIdentity, read_engine_file, read_engine_header, write_engine_file
from deploy_sdk.model_metadata import _SCHEMA, ModelMetadata

PREFIX = "maskrcnn_deploy."

# (field, stored string, what the message must say). Values are the raw strings of metadata_props.
TAMPERED = [
    ("format", "abc", "positive integer"),
    ("format", "1.5", "positive integer"),
    ("format", "", "positive integer"),
    ("format", "0", "positive integer"),
    ("class_names", '"__background__,a,b"', "list of strings"),
    ("class_names", "[1, 2, 3]", "list of strings"),
    ("class_names", "[]", "non-empty"),
    ("class_names", "['a', 'b']", "not valid JSON"),
    ("min_size", "0", "positive integer"),
    ("min_size", '"800"', "positive integer"),
    ("min_size", "-800", "positive integer"),
    ("min_size", "800.5", "positive integer"),
    ("min_size", "true", "positive integer"),
    ("max_size", "null", "positive integer"),
    ("size_divisible", "0", "positive integer"),
    ("image_mean", "[0.485, 0.456]", "3 finite numbers"),
    ("image_mean", '["r", "g", "b"]', "3 finite numbers"),
    ("image_mean", "[NaN, 0.5, 0.5]", "3 finite numbers"),
    ("image_std", "[0.229, 0.224, 0.225, 0.2]", "3 finite positive numbers"),
    ("image_std", "[0, 1, 1]", "3 finite positive numbers"),
    ("score_threshold", "1.5", "number in 0..1"),
    ("nms_threshold", '"0.5"', "number in 0..1"),
    ("detections_per_image", "0", "positive integer"),
    ("mask_size", "28.0", "positive integer"),
    ("fixed_height", "0", "positive integer or null"),
    ("arch", "5", "a string"),
    ("extra", "[]", "a JSON object"),
    ("min_size", "{", "not valid JSON"),
]


def _tampered_props(field: str, raw: str) -> dict:
    props = toy_metadata().to_props()
    props[PREFIX + field] = raw
    return props


def _write_onnx(path, props):
    write_toy_graph(path)
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def _rewrite_header(path, mutate):
    raw = path.read_bytes()
    magic, fmt, hlen = struct.unpack("<8sIQ", raw[:20])
    data = json.loads(raw[20 : 20 + hlen])
    data = mutate(data)
    blob = json.dumps(data).encode()
    path.write_bytes(struct.pack("<8sIQ", magic, fmt, len(blob)) + blob + raw[20 + hlen :])


def _engine(path):
    header = EngineHeader(metadata=toy_metadata(), tensorrt_version="10.13.0.35", gpu=GpuIdentity("GPU", "9.0"))
    write_engine_file(path, b"plan" * 10, header)
    return path


def _message_pattern(field: str, what: str) -> str:
    if what == "not valid JSON":
        return f"'{field}' is not valid JSON"
    return f"metadata field '{field}' must be .*{what}"


@pytest.mark.parametrize("field, raw, what", TAMPERED)
def test_tampered_field_in_props_names_the_field(field, raw, what):
    with pytest.raises(EngineError, match=_message_pattern(field, what)):
        ModelMetadata.from_props(_tampered_props(field, raw), source="m.onnx")


@pytest.mark.parametrize("field, raw, what", TAMPERED)
def test_tampered_onnx_file_is_refused_at_load(tmp_path, field, raw, what):
    path = _write_onnx(tmp_path / "m.onnx", _tampered_props(field, raw))
    with pytest.raises(EngineError, match=_message_pattern(field, what)) as info:
        OnnxRuntimeBackend(path)
    assert str(path) in str(info.value)
    with pytest.raises(EngineError, match=f"'{field}'"):
        Predictor(path)


@pytest.mark.parametrize("field, raw, what", TAMPERED)
def test_tampered_engine_header_is_refused(tmp_path, field, raw, what):
    path = _engine(tmp_path / "m.engine")

    def mutate(data):
        data["metadata_props"][PREFIX + field] = raw
        return data

    _rewrite_header(path, mutate)
    with pytest.raises(EngineError, match=_message_pattern(field, what)):
        read_engine_header(path)
    with pytest.raises(EngineError, match=f"'{field}'"):
        read_engine_file(path)


def test_metadata_props_as_a_list_is_refused(tmp_path):
    path = _engine(tmp_path / "m.engine")
    _rewrite_header(path, lambda d: {**d, "metadata_props": sorted(d["metadata_props"].items())})
    with pytest.raises(EngineError, match="'metadata_props' must be a JSON object.*got a list"):
        read_engine_header(path)


def test_metadata_value_that_is_not_a_string_is_refused(tmp_path):
    path = _engine(tmp_path / "m.engine")

    def mutate(data):
        data["metadata_props"][PREFIX + "min_size"] = 800  # a number, not its JSON text
        return data

    _rewrite_header(path, mutate)
    with pytest.raises(EngineError, match="'min_size' must be stored as a JSON string"):
        read_engine_header(path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: [d], "engine header must be a JSON object, got a list"),
        (lambda d: {**d, "profile": [1, 2]}, "'profile' must map input names"),
        (lambda d: {**d, "engine_size": "40"}, "'engine_size' must be a non-negative integer"),
    ],
)
def test_malformed_engine_header_fields(tmp_path, mutate, message):
    path = _engine(tmp_path / "m.engine")
    _rewrite_header(path, mutate)
    with pytest.raises(EngineError, match=message):
        read_engine_header(path)


def test_missing_field_is_still_listed(tmp_path):
    props = toy_metadata().to_props()
    del props[PREFIX + "min_size"]
    with pytest.raises(EngineError, match=r"lacks the fields \['min_size'\]"):
        ModelMetadata.from_props(props)


def test_schema_covers_every_field_and_accepts_what_the_sdk_writes():
    assert set(_SCHEMA) == {f.name for f in dataclasses.fields(ModelMetadata)}
    md = toy_metadata(fixed_height=64, fixed_width=96, extra={"anchor_sizes": [[32], [64]]})
    assert ModelMetadata.from_props(md.to_props()) == md
    assert ModelMetadata.from_json(md.to_json()) == md
    # Unknown fields (a newer SDK of the same format) are ignored.
    props = md.to_props()
    props[PREFIX + "something_new"] = "[1, 2]"
    assert ModelMetadata.from_props(props) == md


def test_from_json_validates_too():
    values = json.loads(toy_metadata().to_json())
    values["size_divisible"] = 0
    with pytest.raises(EngineError, match="'size_divisible' must be a positive integer"):
        ModelMetadata.from_json(json.dumps(values))
    with pytest.raises(EngineError, match="not valid JSON"):
        ModelMetadata.from_json("{")
