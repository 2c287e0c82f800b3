// The RoIAlign ops' names and THE table of their fields (attributes): name, value kind, which op(s) take it and
// the default. Everything else that lists fields is derived from this table: the TensorRT plugins' parser, their
// creators' field lists and the fields they write back for serialization (roiAlignPluginFields.cpp), and the C ABI's
// mrd_op_field() (roiAlignCApi.h), through which deploy_sdk/plugins.py checks its mirror of the table (OP_FIELDS;
// tests/deploy_sdk/test_plugin_lookup.py compares the two). No TensorRT type here: the CPU-only build exports the
// table too.
//
// Adding an attribute: a row here, a member of RoiAlignAttributes (roiAlignPluginFields.h) read by
// RoiAlignPlugin::callArgs (roiAlignPlugin.cpp), and the row of deploy_sdk.plugins.OP_FIELDS.
#pragma once

#include <stdint.h>

namespace mrd
{

//! The two ops; the math is shared, only the tensor layout differs.
enum class RoiAlignOp : int32_t
{
    kSingleLevel = 0, //!< RoIAlign: X [N,C,H,W], rois [R,4], batch_indices [R] -> [R,C,oh,ow]
    kMultiLevel = 1,  //!< MultiLevelRoIAlign: rois [B,R,4], P2..P5 [B,C,Hl,Wl] -> [B,R,C,oh,ow]
};

constexpr int32_t kNumOps = 2;
constexpr char const* kPluginVersion = "1";

//! The TensorRT plugin name of an op: "RoIAlign" or "MultiLevelRoIAlign".
constexpr char const* opName(RoiAlignOp op)
{
    return op == RoiAlignOp::kMultiLevel ? "MultiLevelRoIAlign" : "RoIAlign";
}

//! Bit of an op in a field's op mask.
constexpr int32_t opBit(RoiAlignOp op)
{
    return int32_t{1} << static_cast<int32_t>(op);
}

constexpr int32_t kRoiAlign = opBit(RoiAlignOp::kSingleLevel);
constexpr int32_t kMultiLevel = opBit(RoiAlignOp::kMultiLevel);
constexpr int32_t kBothOps = kRoiAlign | kMultiLevel;

//! Kind of a field's value, as ONNX attribute types name them; the numbers are the C ABI's MRD_FIELD_* codes.
enum class FieldKind : int32_t
{
    kInt = 0,    //!< one int32 (TensorRT kINT32)
    kFloat = 1,  //!< one float32 (kFLOAT32)
    kFloats = 2, //!< float32 list, up to kMaxLevels elements (kFLOAT32)
    kString = 3, //!< text (kCHAR)
};

//! No default: the field is required.
#define MRD_REQUIRED nullptr

// The table. X(name, kind, ops, default as text, RoiAlignAttributes member, codec): one row per field and op set;
// a name may have one row per op when the defaults differ. The last two columns are read by the TensorRT part only
// (roiAlignPluginFields.cpp), which has the codecs (how a field's value maps onto the member). Row order is the
// order the creators list the fields, the plugins serialize them and deploy_sdk.plugins.OP_FIELDS mirrors them.
#define MRD_ROI_ALIGN_FIELDS(X)                                                                                        \
    X("output_height", kInt, kRoiAlign, "1", outH, IntCodec)                                                           \
    X("output_height", kInt, kMultiLevel, "7", outH, IntCodec)                                                         \
    X("output_width", kInt, kRoiAlign, "1", outW, IntCodec)                                                            \
    X("output_width", kInt, kMultiLevel, "7", outW, IntCodec)                                                          \
    X("sampling_ratio", kInt, kBothOps, "0", samplingRatio, IntCodec)                                                  \
    X("spatial_scales", kFloats, kMultiLevel, MRD_REQUIRED, spatialScales, ScalesCodec)                                \
    X("spatial_scale", kFloat, kRoiAlign, "1", spatialScales, ScaleCodec)                                              \
    X("aligned", kInt, kMultiLevel, "0", aligned, FlagCodec)                                                           \
    X("mode", kString, kBothOps, "avg", mode, ModeCodec)                                                               \
    X("canonical_scale", kFloat, kMultiLevel, "224", canonicalScale, FloatCodec)                                       \
    X("canonical_level", kInt, kMultiLevel, "4", canonicalLevel, IntCodec)                                             \
    X("coordinate_transformation_mode", kString, kRoiAlign, "half_pixel", aligned, TransformCodec)

//! One row of the table without its TensorRT columns.
struct OpField
{
    char const* name;
    FieldKind kind;
    int32_t ops;             //!< kRoiAlign | kMultiLevel bits
    char const* defaultText; //!< MRD_REQUIRED (nullptr) when the field must be given
};

#define MRD_OP_FIELD_ROW(NAME, KIND, OPS, DEFAULT, MEMBER, CODEC) OpField{NAME, FieldKind::KIND, OPS, DEFAULT},
constexpr OpField kOpFields[] = {MRD_ROI_ALIGN_FIELDS(MRD_OP_FIELD_ROW)};
#undef MRD_OP_FIELD_ROW

constexpr int32_t kNumOpFields = static_cast<int32_t>(sizeof(kOpFields) / sizeof(kOpFields[0]));

} // namespace mrd
