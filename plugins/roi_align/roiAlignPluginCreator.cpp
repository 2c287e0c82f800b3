#include "roiAlignPluginCreator.h"

#include "roiAlignPlugin.h"
#include "roiAlignPluginLog.h"

#include <stdexcept>
#include <string>

using namespace nvinfer1;

namespace mrd
{

RoiAlignPluginCreator::RoiAlignPluginCreator(RoiAlignOp op)
    : mOp(op)
    , mFieldNames(roiAlignFieldNames(op))
{
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* RoiAlignPluginCreator::getPluginName() const noexcept
{
    return opName(mOp);
}

char const* RoiAlignPluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* RoiAlignPluginCreator::getPluginNamespace() const noexcept
{
    return mNamespace.c_str();
}

PluginFieldCollection const* RoiAlignPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* RoiAlignPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    // Build and runtime phases read the same fields (getFieldsToSerialize writes them back in this format).
    return guarded<IPluginV3*>("createPlugin", nullptr, [&]() -> IPluginV3* {
        try
        {
            return makeRoiAlignPlugin(mOp, parseRoiAlignFields(mOp, fc), mNamespace).release();
        }
        catch (std::invalid_argument const& e)
        {
            logError(std::string(opName(mOp)) + " node '" + (name != nullptr ? name : "") + "': " + e.what());
            return nullptr;
        }
    });
}

} // namespace mrd

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    // Function-local statics: constructed on first use, thread-safe, alive until the library is unloaded.
    static mrd::RoiAlignPluginCreator singleLevel(mrd::RoiAlignOp::kSingleLevel);
    static mrd::RoiAlignPluginCreator multiLevel(mrd::RoiAlignOp::kMultiLevel);
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&singleLevel, &multiLevel};
    nbCreators = 2;
    return creators;
}
