#include "roiAlignPluginFields.h"

#include "roiAlignChecks.h"

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
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

//! Number of a default's text ("7", "224"); the table's own text, so an error here is a bug in roiAlignOp.h.
double defaultNumber(char const* text)
{
    char* end = nullptr;
    double const v = std::strtod(text, &end);
    if (end == text || *end != '\0')
    {
        throw std::logic_error(std::string("roiAlignOp.h: default '") + text + "' is not a number");
    }
    return v;
}

// Codecs: how the value of a field maps onto its RoiAlignAttributes member. Each has the field kind it serves
// (checked against the table), the TensorRT type and capacity a creator lists, read() from a field, fromText()
// from the table's default, and write() into a field for serialization (string storage given by the writer).

struct IntCodec
{
    static constexpr FieldKind kKind = FieldKind::kInt;
    static constexpr PluginFieldType kType = PluginFieldType::kINT32;
    static constexpr int32_t kCapacity = 1;
    static void read(PluginField const& f, int32_t& m)
    {
        m = fieldInt(f);
    }
    static void fromText(char const* text, int32_t& m)
    {
        m = static_cast<int32_t>(defaultNumber(text));
    }
    static PluginField write(char const* name, int32_t const& m, std::string& /*storage*/)
    {
        return PluginField(name, &m, kType, 1);
    }
};

//! An int read as 0/1 ("aligned").
struct FlagCodec : IntCodec
{
    static void read(PluginField const& f, int32_t& m)
    {
        m = fieldInt(f) != 0 ? 1 : 0;
    }
};

struct FloatCodec
{
    static constexpr FieldKind kKind = FieldKind::kFloat;
    static constexpr PluginFieldType kType = PluginFieldType::kFLOAT32;
    static constexpr int32_t kCapacity = 1;
    static void read(PluginField const& f, float& m)
    {
        m = fieldFloat(f, 0);
    }
    static void fromText(char const* text, float& m)
    {
        m = static_cast<float>(defaultNumber(text));
    }
    static PluginField write(char const* name, float const& m, std::string& /*storage*/)
    {
        return PluginField(name, &m, kType, 1);
    }
};

//! One float per level ("spatial_scales").
struct ScalesCodec
{
    static constexpr FieldKind kKind = FieldKind::kFloats;
    static constexpr PluginFieldType kType = PluginFieldType::kFLOAT32;
    static constexpr int32_t kCapacity = kMaxLevels;
    static void read(PluginField const& f, std::vector<float>& m)
    {
        m.clear();
        for (int32_t k = 0; k < f.length; ++k)
        {
            m.push_back(fieldFloat(f, k));
        }
    }
    static void fromText(char const* text, std::vector<float>& m)
    {
        m = {static_cast<float>(defaultNumber(text))};
    }
    static PluginField write(char const* name, std::vector<float> const& m, std::string& /*storage*/)
    {
        return PluginField(name, m.data(), kType, static_cast<int32_t>(m.size()));
    }
};

//! The one scale of the single-level op ("spatial_scale"), kept as a list of one level.
struct ScaleCodec
{
    static constexpr FieldKind kKind = FieldKind::kFloat;
    static constexpr PluginFieldType kType = PluginFieldType::kFLOAT32;
    static constexpr int32_t kCapacity = 1;
    static void read(PluginField const& f, std::vector<float>& m)
    {
        m = {fieldFloat(f, 0)};
    }
    static void fromText(char const* text, std::vector<float>& m)
    {
        m = {static_cast<float>(defaultNumber(text))};
    }
    static PluginField write(char const* name, std::vector<float> const& m, std::string& /*storage*/)
    {
        return PluginField(name, m.data(), kType, 1);
    }
};

//! A string field with a fixed set of values, each standing for an int32 member value.
template <typename Values>
struct ChoiceCodec
{
    static constexpr FieldKind kKind = FieldKind::kString;
    static constexpr PluginFieldType kType = PluginFieldType::kCHAR;
    static constexpr int32_t kCapacity = Values::kCapacity;
    static int32_t fromString(std::string const& s, char const* name)
    {
        for (int32_t v = 0; v < 2; ++v)
        {
            if (s == Values::kText[v])
            {
                return v;
            }
        }
        throw std::invalid_argument(std::string("field '") + name + "' must be \"" + Values::kText[0] + "\" or \""
            + Values::kText[1] + "\", got \"" + s + "\"");
    }
    static void read(PluginField const& f, int32_t& m)
    {
        if (Values::kIntAllowed && f.type != PluginFieldType::kCHAR)
        {
            m = fieldInt(f); // 0 = avg, 1 = max, as some exporters write enums as ints
            return;
        }
        m = fromString(fieldString(f), f.name);
    }
    static void fromText(char const* text, int32_t& m)
    {
        m = fromString(text, "default");
    }
    static PluginField write(char const* name, int32_t const& m, std::string& storage)
    {
        storage = Values::kText[m != 0 ? 1 : 0];
        return PluginField(name, storage.c_str(), kType, static_cast<int32_t>(storage.size() + 1));
    }
};

