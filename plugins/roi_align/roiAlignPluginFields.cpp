#include "roiAlignPluginFields.h"

#include "roiAlignChecks.h"

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>

using namespace nvinfer1;

namespace mrd
{
namespace
{

std::string fieldString(PluginField const& f)
{
    if (f.type != PluginFieldType::kCHAR)
    {
        throw std::invalid_argument(std::string("field '") + f.name + "' must be a string (kCHAR)");
    }
    // The ONNX parser passes the bytes without a guaranteed terminator; stop at the first NUL if there is one.
    char const* p = static_cast<char const*>(f.data);
    size_t n = 0;
    while (n < static_cast<size_t>(f.length) && p[n] != '\0')
    {
        ++n;
    }
    return std::string(p, n);
}

double fieldNumber(PluginField const& f, int32_t i)
{
    switch (f.type)
    {
    case PluginFieldType::kINT32: return static_cast<int32_t const*>(f.data)[i];
    case PluginFieldType::kINT64: return static_cast<double>(static_cast<int64_t const*>(f.data)[i]);
    case PluginFieldType::kINT16: return static_cast<int16_t const*>(f.data)[i];
    case PluginFieldType::kINT8: return static_cast<int8_t const*>(f.data)[i];
    case PluginFieldType::kFLOAT32: return static_cast<float const*>(f.data)[i];
    case PluginFieldType::kFLOAT64: return static_cast<double const*>(f.data)[i];
    case PluginFieldType::kFLOAT16: return halfToFloat(static_cast<Half const*>(f.data)[i]);
    default: throw std::invalid_argument(std::string("field '") + f.name + "' must be numeric");
    }
}

int32_t fieldInt(PluginField const& f)
{
    if (f.length < 1)
    {
        throw std::invalid_argument(std::string("field '") + f.name + "' is empty");
    }
    double const v = fieldNumber(f, 0);
    // Checked before the cast: a value outside int32 (or NaN, or a fraction from a float field) would be
    // undefined behaviour or silently truncated, e.g. an int64 sampling_ratio of 2^32 + 2 becoming 2.
    if (!(v >= static_cast<double>(INT32_MIN) && v <= static_cast<double>(INT32_MAX)) || v != std::floor(v))
    {
        throw std::invalid_argument(
            std::string("field '") + f.name + "' must be a 32-bit integer, got " + std::to_string(v));
    }
    return static_cast<int32_t>(v);
}

//! Element ``i`` of a numeric field as fp32; a value fp32 cannot hold (beyond +-FLT_MAX) is refused instead of
//! becoming infinity (converting an out-of-range double to float is undefined behaviour). NaN and infinity pass
//! through to checkAttributes(), which names the attribute.
float fieldFloat(PluginField const& f, int32_t i)
{
    if (i >= f.length)
    {
        throw std::invalid_argument(std::string("field '") + f.name + "' has no element " + std::to_string(i));
    }
    double const v = fieldNumber(f, i);
    if (std::isfinite(v) && std::fabs(v) > static_cast<double>(FLT_MAX))
    {
        throw std::invalid_argument(
            std::string("field '") + f.name + "' holds " + std::to_string(v) + ", beyond the float32 range");
    }
    return static_cast<float>(v);
}

int32_t parseMode(PluginField const& f)
{
    if (f.type != PluginFieldType::kCHAR)
    {
        return fieldInt(f); // 0 = avg, 1 = max, as some exporters write enums as ints
    }
    std::string const s = fieldString(f);
    if (s == "avg")
    {
        return static_cast<int32_t>(PoolMode::kAvg);
    }
    if (s == "max")
    {
        return static_cast<int32_t>(PoolMode::kMax);
    }
    throw std::invalid_argument("field 'mode' must be \"avg\" or \"max\", got \"" + s + "\"");
}

} // namespace

RoiAlignAttributes parseRoiAlignFields(RoiAlignOp op, PluginFieldCollection const* fc)
{
    RoiAlignAttributes a;
    if (op == RoiAlignOp::kSingleLevel)
    {
        a.aligned = 1; // ONNX RoiAlign-16 default coordinate_transformation_mode is half_pixel
        a.outH = a.outW = 1;
    }
    bool haveScales = false;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (f.name == nullptr || (f.data == nullptr && f.length > 0))
        {
            continue;
        }
        std::string const name = f.name;
        if (name == "output_height")
        {
            a.outH = fieldInt(f);
        }
        else if (name == "output_width")
        {
            a.outW = fieldInt(f);
        }
        else if (name == "sampling_ratio")
        {
            a.samplingRatio = fieldInt(f);
        }
        else if (name == "mode")
        {
            a.mode = parseMode(f);
        }
        else if (op == RoiAlignOp::kMultiLevel && name == "aligned")
        {
            a.aligned = fieldInt(f) != 0 ? 1 : 0;
        }
        else if (op == RoiAlignOp::kMultiLevel && name == "spatial_scales")
        {
            a.spatialScales.clear();
            for (int32_t k = 0; k < f.length; ++k)
            {
                a.spatialScales.push_back(fieldFloat(f, k));
            }
            haveScales = true;
        }
        else if (op == RoiAlignOp::kMultiLevel && name == "canonical_scale")
        {
            a.canonicalScale = fieldFloat(f, 0);
        }
        else if (op == RoiAlignOp::kMultiLevel && name == "canonical_level")
        {
            a.canonicalLevel = fieldInt(f);
        }
        else if (op == RoiAlignOp::kSingleLevel && name == "spatial_scale")
        {
            a.spatialScales = {fieldFloat(f, 0)};
        }
        else if (op == RoiAlignOp::kSingleLevel && name == "coordinate_transformation_mode")
        {
            std::string const s = fieldString(f);
            if (s != "half_pixel" && s != "output_half_pixel")
            {
                throw std::invalid_argument(
                    "field 'coordinate_transformation_mode' must be half_pixel or output_half_pixel, got " + s);
            }
            a.aligned = s == "half_pixel" ? 1 : 0;
        }
        // Unknown fields are ignored: the parser also passes attributes that are not ours (e.g. "domain").
    }
    if (op == RoiAlignOp::kMultiLevel && !haveScales)
    {
        throw std::invalid_argument("field 'spatial_scales' (one float per feature level) is required");
    }
    std::string const msg = checkAttributes(a.outH, a.outW, a.samplingRatio, a.spatialScales.data(),
        static_cast<int32_t>(a.spatialScales.size()), a.canonicalScale, a.mode);
    if (!msg.empty())
    {
        throw std::invalid_argument(msg);
    }
    return a;
}

