// Drives the RoIAlign plugin library's TensorRT entry points on the host, without a GPU or libnvinfer:
// getCreators/setLoggerFinder, field parsing, error reporting, shape/type negotiation and serialization.
// Built and run by tests/plugins/test_plugin_build.py against TensorRT headers from $TENSORRT_INCLUDE_DIR.
#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

int gFailures = 0;

void check(bool ok, char const* what)
{
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    gFailures += ok ? 0 : 1;
}

class CapturingLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kERROR)
        {
            last = msg;
        }
    }
    std::string last;
};

class Finder : public ILoggerFinder
{
public:
    ILogger* findLogger() override
    {
        return &logger;
    }
    CapturingLogger logger;
};

DynamicPluginTensorDesc desc(DataType type, std::vector<int64_t> const& dims)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = TensorFormat::kLINEAR;
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        d.desc.dims.d[i] = dims[i];
    }
    d.min = d.opt = d.max = d.desc.dims;
    return d;
}

//! True when the plugin accepts every position of ``io`` (inputs then one output).
bool supportsAll(IPluginV3OneBuild* build, std::vector<DynamicPluginTensorDesc> const& io, int32_t nbInputs)
{
    for (int32_t pos = 0; pos < static_cast<int32_t>(io.size()); ++pos)
    {
        if (!build->supportsFormatCombination(pos, io.data(), nbInputs, 1))
        {
            return false;
        }
    }
    return true;
}

float fieldFloat(PluginFieldCollection const* fc, char const* name, int i = 0)
{
    for (int32_t k = 0; k < fc->nbFields; ++k)
    {
        if (std::strcmp(fc->fields[k].name, name) == 0)
        {
            void const* data = fc->fields[k].data;
            return fc->fields[k].type == PluginFieldType::kFLOAT32
                ? static_cast<float const*>(data)[i]
                : static_cast<float>(static_cast<int32_t const*>(data)[i]);
        }
    }
    return -12345.0f;
}