//! "mode": PoolMode values 0 (avg) and 1 (max).
struct ModeValues
{
    static constexpr char const* kText[2] = {"avg", "max"};
    static constexpr int32_t kCapacity = 4;
    static constexpr bool kIntAllowed = true;
};
using ModeCodec = ChoiceCodec<ModeValues>;
static_assert(static_cast<int32_t>(PoolMode::kAvg) == 0 && static_cast<int32_t>(PoolMode::kMax) == 1,
    "ModeValues lists the PoolMode values in order");

//! "coordinate_transformation_mode": aligned 0 (output_half_pixel, legacy) and 1 (half_pixel).
struct TransformValues
{
    static constexpr char const* kText[2] = {"output_half_pixel", "half_pixel"};
    static constexpr int32_t kCapacity = 18;
    static constexpr bool kIntAllowed = false;
};
using TransformCodec = ChoiceCodec<TransformValues>;

#define MRD_CHECK_CODEC(NAME, KIND, OPS, DEFAULT, MEMBER, CODEC)                                                       \
    static_assert(CODEC::kKind == FieldKind::KIND, "the codec of field " NAME " does not fit its kind");
MRD_ROI_ALIGN_FIELDS(MRD_CHECK_CODEC)
#undef MRD_CHECK_CODEC

bool hasDefault(char const* text)
{
    return text != nullptr;
}

bool takes(int32_t ops, RoiAlignOp op)
{
    return (ops & opBit(op)) != 0;
}

} // namespace

RoiAlignAttributes defaultRoiAlignAttributes(RoiAlignOp op)
{
    RoiAlignAttributes a;
#define MRD_DEFAULT_ROW(NAME, KIND, OPS, DEFAULT, MEMBER, CODEC)                                                       \
    if (takes(OPS, op) && hasDefault(DEFAULT))                                                                         \
    {                                                                                                                  \
        CODEC::fromText(DEFAULT, a.MEMBER);                                                                            \
    }
    MRD_ROI_ALIGN_FIELDS(MRD_DEFAULT_ROW)
#undef MRD_DEFAULT_ROW
    return a;
}

RoiAlignAttributes parseRoiAlignFields(RoiAlignOp op, PluginFieldCollection const* fc)
{
    RoiAlignAttributes a = defaultRoiAlignAttributes(op);
    bool given[kNumOpFields] = {};
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (f.name == nullptr || (f.data == nullptr && f.length > 0))
        {
            continue;
        }
        // Unknown fields are ignored: the parser also passes attributes that are not ours (e.g. "domain").
        int32_t row = 0;
#define MRD_PARSE_ROW(NAME, KIND, OPS, DEFAULT, MEMBER, CODEC)                                                         \
    if (takes(OPS, op) && std::strcmp(f.name, NAME) == 0)                                                              \
    {                                                                                                                  \
        CODEC::read(f, a.MEMBER);                                                                                      \
        given[row] = true;                                                                                             \
    }                                                                                                                  \
    ++row;
        MRD_ROI_ALIGN_FIELDS(MRD_PARSE_ROW)
#undef MRD_PARSE_ROW
    }
    for (int32_t row = 0; row < kNumOpFields; ++row)
    {
        OpField const& field = kOpFields[row];
        if (takes(field.ops, op) && !hasDefault(field.defaultText) && !given[row])
        {
            throw std::invalid_argument(std::string("field '") + field.name + "' is required"
                + (field.kind == FieldKind::kFloats ? " (one float per feature level)" : ""));
        }
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
#define MRD_NAME_ROW(NAME, KIND, OPS, DEFAULT, MEMBER, CODEC)                                                          \
    if (takes(OPS, op))                                                                                                \
    {                                                                                                                  \
        names.emplace_back(NAME, nullptr, CODEC::kType, CODEC::kCapacity);                                             \
    }
    MRD_ROI_ALIGN_FIELDS(MRD_NAME_ROW)
#undef MRD_NAME_ROW
    return names;
}

PluginFieldCollection const* RoiAlignFieldWriter::write(RoiAlignOp op, RoiAlignAttributes const& attrs)
{
    mFields.clear();
    int32_t row = 0;
#define MRD_WRITE_ROW(NAME, KIND, OPS, DEFAULT, MEMBER, CODEC)                                                         \
    if (takes(OPS, op))                                                                                                \
    {                                                                                                                  \
        mFields.push_back(CODEC::write(NAME, attrs.MEMBER, mStrings[row]));                                            \
    }                                                                                                                  \
    ++row;
    MRD_ROI_ALIGN_FIELDS(MRD_WRITE_ROW)
#undef MRD_WRITE_ROW
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
    return &mCollection;
}

} // namespace mrd