std::vector<PluginField> roiAlignFieldNames(RoiAlignOp op)
{
    std::vector<PluginField> names;
    names.emplace_back("output_height", nullptr, PluginFieldType::kINT32, 1);
    names.emplace_back("output_width", nullptr, PluginFieldType::kINT32, 1);
    names.emplace_back("sampling_ratio", nullptr, PluginFieldType::kINT32, 1);
    names.emplace_back("mode", nullptr, PluginFieldType::kCHAR, 4);
    if (op == RoiAlignOp::kMultiLevel)
    {
        names.emplace_back("spatial_scales", nullptr, PluginFieldType::kFLOAT32, kMaxLevels);
        names.emplace_back("aligned", nullptr, PluginFieldType::kINT32, 1);
        names.emplace_back("canonical_scale", nullptr, PluginFieldType::kFLOAT32, 1);
        names.emplace_back("canonical_level", nullptr, PluginFieldType::kINT32, 1);
    }
    else
    {
        names.emplace_back("spatial_scale", nullptr, PluginFieldType::kFLOAT32, 1);
        names.emplace_back("coordinate_transformation_mode", nullptr, PluginFieldType::kCHAR, 18);
    }
    return names;
}

PluginFieldCollection const* RoiAlignFieldWriter::write(RoiAlignOp op, RoiAlignAttributes const& attrs)
{
    mFields.clear();
    mModeString = attrs.mode == static_cast<int32_t>(PoolMode::kMax) ? "max" : "avg";
    mFields.emplace_back("output_height", &attrs.outH, PluginFieldType::kINT32, 1);
    mFields.emplace_back("output_width", &attrs.outW, PluginFieldType::kINT32, 1);
    mFields.emplace_back("sampling_ratio", &attrs.samplingRatio, PluginFieldType::kINT32, 1);
    mFields.emplace_back(
        "mode", mModeString.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(mModeString.size() + 1));
    if (op == RoiAlignOp::kMultiLevel)
    {
        mFields.emplace_back("spatial_scales", attrs.spatialScales.data(), PluginFieldType::kFLOAT32,
            static_cast<int32_t>(attrs.spatialScales.size()));
        mFields.emplace_back("aligned", &attrs.aligned, PluginFieldType::kINT32, 1);
        mFields.emplace_back("canonical_scale", &attrs.canonicalScale, PluginFieldType::kFLOAT32, 1);
        mFields.emplace_back("canonical_level", &attrs.canonicalLevel, PluginFieldType::kINT32, 1);
    }
    else
    {
        mTransformString = attrs.aligned != 0 ? "half_pixel" : "output_half_pixel";
        mFields.emplace_back("spatial_scale", attrs.spatialScales.data(), PluginFieldType::kFLOAT32, 1);
        mFields.emplace_back("coordinate_transformation_mode", mTransformString.c_str(), PluginFieldType::kCHAR,
            static_cast<int32_t>(mTransformString.size() + 1));
    }
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
    return &mCollection;
}

} // namespace mrd
