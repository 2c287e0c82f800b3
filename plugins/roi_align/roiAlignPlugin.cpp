#include "roiAlignPlugin.h"

#include "roiAlignArgs.h"
#include "roiAlignPluginLog.h"

#include <cstdint>
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

//! -1 marks a dimension unknown at build time; only known values are compared.
bool known(int64_t v)
{
    return v >= 0;
}

//! `RoIAlign` (ONNX RoiAlign-16 layout): X [N, C, H, W], rois [R, 4], batch_indices [R] -> [R, C, oh, ow].
class RoiAlignPlugin final : public RoiAlignPluginBase
{
public:
    RoiAlignPlugin(RoiAlignAttributes attrs, std::string nameSpace)
        : RoiAlignPluginBase(RoiAlignOp::kSingleLevel, std::move(attrs), std::move(nameSpace))
    {
    }

private:
    int32_t numInputs() const override
    {
        return 3;
    }
    int32_t firstFeatureInput() const override
    {
        return 0;
    }
    Input inputKind(int32_t pos) const override
    {
        return pos == 0 ? Input::kFeatures : pos == 1 ? Input::kRois : Input::kIndices;
    }
    std::string checkOpDims(Dims const* dims) const override
    {
        Dims const& x = dims[0];
        Dims const& rois = dims[1];
        Dims const& idx = dims[2];
        if (x.nbDims != 4)
        {
            return name() + ": X must be [N, C, H, W]";
        }
        if (rois.nbDims != 2 || (known(rois.d[1]) && rois.d[1] != 4))
        {
            return name() + ": rois must be [num_rois, 4]";
        }
        if (idx.nbDims != 1 || (known(idx.d[0]) && known(rois.d[0]) && idx.d[0] != rois.d[0]))
        {
            return name() + ": batch_indices must be [num_rois], matching rois";
        }
        return "";
    }
    void outputShape(DimsExprs const* inputs, DimsExprs& o) const override
    {
        o.nbDims = 4;
        o.d[0] = inputs[1].d[0]; // num_rois
        o.d[1] = inputs[0].d[1]; // C
    }
    void setRoiArgs(MrdRoiAlignArgs& a, PluginTensorDesc const* inputDesc, void const* const* inputs) const override
    {
        a.rois = inputs[1];
        a.rois_dtype = inputDesc[1].type == DataType::kHALF ? MRD_DTYPE_FLOAT16 : MRD_DTYPE_FLOAT32;
        a.batch_indices = inputs[2];
        a.index_type = inputDesc[2].type == DataType::kINT64 ? MRD_INDEX_INT64 : MRD_INDEX_INT32;
        a.num_rois = inputDesc[1].dims.d[0];
    }
    RoiAlignPluginBase* copy() const override
    {
        return new RoiAlignPlugin(attributes(), getPluginNamespace());
    }
};

