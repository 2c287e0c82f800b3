// The IPluginCreatorV3One creators of `RoIAlign` and `MultiLevelRoIAlign`, and getCreators(), the entry point through
// which TensorRT (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins) registers them.
#pragma once

#include "roiAlignCApi.h"
#include "roiAlignPluginFields.h"

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace mrd
{

class RoiAlignPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    explicit RoiAlignPluginCreator(RoiAlignOp op);
    ~RoiAlignPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    RoiAlignOp mOp;
    std::string mNamespace;
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace mrd

extern "C" MRD_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
