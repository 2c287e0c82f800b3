#include "roiAlignPlugin.h"

#include "roiAlignKernel.h"
#include "roiAlignPluginLog.h"

#include <cstdint>
#include <exception>
#include <string>
#include <utility>
#include <vector>

using namespace nvinfer1;

namespace mrd
{
namespace
{

bool isFloatType(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kHALF;
}

} // namespace

RoiAlignPlugin::RoiAlignPlugin(RoiAlignOp op, RoiAlignAttributes attrs, std::string nameSpace)
    : mOp(op)
    , mAttrs(std::move(attrs))
    , mNamespace(std::move(nameSpace))
{
}

IPluginCapability* RoiAlignPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* RoiAlignPlugin::clone() noexcept
{
    try
    {
        return new RoiAlignPlugin(mOp, mAttrs, mNamespace);
    }
    catch (std::exception const& e)
    {
        logError(std::string("clone failed: ") + e.what());
        return nullptr;
    }
}

char const* RoiAlignPlugin::getPluginName() const noexcept
{
    return opName(mOp);
}

char const* RoiAlignPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* RoiAlignPlugin::getPluginNamespace() const noexcept
{
    return mNamespace.c_str();
}

int32_t RoiAlignPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t RoiAlignPlugin::expectedInputs() const
{
    return mOp == RoiAlignOp::kMultiLevel ? 1 + static_cast<int32_t>(mAttrs.spatialScales.size()) : 3;
}

std::string RoiAlignPlugin::checkDims(Dims const* dims, int32_t nbInputs) const
{
    // -1 marks a dimension unknown at build time; only known values are compared.
    auto known = [](int64_t v) { return v >= 0; };
    std::string const op = opName(mOp);
    if (nbInputs != expectedInputs())
    {
        return op + " expects " + std::to_string(expectedInputs()) + " inputs, got " + std::to_string(nbInputs);
    }
    if (mOp == RoiAlignOp::kMultiLevel)
    {
        Dims const& rois = dims[0];
        if (rois.nbDims != 3 || (known(rois.d[2]) && rois.d[2] != 4))
        {
            return op + ": rois must be [B, R, 4]";
        }
        for (int32_t l = 1; l < nbInputs; ++l)
        {
            Dims const& f = dims[l];
            if (f.nbDims != 4)
            {
                return op + ": feature level " + std::to_string(l - 1) + " must be [B, C, H, W], got rank "
                    + std::to_string(f.nbDims);
            }
            if (known(f.d[1]) && known(dims[1].d[1]) && f.d[1] != dims[1].d[1])
            {
                return op + ": all feature levels must have the same channel count";
            }
            if (known(f.d[0]) && known(rois.d[0]) && f.d[0] != rois.d[0])
            {
                return op + ": feature level " + std::to_string(l - 1) + " has batch " + std::to_string(f.d[0])
                    + " but rois has batch " + std::to_string(rois.d[0]);
            }
        }
        return "";
    }
    Dims const& x = dims[0];
    Dims const& rois = dims[1];
    Dims const& idx = dims[2];
    if (x.nbDims != 4)
    {
        return op + ": X must be [N, C, H, W]";
    }
    if (rois.nbDims != 2 || (known(rois.d[1]) && rois.d[1] != 4))
    {
        return op + ": rois must be [num_rois, 4]";
    }
    if (idx.nbDims != 1 || (known(idx.d[0]) && known(rois.d[0]) && idx.d[0] != rois.d[0]))
    {
        return op + ": batch_indices must be [num_rois], matching rois";
    }
    return "";
}

int32_t RoiAlignPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbOutputs != 1)
        {
            logError("configurePlugin: expected one output");
            return -1;
        }
        std::vector<Dims> dims;
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims.push_back(in[i].desc.dims);
        }
        std::string const msg = checkDims(dims.data(), nbInputs);
        if (!msg.empty())
        {
            logError(msg);
            return -1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("configurePlugin failed: ") + e.what());
        return -1;
    }
}

int32_t RoiAlignPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != 1 || nbInputs != expectedInputs())
    {
        logError("getOutputDataTypes: unexpected number of inputs or outputs");
        return -1;
    }
    // The output has the features' type: input 1 (P2) for the multi-level op, input 0 (X) for RoIAlign.
    DataType const t = inputTypes[mOp == RoiAlignOp::kMultiLevel ? 1 : 0];
    if (!isFloatType(t))
    {
        logError(std::string(opName(mOp)) + ": feature maps must be float32 or float16");
        return -1;
    }
    outputTypes[0] = t;
    return 0;
}