//! `MultiLevelRoIAlign`: rois [B, R, 4], P2..Pn [B, C, Hl, Wl] -> [B, R, C, oh, ow].
class MultiLevelRoiAlignPlugin final : public RoiAlignPluginBase
{
public:
    MultiLevelRoiAlignPlugin(RoiAlignAttributes attrs, std::string nameSpace)
        : RoiAlignPluginBase(RoiAlignOp::kMultiLevel, std::move(attrs), std::move(nameSpace))
    {
    }

private:
    int32_t numInputs() const override
    {
        return 1 + static_cast<int32_t>(attributes().spatialScales.size());
    }
    int32_t firstFeatureInput() const override
    {
        return 1;
    }
    Input inputKind(int32_t pos) const override
    {
        return pos == 0 ? Input::kRois : Input::kFeatures;
    }
    std::string checkOpDims(Dims const* dims) const override
    {
        Dims const& rois = dims[0];
        if (rois.nbDims != 3 || (known(rois.d[2]) && rois.d[2] != 4))
        {
            return name() + ": rois must be [B, R, 4]";
        }
        for (int32_t l = 1; l < numInputs(); ++l)
        {
            Dims const& f = dims[l];
            if (f.nbDims != 4)
            {
                return name() + ": feature level " + std::to_string(l - 1) + " must be [B, C, H, W], got rank "
                    + std::to_string(f.nbDims);
            }
            if (known(f.d[1]) && known(dims[1].d[1]) && f.d[1] != dims[1].d[1])
            {
                return name() + ": all feature levels must have the same channel count";
            }
            if (known(f.d[0]) && known(rois.d[0]) && f.d[0] != rois.d[0])
            {
                return name() + ": feature level " + std::to_string(l - 1) + " has batch " + std::to_string(f.d[0])
                    + " but rois has batch " + std::to_string(rois.d[0]);
            }
        }
        return "";
    }
    void outputShape(DimsExprs const* inputs, DimsExprs& o) const override
    {
        o.nbDims = 5;
        o.d[0] = inputs[0].d[0]; // B
        o.d[1] = inputs[0].d[1]; // R
        o.d[2] = inputs[1].d[1]; // C
    }
    void setRoiArgs(MrdRoiAlignArgs& a, PluginTensorDesc const* inputDesc, void const* const* inputs) const override
    {
        Dims const& r = inputDesc[0].dims;
        a.rois = inputs[0];
        a.rois_dtype = inputDesc[0].type == DataType::kHALF ? MRD_DTYPE_FLOAT16 : MRD_DTYPE_FLOAT32;
        a.batch_indices = nullptr;
        a.index_type = MRD_INDEX_NONE;
        a.rois_per_image = r.d[1];
        a.num_rois = r.d[0] * r.d[1];
    }
    RoiAlignPluginBase* copy() const override
    {
        return new MultiLevelRoiAlignPlugin(attributes(), getPluginNamespace());
    }
};

} // namespace

std::unique_ptr<RoiAlignPluginBase> makeRoiAlignPlugin(RoiAlignOp op, RoiAlignAttributes attrs, std::string nameSpace)
{
    if (op == RoiAlignOp::kMultiLevel)
    {
        return std::make_unique<MultiLevelRoiAlignPlugin>(std::move(attrs), std::move(nameSpace));
    }
    return std::make_unique<RoiAlignPlugin>(std::move(attrs), std::move(nameSpace));
}

RoiAlignPluginBase::RoiAlignPluginBase(RoiAlignOp op, RoiAlignAttributes attrs, std::string nameSpace)
    : mOp(op)
    , mAttrs(std::move(attrs))
    , mNamespace(std::move(nameSpace))
{
}

std::string RoiAlignPluginBase::name() const
{
    return opName(mOp);
}

IPluginCapability* RoiAlignPluginBase::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* RoiAlignPluginBase::clone() noexcept
{
    return guarded<IPluginV3*>("clone", nullptr, [&] { return copy(); });
}

char const* RoiAlignPluginBase::getPluginName() const noexcept
{
    return opName(mOp);
}

char const* RoiAlignPluginBase::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* RoiAlignPluginBase::getPluginNamespace() const noexcept
{
    return mNamespace.c_str();
}

int32_t RoiAlignPluginBase::getNbOutputs() const noexcept
{
    return 1;
}

std::string RoiAlignPluginBase::checkDims(Dims const* dims, int32_t nbInputs) const
{
    if (nbInputs != numInputs())
    {
        return name() + " expects " + std::to_string(numInputs()) + " inputs, got " + std::to_string(nbInputs);
    }
    return checkOpDims(dims);
}

int32_t RoiAlignPluginBase::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return guarded("configurePlugin", -1, [&] {
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
    });
}

int32_t RoiAlignPluginBase::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    return guarded("getOutputDataTypes", -1, [&] {
        if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != 1 || nbInputs != numInputs())
        {
            logError("getOutputDataTypes: unexpected number of inputs or outputs");
            return -1;
        }
        DataType const t = inputTypes[firstFeatureInput()]; // the output has the features' type
        if (!isFloatType(t))
        {
            logError(name() + ": feature maps must be float32 or float16");
            return -1;
        }
        outputTypes[0] = t;
        return 0;
    });
}

