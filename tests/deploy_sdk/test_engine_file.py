"""The engine container: round trip, corruption, foreign files, version/GPU checks (no TensorRT needed)."""

from __future__ import annotations

import hashlib
import json
import struct
import warnings

import pytest
from precision_toy_graph import toy_metadata

from deploy_sdk.engine_file import (
    ENGINE_FILE_FORMAT,
    EngineHeader,
    GpuIdentity,
    check_engine_compatible,
    read_engine_file,
    read_engine_header,
    write_engine_file,
)
from deploy_sdk.errors import EngineError
from deploy_sdk.model_metadata import ModelMetadata

H100 = GpuIdentity("NVIDIA H100 80GB HBM3", "9.0")


def _metadata() -> ModelMetadata:
    md = toy_metadata()
    md.precision, md.checkpoint_sha256 = "int8", "ab" * 32
    return md


def _header() -> EngineHeader:
    return EngineHeader(
        metadata=_metadata(),
        tensorrt_version="10.13.0.35",
        gpu=H100,
        profile={"images": {"min": [1, 3, 32, 32], "opt": [1, 3, 512, 512], "max": [4, 3, 512, 512]}},
    )


def test_round_trip_keeps_plan_and_every_field(tmp_path):
    plan = bytes(range(256)) * 10
    path = tmp_path / "m.engine"
    written = write_engine_file(path, plan, _header())
    header, engine = read_engine_file(path)
    assert engine == plan
    assert header.metadata == _metadata()
    assert header.tensorrt_version == "10.13.0.35"
    assert header.gpu == H100
    assert header.profile["images"]["max"] == [4, 3, 512, 512]
    assert header.engine_size == len(plan)
    assert header.engine_sha256 == hashlib.sha256(plan).hexdigest()
    assert header.created_utc == written.created_utc and header.created_utc.endswith("Z")
    assert read_engine_header(path).metadata.class_names == ["__background__", "a", "b", "c"]
    # Layout as documented in the module docstring: magic, format, header length, JSON, then the plan verbatim.
    raw = path.read_bytes()
    magic, fmt, hlen = struct.unpack("<8sIQ", raw[:20])
    assert (magic, fmt) == (b"MRCNNTRT", ENGINE_FILE_FORMAT)
    assert json.loads(raw[20 : 20 + hlen])["gpu_name"] == H100.name
    assert raw[20 + hlen :] == plan


def test_bare_plan_is_rejected_with_the_fix(tmp_path):
    path = tmp_path / "bare.plan"
    path.write_bytes(b"ftrt" + b"\0" * 100)
    with pytest.raises(EngineError, match="not a maskrcnn-deploy engine file.*maskrcnn-deploy build"):
        read_engine_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(EngineError, match="does not exist"):
        read_engine_header(tmp_path / "nope.engine")


def test_corrupt_plan_and_truncation_are_detected(tmp_path):
    path = tmp_path / "m.engine"
    write_engine_file(path, b"x" * 1000, _header())
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(EngineError, match="SHA-256"):
        read_engine_file(path)
    path.write_bytes(bytes(raw[:-10]))
    with pytest.raises(EngineError, match="truncated"):
        read_engine_file(path)
    path.write_bytes(bytes(raw[:30]))
    with pytest.raises(EngineError, match="truncated inside its header"):
        read_engine_header(path)


def test_newer_format_is_refused(tmp_path):
    path = tmp_path / "m.engine"
    write_engine_file(path, b"x" * 10, _header())
    raw = bytearray(path.read_bytes())
    raw[8:12] = struct.pack("<I", ENGINE_FILE_FORMAT + 1)
    path.write_bytes(bytes(raw))
    with pytest.raises(EngineError, match="newer than this SDK"):
        read_engine_header(path)


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "m.engine"
    with pytest.raises(EngineError, match="empty"):
        write_engine_file(path, b"", _header())
    assert list(tmp_path.iterdir()) == []


def test_tensorrt_version_mismatch_names_both_and_the_fix():
    with pytest.raises(EngineError) as info:
        check_engine_compatible(_header(), "11.0.0.1", H100, source="m.engine")
    text = str(info.value)
    assert "10.13.0.35" in text and "11.0.0.1" in text and "maskrcnn-deploy build" in text


def test_compute_capability_mismatch_names_both_gpus():
    other = GpuIdentity("NVIDIA A100-SXM4-80GB", "8.0")
    with pytest.raises(EngineError) as info:
        check_engine_compatible(_header(), "10.13.0.35", other)
    text = str(info.value)
    assert "H100" in text and "A100" in text and "9.0" in text and "8.0" in text and "maskrcnn-deploy build" in text


def test_same_capability_other_model_only_warns():
    h200 = GpuIdentity("NVIDIA H200", "9.0")
    with pytest.warns(UserWarning, match="timed on the other GPU"):
        check_engine_compatible(_header(), "10.13.0.35", h200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_engine_compatible(_header(), "10.13.0.35", H100)