int32_t RoiAlignPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    try
    {
        if (inputs == nullptr || outputs == nullptr || nbOutputs != 1)
        {
            logError("getOutputShapes: expected one output");
            return -1;
        }
        std::vector<Dims> ranks(static_cast<size_t>(nbInputs));
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            ranks[i].nbDims = inputs[i].nbDims;
            for (int32_t d = 0; d < inputs[i].nbDims; ++d)
            {
                ranks[i].d[d] = inputs[i].d[d]->isConstant() ? inputs[i].d[d]->getConstantValue() : -1;
            }
        }
        std::string const msg = checkDims(ranks.data(), nbInputs);
        if (!msg.empty())
        {
            logError(msg);
            return -1;
        }
        DimsExprs& o = outputs[0];
        if (mOp == RoiAlignOp::kMultiLevel)
        {
            o.nbDims = 5;
            o.d[0] = inputs[0].d[0]; // B
            o.d[1] = inputs[0].d[1]; // R
            o.d[2] = inputs[1].d[1]; // C
            o.d[3] = exprBuilder.constant(mAttrs.outH);
            o.d[4] = exprBuilder.constant(mAttrs.outW);
        }
        else
        {
            o.nbDims = 4;
            o.d[0] = inputs[1].d[0]; // num_rois
            o.d[1] = inputs[0].d[1]; // C
            o.d[2] = exprBuilder.constant(mAttrs.outH);
            o.d[3] = exprBuilder.constant(mAttrs.outW);
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("getOutputShapes failed: ") + e.what());
        return -1;
    }
}

bool RoiAlignPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != expectedInputs() || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    int32_t const featuresPos = mOp == RoiAlignOp::kMultiLevel ? 1 : 0;
    int32_t const outputPos = nbInputs;
    if (pos == featuresPos)
    {
        return isFloatType(d.type);
    }
    if (pos == outputPos || (mOp == RoiAlignOp::kMultiLevel && pos > featuresPos))
    {
        // Other levels and the output share the first feature map's type (TensorRT asks in position order).
        return d.type == inOut[featuresPos].desc.type;
    }
    bool const isRois = mOp == RoiAlignOp::kMultiLevel ? pos == 0 : pos == 1;
    if (isRois)
    {
        return isFloatType(d.type);
    }
    return d.type == DataType::kINT32 || d.type == DataType::kINT64; // batch_indices of RoIAlign
}

int32_t RoiAlignPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbOutputs != 1)
        {
            return -1;
        }
        std::vector<Dims> dims;
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims.push_back(in[i].dims);
        }
        std::string const msg = checkDims(dims.data(), nbInputs);
        if (!msg.empty())
        {
            logError(msg);
            return -1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("onShapeChange failed: ") + e.what());
        return -1;
    }
}

namespace
{

template <typename T>
cudaError_t launchTyped(RoiAlignOp op, RoiAlignAttributes const& a, PluginTensorDesc const* inputDesc,
    void const* const* inputs, void* output, cudaStream_t stream)
{
    FeatureLevels<T> levels{};
    RoiSource src{};
    PoolParams p{};
    p.outH = a.outH;
    p.outW = a.outW;
    p.samplingRatio = a.samplingRatio;
    p.aligned = a.aligned != 0;
    p.mode = static_cast<PoolMode>(a.mode);
    p.canonicalScale = a.canonicalScale;
    p.canonicalLevel = a.canonicalLevel;
    levels.numLevels = static_cast<int32_t>(a.spatialScales.size());
    levels.firstLevel = levelNumberOfScale(a.spatialScales[0]);
    int32_t const firstFeature = op == RoiAlignOp::kMultiLevel ? 1 : 0;
    for (int32_t l = 0; l < levels.numLevels; ++l)
    {
        Dims const& d = inputDesc[firstFeature + l].dims;
        levels.data[l] = static_cast<T const*>(inputs[firstFeature + l]);
        levels.height[l] = static_cast<int32_t>(d.d[2]);
        levels.width[l] = static_cast<int32_t>(d.d[3]);
        levels.scale[l] = a.spatialScales[l];
    }
    Dims const& f0 = inputDesc[firstFeature].dims;
    p.batch = static_cast<int32_t>(f0.d[0]);
    p.channels = static_cast<int32_t>(f0.d[1]);
    if (op == RoiAlignOp::kMultiLevel)
    {
        Dims const& r = inputDesc[0].dims;
        src = RoiSource{inputs[0], inputDesc[0].type == DataType::kHALF, nullptr, false, r.d[1], r.d[0] * r.d[1]};
    }
    else
    {
        src = RoiSource{inputs[1], inputDesc[1].type == DataType::kHALF, inputs[2],
            inputDesc[2].type == DataType::kINT64, 0, inputDesc[1].dims.d[0]};
    }
    return launchRoiAlign<T>(levels, src, p, static_cast<T*>(output), stream);
}

} // namespace

int32_t RoiAlignPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        DataType const t = inputDesc[mOp == RoiAlignOp::kMultiLevel ? 1 : 0].type;
        cudaError_t const status = t == DataType::kHALF
            ? launchTyped<Half>(mOp, mAttrs, inputDesc, inputs, outputs[0], stream)
            : launchTyped<float>(mOp, mAttrs, inputDesc, inputs, outputs[0], stream);
        if (status != cudaSuccess)
        {
            logError(std::string(opName(mOp)) + " kernel launch failed: " + cudaGetErrorString(status));
            return -1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("enqueue failed: ") + e.what());
        return -1;
    }
}

IPluginV3* RoiAlignPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    // No per-context resources: a copy is all an execution context needs.
    return clone();
}

PluginFieldCollection const* RoiAlignPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        return mSerialFields.write(mOp, mAttrs);
    }
    catch (std::exception const& e)
    {
        logError(std::string("getFieldsToSerialize failed: ") + e.what());
        return nullptr;
    }
}

} // namespace mrd
