// Error reporting of the TensorRT plugins. Every TensorRT virtual is noexcept and reports failures here instead of
// throwing: through the TensorRT logger when TensorRT handed the library one (setLoggerFinder), else on stderr.
#pragma once

#include "roiAlignCApi.h"

#include <NvInferRuntime.h>

#include <string>

namespace mrd
{

//! Log ``message`` as a TensorRT kERROR (prefixed with the library's name); never throws.
void logError(std::string const& message) noexcept;

} // namespace mrd

extern "C" MRD_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