std::string fieldString(PluginFieldCollection const* fc, char const* name)
{
    for (int32_t k = 0; k < fc->nbFields; ++k)
    {
        if (std::strcmp(fc->fields[k].name, name) == 0)
        {
            return std::string(static_cast<char const*>(fc->fields[k].data));
        }
    }
    return "<missing>";
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::fprintf(stderr, "usage: %s libmaskrcnn_roi_align.so\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
        return 2;
    }
    using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    check(getCreators != nullptr && setLoggerFinder != nullptr, "getCreators and setLoggerFinder are exported");
    if (getCreators == nullptr || setLoggerFinder == nullptr)
    {
        return 1;
    }
    Finder finder;
    setLoggerFinder(&finder);

    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    check(n == 2, "two creators");
    IPluginCreatorV3One* single = nullptr;
    IPluginCreatorV3One* multi = nullptr;
    for (int32_t i = 0; i < n; ++i)
    {
        check(std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0, "creator is V3One");
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        check(std::strcmp(c->getPluginVersion(), "1") == 0, "plugin version 1");
        (std::strcmp(c->getPluginName(), "MultiLevelRoIAlign") == 0 ? multi : single) = c;
    }
    check(multi != nullptr && single != nullptr && std::strcmp(single->getPluginName(), "RoIAlign") == 0,
        "creators named RoIAlign and MultiLevelRoIAlign");
    if (multi == nullptr || single == nullptr)
    {
        return 1;
    }
    check(multi->getFieldNames()->nbFields == 8, "multi-level creator lists 8 fields");

    // --- MultiLevelRoIAlign from ONNX-parser-like fields (mode as kCHAR without a terminator)
    int32_t outH = 7, outW = 7, sr = 2, aligned = 0, level = 4;
    float scales[4] = {0.25f, 0.125f, 0.0625f, 0.03125f};
    float canonical = 224.0f;
    char const modeMax[3] = {'m', 'a', 'x'};
    std::vector<PluginField> fields{
        {"output_height", &outH, PluginFieldType::kINT32, 1},
        {"output_width", &outW, PluginFieldType::kINT32, 1},
        {"sampling_ratio", &sr, PluginFieldType::kINT32, 1},
        {"spatial_scales", scales, PluginFieldType::kFLOAT32, 4},
        {"aligned", &aligned, PluginFieldType::kINT32, 1},
        {"mode", modeMax, PluginFieldType::kCHAR, 3},
        {"canonical_scale", &canonical, PluginFieldType::kFLOAT32, 1},
        {"canonical_level", &level, PluginFieldType::kINT32, 1},
    };
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    IPluginV3* plugin = multi->createPlugin("pooler", &fc, TensorRTPhase::kBUILD);
    check(plugin != nullptr, "createPlugin(MultiLevelRoIAlign) succeeds");
    if (plugin == nullptr)
    {
        return 1;
    }
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core != nullptr && build != nullptr && runtime != nullptr, "core, build and runtime capabilities");
    check(std::strcmp(core->getPluginName(), "MultiLevelRoIAlign") == 0, "core name");
    check(build->getNbOutputs() == 1, "one output");

    DataType inTypes[5] = {DataType::kFLOAT, DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kHALF};
    DataType outType = DataType::kFLOAT;
    check(build->getOutputDataTypes(&outType, 1, inTypes, 5) == 0 && outType == DataType::kHALF,
        "output type follows the feature maps (fp16)");

    std::vector<DynamicPluginTensorDesc> io{desc(DataType::kFLOAT, {2, 1000, 4}),
        desc(DataType::kHALF, {2, 256, 200, 304}), desc(DataType::kHALF, {2, 256, 100, 152}),
        desc(DataType::kHALF, {2, 256, 50, 76}), desc(DataType::kHALF, {2, 256, 25, 38}),
        desc(DataType::kHALF, {2, 1000, 256, 7, 7})};
    check(supportsAll(build, io, 5), "fp32 rois + fp16 levels + fp16 output supported");
    io[3].desc.type = DataType::kFLOAT;
    check(!build->supportsFormatCombination(3, io.data(), 5, 1), "mixed level types refused");
    io[3].desc.type = DataType::kHALF;
    io[0].desc.type = DataType::kINT8;
    check(!build->supportsFormatCombination(0, io.data(), 5, 1), "int8 rois refused");
    io[0].desc.type = DataType::kFLOAT;
    io[0].desc.format = TensorFormat::kHWC;
    check(!build->supportsFormatCombination(0, io.data(), 5, 1), "non-linear format refused");
    io[0].desc.format = TensorFormat::kLINEAR;

    check(build->configurePlugin(io.data(), 5, io.data() + 5, 1) == 0, "configurePlugin accepts consistent shapes");
    io[2] = desc(DataType::kHALF, {2, 128, 100, 152});
    finder.logger.last.clear();
    check(build->configurePlugin(io.data(), 5, io.data() + 5, 1) != 0, "configurePlugin refuses channel mismatch");
    check(finder.logger.last.find("channel") != std::string::npos, "...and says why through the TensorRT logger");
    io[2] = desc(DataType::kHALF, {-1, 256, -1, -1});
    check(build->configurePlugin(io.data(), 5, io.data() + 5, 1) == 0, "dynamic (-1) dims accepted");
    check(build->configurePlugin(io.data(), 4, io.data() + 4, 1) != 0, "wrong input count refused");

    // Serialization round trip through the creator, as the runtime does when deserializing an engine.
    PluginFieldCollection const* ser = runtime->getFieldsToSerialize();
    check(ser != nullptr && fieldString(ser, "mode") == "max", "serialized mode = max");
    check(fieldFloat(ser, "spatial_scales", 3) == 0.03125f && fieldFloat(ser, "sampling_ratio") == 2.0f,
        "serialized scales and sampling ratio");
    IPluginV3* restored = multi->createPlugin("pooler", ser, TensorRTPhase::kRUNTIME);
    check(restored != nullptr, "plugin re-created from its serialized fields");
    if (restored != nullptr)
    {
        auto* rt = static_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginFieldCollection const* ser2 = rt->getFieldsToSerialize();
        check(fieldFloat(ser2, "canonical_scale") == 224.0f && fieldFloat(ser2, "output_width") == 7.0f
                && fieldString(ser2, "mode") == "max",
            "round trip keeps the fields");
        delete restored;
    }
    IPluginV3* cloned = plugin->clone();
    check(cloned != nullptr, "clone");
    delete cloned;
    delete plugin;

    // --- bad fields: nullptr and a message, never an exception across the boundary
    char const modeBad[] = "median";
    fields[5] = PluginField{"mode", modeBad, PluginFieldType::kCHAR, 6};
    finder.logger.last.clear();
    check(multi->createPlugin("bad", &fc, TensorRTPhase::kBUILD) == nullptr, "mode=median refused");
    check(finder.logger.last.find("mode") != std::string::npos, "...with a message naming the field");
    fields[5] = PluginField{"mode", modeMax, PluginFieldType::kCHAR, 3};
    fields[3] = PluginField{"other", scales, PluginFieldType::kFLOAT32, 4};
    check(multi->createPlugin("bad", &fc, TensorRTPhase::kBUILD) == nullptr, "missing spatial_scales refused");
    check(finder.logger.last.find("spatial_scales") != std::string::npos, "...with a message naming the field");
    float badScales[4] = {0.25f, 0.125f, 0.1f, 0.03125f};
    fields[3] = PluginField{"spatial_scales", badScales, PluginFieldType::kFLOAT32, 4};
    check(multi->createPlugin("bad", &fc, TensorRTPhase::kBUILD) == nullptr, "non power-of-two scales refused");

    // --- single-level RoIAlign (ONNX RoiAlign-16 fields)
    float scale = 0.5f;
    char const transform[] = "output_half_pixel";
    std::vector<PluginField> sfields{{"output_height", &outH, PluginFieldType::kINT32, 1},
        {"output_width", &outW, PluginFieldType::kINT32, 1}, {"sampling_ratio", &sr, PluginFieldType::kINT32, 1},
        {"spatial_scale", &scale, PluginFieldType::kFLOAT32, 1},
        {"coordinate_transformation_mode", transform, PluginFieldType::kCHAR, 18}};
    PluginFieldCollection sfc{static_cast<int32_t>(sfields.size()), sfields.data()};
    IPluginV3* sp = single->createPlugin("roialign", &sfc, TensorRTPhase::kBUILD);
    check(sp != nullptr, "createPlugin(RoIAlign) succeeds");
    if (sp != nullptr)
    {
        auto* sb = static_cast<IPluginV3OneBuild*>(sp->getCapabilityInterface(PluginCapabilityType::kBUILD));
        auto* sr2 = static_cast<IPluginV3OneRuntime*>(sp->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        std::vector<DynamicPluginTensorDesc> sio{desc(DataType::kFLOAT, {2, 64, 50, 50}),
            desc(DataType::kFLOAT, {30, 4}), desc(DataType::kINT64, {30}), desc(DataType::kFLOAT, {30, 64, 7, 7})};
        check(supportsAll(sb, sio, 3), "RoIAlign: fp32 X, fp32 rois, int64 indices supported");
        sio[2].desc.type = DataType::kFLOAT;
        check(!sb->supportsFormatCombination(2, sio.data(), 3, 1), "RoIAlign: float batch indices refused");
        sio[2] = desc(DataType::kINT32, {29});
        check(sb->configurePlugin(sio.data(), 3, sio.data() + 3, 1) != 0, "RoIAlign: index count mismatch refused");
        PluginFieldCollection const* sser = sr2->getFieldsToSerialize();
        check(fieldString(sser, "coordinate_transformation_mode") == "output_half_pixel"
                && fieldString(sser, "mode") == "avg" && fieldFloat(sser, "spatial_scale") == 0.5f,
            "RoIAlign serialized fields");
        delete sp;
    }
    // --- defaults: a node without the optional fields gets the op's documented defaults (plugins/README.md)
    std::vector<PluginField> noFields;
    PluginFieldCollection emptyFc{0, noFields.data()};
    IPluginV3* dp = single->createPlugin("defaults", &emptyFc, TensorRTPhase::kBUILD);
    check(dp != nullptr, "RoIAlign without fields (all have defaults)");
    if (dp != nullptr)
    {
        auto* rt = static_cast<IPluginV3OneRuntime*>(dp->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginFieldCollection const* d = rt->getFieldsToSerialize();
        check(d->nbFields == 6 && fieldFloat(d, "output_height") == 1.0f && fieldFloat(d, "output_width") == 1.0f
                && fieldFloat(d, "sampling_ratio") == 0.0f && fieldFloat(d, "spatial_scale") == 1.0f
                && fieldString(d, "mode") == "avg" && fieldString(d, "coordinate_transformation_mode") == "half_pixel",
            "RoIAlign defaults: 1x1 output, adaptive sampling, scale 1, avg, half_pixel");
        delete dp;
    }
    std::vector<PluginField> onlyScales{{"spatial_scales", scales, PluginFieldType::kFLOAT32, 4}};
    PluginFieldCollection scalesFc{1, onlyScales.data()};
    IPluginV3* mp = multi->createPlugin("defaults", &scalesFc, TensorRTPhase::kBUILD);
    check(mp != nullptr, "MultiLevelRoIAlign with spatial_scales only");
    if (mp != nullptr)
    {
        auto* rt = static_cast<IPluginV3OneRuntime*>(mp->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginFieldCollection const* d = rt->getFieldsToSerialize();
        check(d->nbFields == 8 && fieldFloat(d, "output_height") == 7.0f && fieldFloat(d, "output_width") == 7.0f
                && fieldFloat(d, "sampling_ratio") == 0.0f && fieldFloat(d, "aligned") == 0.0f
                && fieldString(d, "mode") == "avg" && fieldFloat(d, "canonical_scale") == 224.0f
                && fieldFloat(d, "canonical_level") == 4.0f && fieldFloat(d, "spatial_scales", 3) == 0.03125f,
            "MultiLevelRoIAlign defaults: 7x7, adaptive, legacy, avg, 224, level 4");
        delete mp;
    }

    // --- the creators' field lists are the C ABI's op table (mrd_op_field), row by row for each op
    using OpFieldCount = int32_t (*)();
    using OpField = int32_t (*)(int32_t, char const**, int32_t*, int32_t*, char const**);
    auto fieldCount = reinterpret_cast<OpFieldCount>(dlsym(lib, "mrd_op_field_count"));
    auto opField = reinterpret_cast<OpField>(dlsym(lib, "mrd_op_field"));
    check(fieldCount != nullptr && opField != nullptr, "mrd_op_field_count and mrd_op_field are exported");
    for (int32_t op = 0; op < 2 && fieldCount != nullptr && opField != nullptr; ++op)
    {
        PluginFieldCollection const* listed = (op == 0 ? single : multi)->getFieldNames();
        int32_t k = 0;
        bool same = true;
        for (int32_t row = 0; row < fieldCount(); ++row)
        {
            char const* name = nullptr;
            char const* text = nullptr;
            int32_t kind = -1, ops = 0;
            opField(row, &name, &kind, &ops, &text);
            if ((ops & (1 << op)) == 0)
            {
                continue;
            }
            // kinds: 0 int, 1 float, 2 floats, 3 string (MRD_FIELD_*)
            PluginFieldType const type = kind == 0 ? PluginFieldType::kINT32
                : kind == 3                        ? PluginFieldType::kCHAR
                                                   : PluginFieldType::kFLOAT32;
            same = same && k < listed->nbFields && std::strcmp(listed->fields[k].name, name) == 0
                && listed->fields[k].type == type
                && (kind == 2       ? listed->fields[k].length == 8
                        : kind != 3 ? listed->fields[k].length == 1
                                    : listed->fields[k].length > 3);
            ++k;
        }
        check(same && k == listed->nbFields,
            op == 0 ? "RoIAlign creator lists the table's fields"
                    : "MultiLevelRoIAlign creator lists the table's fields");
    }
    std::printf(gFailures == 0 ? "ALL CHECKS PASSED\n" : "%d CHECKS FAILED\n", gFailures);
    return gFailures == 0 ? 0 : 1;
}
