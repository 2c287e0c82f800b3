// The TensorRT IPluginV3 plugin object of `RoIAlign` and `MultiLevelRoIAlign` (version "1"). It only checks shapes
// and types and calls the CUDA launcher of roiAlignKernel.h; its attributes come from roiAlignPluginFields.h, its
// creators from roiAlignPluginCreator.h. Every TensorRT virtual is noexcept and reports failures through
// roiAlignPluginLog.h instead of throwing. Fields, inputs and outputs: plugins/README.md.
#pragma once

#include "roiAlignPluginFields.h"

#include <NvInferRuntime.h>

#include <string>

namespace mrd
{

class RoiAlignPlugin : public nvinfer1::IPluginV3,
                       public nvinfer1::IPluginV3OneCore,
                       public nvinfer1::IPluginV3OneBuild,
                       public nvinfer1::IPluginV3OneRuntime
{
public:
    RoiAlignPlugin(RoiAlignOp op, RoiAlignAttributes attrs, std::string nameSpace);
    ~RoiAlignPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
        int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    int32_t expectedInputs() const;
    //! "" when the concrete or symbolic input ranks/dims fit the op, else what is wrong.
    std::string checkDims(nvinfer1::Dims const* dims, int32_t nbInputs) const;

    RoiAlignOp mOp;
    RoiAlignAttributes mAttrs;
    std::string mNamespace;
    // Storage the serialized field collection points into.
    RoiAlignFieldWriter mSerialFields;
};

} // namespace mrd
