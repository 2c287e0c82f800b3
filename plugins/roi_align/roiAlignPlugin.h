// TensorRT IPluginV3 plugins `RoIAlign` and `MultiLevelRoIAlign` (version "1") and their IPluginCreatorV3One
// creators. The classes only parse fields, check shapes and types, and call the CUDA launcher of
// roiAlignKernel.h. Every TensorRT virtual is noexcept and reports failures through the TensorRT logger (found via
// setLoggerFinder) instead of throwing. Fields, inputs and outputs: plugins/README.md.
#pragma once

#include "roiAlignCApi.h"
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
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
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
    std::string mModeString;
    std::string mTransformString;
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

class RoiAlignPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    explicit RoiAlignPluginCreator(RoiAlignOp op);
    ~RoiAlignPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase phase) noexcept override;

private:
    RoiAlignOp mOp;
    std::string mNamespace;
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! Parse a field collection into attributes; throws std::invalid_argument naming the bad field.
RoiAlignAttributes parseRoiAlignFields(RoiAlignOp op, nvinfer1::PluginFieldCollection const* fc);

} // namespace mrd

extern "C" MRD_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
extern "C" MRD_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
