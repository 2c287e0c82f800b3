// The attribute table of the TensorRT plugins `RoIAlign` and `MultiLevelRoIAlign` (version "1"): their names, the
// fields each takes (names, types, defaults), parsing a PluginFieldCollection into RoiAlignAttributes and writing
// the attributes back in the same format for serialization. Fields, inputs and outputs: plugins/README.md.
#pragma once

#include "roiAlignMath.h"

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace mrd
{

//! Which op a plugin object implements; the math is shared, only the tensor layout differs.
enum class RoiAlignOp : int32_t
{
    kSingleLevel = 0, //!< RoIAlign: X [N,C,H,W], rois [R,4], batch_indices [R] -> [R,C,oh,ow]
    kMultiLevel = 1,  //!< MultiLevelRoIAlign: rois [B,R,4], P2..P5 [B,C,Hl,Wl] -> [B,R,C,oh,ow]
};

constexpr char const* kPluginVersion = "1";

//! The TensorRT plugin name of an op: "RoIAlign" or "MultiLevelRoIAlign".
inline char const* opName(RoiAlignOp op)
{
    return op == RoiAlignOp::kMultiLevel ? "MultiLevelRoIAlign" : "RoIAlign";
}

//! The op's attributes as parsed from TensorRT plugin fields.
struct RoiAlignAttributes
{
    int32_t outH{7};
    int32_t outW{7};
    int32_t samplingRatio{0};
    int32_t aligned{0};
    int32_t mode{0}; //!< PoolMode
    std::vector<float> spatialScales{1.0f};
    float canonicalScale{224.0f};
    int32_t canonicalLevel{4};
};

//! Parse a field collection into attributes; throws std::invalid_argument naming the bad field.
RoiAlignAttributes parseRoiAlignFields(RoiAlignOp op, nvinfer1::PluginFieldCollection const* fc);

//! The fields an op takes (names, types, lengths; no data), as a creator's getFieldNames() lists them.
std::vector<nvinfer1::PluginField> roiAlignFieldNames(RoiAlignOp op);

//! Writes attributes as the field collection parseRoiAlignFields() reads back (a plugin's getFieldsToSerialize()).
//! The collection points into this object and into the attributes given to write(): both must outlive its use.
class RoiAlignFieldWriter
{
public:
    nvinfer1::PluginFieldCollection const* write(RoiAlignOp op, RoiAlignAttributes const& attrs);

private:
    std::string mModeString;
    std::string mTransformString;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

} // namespace mrd
