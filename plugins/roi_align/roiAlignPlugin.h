// The TensorRT IPluginV3 plugin objects of `RoIAlign` and `MultiLevelRoIAlign` (version "1"): one class per op on a
// common base. The base holds what both share (attributes, capabilities, type rules, the kernel launch through the
// C ABI's MrdRoiAlignArgs, see roiAlignArgs.h); each op class says only where its tensors are and what shapes they
// have. Attributes come from roiAlignPluginFields.h, creators from roiAlignPluginCreator.h. Every TensorRT virtual
// is noexcept and reports failures through roiAlignPluginLog.h (guarded()) instead of throwing. Fields, inputs
// and outputs: plugins/README.md.
#pragma once

#include "roiAlignCApi.h"
#include "roiAlignPluginFields.h"

#include <NvInferRuntime.h>

#include <memory>
#include <string>

namespace mrd
{

class RoiAlignPluginBase : public nvinfer1::IPluginV3,
                           public nvinfer1::IPluginV3OneCore,
                           public nvinfer1::IPluginV3OneBuild,
                           public nvinfer1::IPluginV3OneRuntime
{
public:
    RoiAlignPluginBase(RoiAlignOp op, RoiAlignAttributes attrs, std::string nameSpace);
    ~RoiAlignPluginBase() override = default;

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

protected:
    //! What an input of the op is.
    enum class Input
    {
        kFeatures, //!< a feature map [B, C, H, W] (all of them share one type, which the output has too)
        kRois,     //!< the boxes, fp32/fp16
        kIndices,  //!< batch_indices, int32/int64
    };

    // The op's layout: the only things the two ops do differently.
    virtual int32_t numInputs() const = 0;
    virtual int32_t firstFeatureInput() const = 0;
    virtual Input inputKind(int32_t pos) const = 0;
    //! "" when the concrete or symbolic input dims fit the op (-1 = unknown at build time), else what is wrong.
    virtual std::string checkOpDims(nvinfer1::Dims const* dims) const = 0;
    virtual void outputShape(nvinfer1::DimsExprs const* inputs, nvinfer1::DimsExprs& out) const = 0;
    //! The rois, batch indices and RoI count of a call.
    virtual void setRoiArgs(
        MrdRoiAlignArgs& args, nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs) const = 0;
    virtual RoiAlignPluginBase* copy() const = 0;

    RoiAlignAttributes const& attributes() const
    {
        return mAttrs;
    }
    //! The op's name, for messages.
    std::string name() const;

private:
    //! checkOpDims() after the input count; "" when fine.
    std::string checkDims(nvinfer1::Dims const* dims, int32_t nbInputs) const;
    //! The whole call: attributes, feature levels, rois (setRoiArgs), output and stream.
    MrdRoiAlignArgs callArgs(nvinfer1::PluginTensorDesc const* inputDesc, void const* const* inputs, void* output,
        cudaStream_t stream) const;

    RoiAlignOp mOp;
    RoiAlignAttributes mAttrs;
    std::string mNamespace;
    // Storage the serialized field collection points into.
    RoiAlignFieldWriter mSerialFields;
};

//! A new plugin object of ``op`` (RoIAlignPlugin or MultiLevelRoiAlignPlugin of roiAlignPlugin.cpp).
std::unique_ptr<RoiAlignPluginBase> makeRoiAlignPlugin(RoiAlignOp op, RoiAlignAttributes attrs, std::string nameSpace);

} // namespace mrd
