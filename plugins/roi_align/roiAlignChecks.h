// Host-side checks of the op attributes, shared by the C ABI and the TensorRT plugin so both refuse the same
// things with the same words.
#pragma once

#include "roiAlignMath.h"

#include <cmath>
#include <string>

namespace mrd
{

//! "" when the attributes are usable, else a message naming the attribute, the value found and what is allowed.
inline std::string checkAttributes(int32_t outH, int32_t outW, int32_t samplingRatio, float const* spatialScales,
    int32_t numLevels, float canonicalScale, int32_t mode)
{
    if (outH <= 0 || outW <= 0)
    {
        return "output_height and output_width must be positive, got " + std::to_string(outH) + " x "
            + std::to_string(outW);
    }
    if (samplingRatio < 0 || samplingRatio > kMaxSamplingRatio)
    {
        return "sampling_ratio must be 0 (adaptive) to " + std::to_string(kMaxSamplingRatio)
            + " samples per bin and axis, got " + std::to_string(samplingRatio);
    }
    if (numLevels < 1 || numLevels > kMaxLevels)
    {
        return "the op needs 1 to " + std::to_string(kMaxLevels) + " feature levels (one spatial scale each), got "
            + std::to_string(numLevels);
    }
    for (int32_t l = 0; l < numLevels; ++l)
    {
        if (!(spatialScales[l] > 0.0f) || !std::isfinite(spatialScales[l]))
        {
            return "spatial scale of level " + std::to_string(l) + " must be a positive number, got "
                + std::to_string(spatialScales[l]);
        }
    }
    if (numLevels > 1)
    {
        // The level mapping assumes P_k has scale 2^-k and the levels are consecutive.
        int32_t const first = levelNumberOfScale(spatialScales[0]);
        for (int32_t l = 0; l < numLevels; ++l)
        {
            float const expected = std::ldexp(1.0f, -(first + l));
            if (std::fabs(spatialScales[l] - expected) > 1e-3f * expected)
            {
                return "spatial_scales must be consecutive powers of two (1/4, 1/8, ...); level " + std::to_string(l)
                    + " has " + std::to_string(spatialScales[l]) + ", expected " + std::to_string(expected);
            }
        }
        if (!(canonicalScale > 0.0f) || !std::isfinite(canonicalScale))
        {
            return "canonical_scale must be a positive number, got " + std::to_string(canonicalScale);
        }
    }
    if (mode != static_cast<int32_t>(PoolMode::kAvg) && mode != static_cast<int32_t>(PoolMode::kMax))
    {
        return "mode must be avg (0) or max (1), got " + std::to_string(mode);
    }
    return "";
}

} // namespace mrd
