// Error reporting of the TensorRT plugins. Every TensorRT virtual is noexcept and reports failures here instead of
// throwing: through the TensorRT logger when TensorRT handed the library one (setLoggerFinder), else on stderr.
// guarded() is the one try/catch of the plugins' methods.
#pragma once

#include "roiAlignCApi.h"

#include <NvInferRuntime.h>

#include <exception>
#include <string>

namespace mrd
{

//! Log ``message`` as a TensorRT kERROR (prefixed with the library's name); never throws.
void logError(std::string const& message) noexcept;

//! ``fn()``, or ``onError`` after logging "<what> failed: <reason>" when it throws: the body of a noexcept method.
template <typename R, typename Fn>
R guarded(char const* what, R onError, Fn&& fn) noexcept
{
    try
    {
        return fn();
    }
    catch (std::exception const& e)
    {
        logError(std::string(what) + " failed: " + e.what());
    }
    catch (...)
    {
        logError(std::string(what) + " failed: unknown exception");
    }
    return onError;
}

} // namespace mrd

extern "C" MRD_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
