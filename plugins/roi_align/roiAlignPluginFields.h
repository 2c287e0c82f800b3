// The TensorRT side of the op table (roiAlignOp.h): the attributes a plugin object holds, parsed from a
// PluginFieldCollection, the creators' field lists and the fields written back for serialization. All three walk
// the one table MRD_ROI_ALIGN_FIELDS; the codecs of roiAlignPluginFields.cpp map a field's value onto its
// RoiAlignAttributes member. Fields, inputs and outputs: plugins/README.md.
#pragma once

#include "roiAlignMath.h"
#include "roiAlignOp.h"

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace mrd
{

//! The op's attributes as parsed from TensorRT plugin fields. No defaults here: parseRoiAlignFields() starts from
//! the table's defaults for the op.
struct RoiAlignAttributes
{
    int32_t outH{};
    int32_t outW{};
    int32_t samplingRatio{};
    int32_t aligned{}; //!< 0/1; "aligned" of MultiLevelRoIAlign, "coordinate_transformation_mode" of RoIAlign
    int32_t mode{};    //!< PoolMode
    std::vector<float> spatialScales; //!< "spatial_scales", or the one "spatial_scale"
    float canonicalScale{};
    int32_t canonicalLevel{};
};

//! The table's defaults for ``op`` (a required field stays empty).
RoiAlignAttributes defaultRoiAlignAttributes(RoiAlignOp op);

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
    std::string mStrings[kNumOpFields]; //!< text of the string fields, by table row
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

} // namespace mrd