int32_t RoiAlignPluginBase::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    return guarded("getOutputShapes", -1, [&] {
        if (inputs == nullptr || outputs == nullptr || nbOutputs != 1)
        {
            logError("getOutputShapes: expected one output");
            return -1;
        }
        std::vector<Dims> dims(static_cast<size_t>(nbInputs));
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims[i].nbDims = inputs[i].nbDims;
            for (int32_t d = 0; d < inputs[i].nbDims; ++d)
            {
                dims[i].d[d] = inputs[i].d[d]->isConstant() ? inputs[i].d[d]->getConstantValue() : -1;
            }
        }
        std::string const msg = checkDims(dims.data(), nbInputs);
        if (!msg.empty())
        {
            logError(msg);
            return -1;
        }
        DimsExprs& o = outputs[0];
        outputShape(inputs, o); // every dimension but the last two
        o.d[o.nbDims - 2] = exprBuilder.constant(mAttrs.outH);
        o.d[o.nbDims - 1] = exprBuilder.constant(mAttrs.outW);
        return 0;
    });
}

bool RoiAlignPluginBase::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return guarded("supportsFormatCombination", false, [&] {
        if (inOut == nullptr || nbInputs != numInputs() || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs)
        {
            return false;
        }
        PluginTensorDesc const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR)
        {
            return false;
        }
        int32_t const features = firstFeatureInput();
        if (pos == features)
        {
            return isFloatType(d.type);
        }
        if (pos == nbInputs || inputKind(pos) == Input::kFeatures)
        {
            // Other levels and the output share the first feature map's type (TensorRT asks in position order).
            return d.type == inOut[features].desc.type;
        }
        if (inputKind(pos) == Input::kRois)
        {
            return isFloatType(d.type);
        }
        return d.type == DataType::kINT32 || d.type == DataType::kINT64;
    });
}

int32_t RoiAlignPluginBase::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return guarded("onShapeChange", -1, [&] {
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
    });
}

MrdRoiAlignArgs RoiAlignPluginBase::callArgs(
    PluginTensorDesc const* inputDesc, void const* const* inputs, void* output, cudaStream_t stream) const
{
    MrdRoiAlignArgs a{};
    int32_t const first = firstFeatureInput();
    a.dtype = inputDesc[first].type == DataType::kHALF ? MRD_DTYPE_FLOAT16 : MRD_DTYPE_FLOAT32;
    a.num_levels = static_cast<int32_t>(mAttrs.spatialScales.size());
    for (int32_t l = 0; l < a.num_levels && l < MRD_MAX_LEVELS; ++l)
    {
        Dims const& d = inputDesc[first + l].dims;
        a.features[l] = inputs[first + l];
        a.heights[l] = static_cast<int32_t>(d.d[2]);
        a.widths[l] = static_cast<int32_t>(d.d[3]);
        a.spatial_scales[l] = mAttrs.spatialScales[l];
    }
    a.batch = static_cast<int32_t>(inputDesc[first].dims.d[0]);
    a.channels = static_cast<int32_t>(inputDesc[first].dims.d[1]);
    setRoiArgs(a, inputDesc, inputs);
    a.out_h = mAttrs.outH;
    a.out_w = mAttrs.outW;
    a.sampling_ratio = mAttrs.samplingRatio;
    a.aligned = mAttrs.aligned;
    a.mode = mAttrs.mode;
    a.canonical_scale = mAttrs.canonicalScale;
    a.canonical_level = mAttrs.canonicalLevel;
    a.implementation = MRD_IMPLEMENTATION_KERNEL;
    a.out = output;
    a.stream = stream;
    return a;
}

int32_t RoiAlignPluginBase::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    return guarded("enqueue", -1, [&] {
        MrdRoiAlignArgs const a = callArgs(inputDesc, inputs, outputs[0], stream);
        std::string const msg = checkArgs(a);
        if (!msg.empty())
        {
            logError(name() + ": " + msg);
            return -1;
        }
        int32_t const status = launchRoiAlignCuda(a);
        if (status != 0)
        {
            logError(name() + " kernel launch failed: " + cudaGetErrorString(static_cast<cudaError_t>(status)));
            return -1;
        }
        return 0;
    });
}

IPluginV3* RoiAlignPluginBase::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    // No per-context resources: a copy is all an execution context needs.
    return clone();
}

PluginFieldCollection const* RoiAlignPluginBase::getFieldsToSerialize() noexcept
{
    return guarded<PluginFieldCollection const*>(
        "getFieldsToSerialize", nullptr, [&] { return mSerialFields.write(mOp, mAttrs); });
}

} // namespace mrd
