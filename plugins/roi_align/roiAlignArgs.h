// One call of the op, MrdRoiAlignArgs (roiAlignCApi.h), turned into the math header's structs in ONE place: the
// C ABI's entries and the TensorRT plugin's enqueue() both fill an MrdRoiAlignArgs and run it through
// checkArgs(), the builders below and withFeatureType() (the one fp32/fp16 dispatch).
#pragma once

#include "roiAlignCApi.h"
#include "roiAlignChecks.h"
#include "roiAlignMath.h"

#include <string>

namespace mrd
{

static_assert(MRD_MAX_LEVELS == kMaxLevels, "the C ABI's level arrays hold kMaxLevels levels");
static_assert(
    MRD_MODE_AVG == static_cast<int32_t>(PoolMode::kAvg) && MRD_MODE_MAX == static_cast<int32_t>(PoolMode::kMax),
    "C ABI mode codes are PoolMode values");

//! "" when ``a`` describes a call the library can run, else a message naming the bad argument.
inline std::string checkArgs(MrdRoiAlignArgs const& a)
{
    if (a.num_levels < 1 || a.num_levels > kMaxLevels)
    {
        return "the op needs 1 to " + std::to_string(kMaxLevels) + " feature levels (one spatial scale each), got "
            + std::to_string(a.num_levels);
    }
    std::string msg = checkAttributes(
        a.out_h, a.out_w, a.sampling_ratio, a.spatial_scales, a.num_levels, a.canonical_scale, a.mode);
    if (!msg.empty())
    {
        return msg;
    }
    if (a.dtype != MRD_DTYPE_FLOAT32 && a.dtype != MRD_DTYPE_FLOAT16)
    {
        return "features dtype code must be 0 (float32) or 1 (float16), got " + std::to_string(a.dtype);
    }
    if (a.rois_dtype != MRD_DTYPE_FLOAT32 && a.rois_dtype != MRD_DTYPE_FLOAT16)
    {
        return "rois dtype code must be 0 (float32) or 1 (float16), got " + std::to_string(a.rois_dtype);
    }
    if (a.batch_indices != nullptr && a.index_type != MRD_INDEX_INT32 && a.index_type != MRD_INDEX_INT64)
    {
        return "batch index type must be 32 or 64, got " + std::to_string(a.index_type);
    }
    if (a.batch_indices == nullptr && a.num_rois > 0 && a.rois_per_image <= 0)
    {
        return "rois_per_image must be positive when no batch indices are given";
    }
    if (a.batch < 0 || a.channels < 0 || a.num_rois < 0)
    {
        return "batch, channels and num_rois must be >= 0";
    }
    if (a.implementation != MRD_IMPLEMENTATION_FAST && a.implementation != MRD_IMPLEMENTATION_KERNEL)
    {
        return "implementation must be " + std::to_string(MRD_IMPLEMENTATION_FAST) + " (fast CPU path) or "
            + std::to_string(MRD_IMPLEMENTATION_KERNEL) + " (the kernel's per-element code), got "
            + std::to_string(a.implementation);
    }
    if (a.num_threads < 0)
    {
        return "num_threads must be >= 0 (0 = all cores), got " + std::to_string(a.num_threads);
    }
    for (int32_t l = 0; l < a.num_levels; ++l)
    {
        if (a.heights[l] <= 0 || a.widths[l] <= 0)
        {
            return "feature level " + std::to_string(l) + " has an empty map (" + std::to_string(a.heights[l]) + " x "
                + std::to_string(a.widths[l]) + ")";
        }
        if (a.features[l] == nullptr && a.batch > 0 && a.channels > 0)
        {
            return "feature level " + std::to_string(l) + " has a null data pointer";
        }
    }
    if (a.num_rois > 0 && (a.rois == nullptr || a.out == nullptr))
    {
        return "rois and out must not be null";
    }
    return "";
}

template <typename T>
FeatureLevels<T> featureLevels(MrdRoiAlignArgs const& a)
{
    FeatureLevels<T> f{};
    f.numLevels = a.num_levels;
    f.firstLevel = levelNumberOfScale(a.spatial_scales[0]);
    for (int32_t l = 0; l < a.num_levels; ++l)
    {
        f.data[l] = static_cast<T const*>(a.features[l]);
        f.height[l] = a.heights[l];
        f.width[l] = a.widths[l];
        f.scale[l] = a.spatial_scales[l];
    }
    return f;
}

inline RoiSource roiSource(MrdRoiAlignArgs const& a)
{
    return RoiSource{a.rois, a.rois_dtype == MRD_DTYPE_FLOAT16, a.batch_indices, a.index_type == MRD_INDEX_INT64,
        a.rois_per_image, a.num_rois};
}

inline PoolParams poolParams(MrdRoiAlignArgs const& a)
{
    return PoolParams{a.channels, a.batch, a.out_h, a.out_w, a.sampling_ratio, a.aligned != 0,
        static_cast<PoolMode>(a.mode), a.canonical_scale, a.canonical_level};
}

//! A type as a value, for the generic lambdas of withFeatureType().
template <typename T>
struct TypeTag
{
    using type = T;
};

//! The one fp32/fp16 dispatch: ``fn(TypeTag<float>{})`` or ``fn(TypeTag<Half>{})`` by ``dtype`` (MRD_DTYPE_*).
template <typename Fn>
decltype(auto) withFeatureType(int32_t dtype, Fn&& fn)
{
    if (dtype == MRD_DTYPE_FLOAT16)
    {
        return fn(TypeTag<Half>{});
    }
    return fn(TypeTag<float>{});
}

#if defined(MRD_WITH_CUDA)
//! Launch the kernel for checked ``a`` on ``a.stream``; returns the cudaError_t of the launch (0 = success).
//! Defined in roiAlignCApi.cpp; the TensorRT plugin's enqueue() calls it too.
int32_t launchRoiAlignCuda(MrdRoiAlignArgs const& a);
#endif

} // namespace mrd
