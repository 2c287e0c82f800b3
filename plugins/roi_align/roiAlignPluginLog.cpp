#include "roiAlignPluginLog.h"

#include <atomic>
#include <cstdio>

using namespace nvinfer1;

namespace mrd
{
namespace
{

std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};

} // namespace

void logError(std::string const& message) noexcept
{
    try
    {
        std::string const text = "[maskrcnn_deploy RoIAlign plugin] " + message;
        ILoggerFinder* finder = gLoggerFinder.load();
        ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(ILogger::Severity::kERROR, text.c_str());
        }
        else
        {
            std::fprintf(stderr, "%s\n", text.c_str());
        }
    }
    catch (...)
    {
        // Nothing sensible is left to do if logging itself fails.
    }
}

} // namespace mrd

extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    mrd::gLoggerFinder.store(finder);
}
