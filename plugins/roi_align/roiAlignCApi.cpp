#include "roiAlignCApi.h"

#include "roiAlignChecks.h"
#include "roiAlignCpu.h"
#if defined(MRD_WITH_CUDA)
#include "roiAlignKernel.h"
#endif

#include <string>

namespace
{

thread_local std::string gLastError;

int32_t fail(std::string message)
{
    gLastError = std::move(message);
    return MRD_STATUS_INVALID_ARGUMENT;
}

//! The argument list of both entries, checked and turned into the math header's structs.
struct Args
{
    int32_t dtype;
    void const* const* features;
    int32_t const* heights;
    int32_t const* widths;
    float const* scales;
    int32_t numLevels;
    int32_t batch, channels;
    void const* rois;
    int32_t roisDtype;
    void const* batchIndices;
    int32_t indexType;
    int64_t roisPerImage, numRois;
    int32_t outH, outW, samplingRatio, aligned, mode;
    float canonicalScale;
    int32_t canonicalLevel;
    void* out;

    std::string check() const
    {
        std::string msg = mrd::checkAttributes(outH, outW, samplingRatio, scales, numLevels, canonicalScale, mode);
        if (!msg.empty())
        {
            return msg;
        }
        if (dtype != MRD_DTYPE_FLOAT32 && dtype != MRD_DTYPE_FLOAT16)
        {
            return "features dtype code must be 0 (float32) or 1 (float16), got " + std::to_string(dtype);
        }
        if (roisDtype != MRD_DTYPE_FLOAT32 && roisDtype != MRD_DTYPE_FLOAT16)
        {
            return "rois dtype code must be 0 (float32) or 1 (float16), got " + std::to_string(roisDtype);
        }
        if (batchIndices != nullptr && indexType != MRD_INDEX_INT32 && indexType != MRD_INDEX_INT64)
        {
            return "batch index type must be 32 or 64, got " + std::to_string(indexType);
        }
        if (batchIndices == nullptr && numRois > 0 && roisPerImage <= 0)
        {
            return "rois_per_image must be positive when no batch indices are given";
        }
        if (batch < 0 || channels < 0 || numRois < 0)
        {
            return "batch, channels and num_rois must be >= 0";
        }
        for (int32_t l = 0; l < numLevels; ++l)
        {
            if (heights[l] <= 0 || widths[l] <= 0)
            {
                return "feature level " + std::to_string(l) + " has an empty map (" + std::to_string(heights[l]) + " x "
                    + std::to_string(widths[l]) + ")";
            }
            if (features[l] == nullptr && batch > 0 && channels > 0)
            {
                return "feature level " + std::to_string(l) + " has a null data pointer";
            }
        }
        if (numRois > 0 && (rois == nullptr || out == nullptr))
        {
            return "rois and out must not be null";
        }
        return "";
    }

    template <typename T>
    mrd::FeatureLevels<T> levels() const
    {
        mrd::FeatureLevels<T> f{};
        f.numLevels = numLevels;
        f.firstLevel = mrd::levelNumberOfScale(scales[0]);
        for (int32_t l = 0; l < numLevels; ++l)
        {
            f.data[l] = static_cast<T const*>(features[l]);
            f.height[l] = heights[l];
            f.width[l] = widths[l];
            f.scale[l] = scales[l];
        }
        return f;
    }

    mrd::RoiSource source() const
    {
        return mrd::RoiSource{
            rois, roisDtype == MRD_DTYPE_FLOAT16, batchIndices, indexType == MRD_INDEX_INT64, roisPerImage, numRois};
    }

    mrd::PoolParams params() const
    {
        return mrd::PoolParams{channels, batch, outH, outW, samplingRatio, aligned != 0,
            static_cast<mrd::PoolMode>(mode), canonicalScale, canonicalLevel};
    }
};

} // namespace

// Both entries take the same argument list; this gathers it into Args in one place.
#define MRD_COLLECT_ARGS                                                                                               \
    Args                                                                                                               \
    {                                                                                                                  \
        dtype, features, heights, widths, spatial_scales, num_levels, batch, channels, rois, rois_dtype,               \
            batch_indices, index_type, rois_per_image, num_rois, out_h, out_w, sampling_ratio, aligned, mode,          \
            canonical_scale, canonical_level, out                                                                      \
    }

extern "C" {

int32_t mrd_abi_version(void)
{
    return MRD_ABI_VERSION;
}

int32_t mrd_has_cuda(void)
{
#if defined(MRD_WITH_CUDA)
    return 1;
#else
    return 0;
#endif
}

int32_t mrd_has_tensorrt(void)
{
#if defined(MRD_WITH_TENSORRT)
    return 1;
#else
    return 0;
#endif
}

char const* mrd_last_error(void)
{
    return gLastError.c_str();
}

int32_t mrd_roi_align_cpu(int32_t dtype, void const* const* features, int32_t const* heights, int32_t const* widths,
    float const* spatial_scales, int32_t num_levels, int32_t batch, int32_t channels, void const* rois,
    int32_t rois_dtype, void const* batch_indices, int32_t index_type, int64_t rois_per_image, int64_t num_rois,
    int32_t out_h, int32_t out_w, int32_t sampling_ratio, int32_t aligned, int32_t mode, float canonical_scale,
    int32_t canonical_level, void* out, int32_t num_threads)
{
    Args const a = MRD_COLLECT_ARGS;
    if (std::string msg = a.check(); !msg.empty())
    {
        return fail(std::move(msg));
    }
    try
    {
        if (num_threads == MRD_THREADS_ELEMENTWISE && dtype == MRD_DTYPE_FLOAT16)
        {
            mrd::roiAlignElementwiseCpu(a.levels<mrd::Half>(), a.source(), a.params(), static_cast<mrd::Half*>(out));
        }
        else if (num_threads == MRD_THREADS_ELEMENTWISE)
        {
            mrd::roiAlignElementwiseCpu(a.levels<float>(), a.source(), a.params(), static_cast<float*>(out));
        }
        else if (dtype == MRD_DTYPE_FLOAT16)
        {
            mrd::roiAlignCpu(a.levels<mrd::Half>(), a.source(), a.params(), static_cast<mrd::Half*>(out), num_threads);
        }
        else
        {
            mrd::roiAlignCpu(a.levels<float>(), a.source(), a.params(), static_cast<float*>(out), num_threads);
        }
    }
    catch (std::exception const& e)
    {
        // e.g. std::bad_alloc or std::system_error from thread creation: never let it cross the C boundary.
        return fail(std::string("RoIAlign CPU failed: ") + e.what());
    }
    gLastError.clear();
    return 0;
}

int32_t mrd_roi_align_cuda(int32_t dtype, void const* const* features, int32_t const* heights, int32_t const* widths,
    float const* spatial_scales, int32_t num_levels, int32_t batch, int32_t channels, void const* rois,
    int32_t rois_dtype, void const* batch_indices, int32_t index_type, int64_t rois_per_image, int64_t num_rois,
    int32_t out_h, int32_t out_w, int32_t sampling_ratio, int32_t aligned, int32_t mode, float canonical_scale,
    int32_t canonical_level, void* out, void* stream)
{
    Args const a = MRD_COLLECT_ARGS;
    if (std::string msg = a.check(); !msg.empty())
    {
        return fail(std::move(msg));
    }
#if defined(MRD_WITH_CUDA)
    cudaError_t status;
    if (dtype == MRD_DTYPE_FLOAT16)
    {
        status = mrd::launchRoiAlign(a.levels<mrd::Half>(), a.source(), a.params(), static_cast<mrd::Half*>(out),
            static_cast<cudaStream_t>(stream));
    }
    else
    {
        status = mrd::launchRoiAlign(
            a.levels<float>(), a.source(), a.params(), static_cast<float*>(out), static_cast<cudaStream_t>(stream));
    }
    if (status != cudaSuccess)
    {
        gLastError = std::string("RoIAlign CUDA launch failed: ") + cudaGetErrorString(status);
        return static_cast<int32_t>(status);
    }
    gLastError.clear();
    return 0;
#else
    (void) a, (void) stream;
    return fail("this build of the plugin library has no CUDA kernels (rebuild with CUDA: MRD_WITH_CUDA=ON)");
#endif
}

int32_t mrd_level_indices(float const* rois, int64_t num_rois, float const* spatial_scales, int32_t num_levels,
    float canonical_scale, int32_t canonical_level, int32_t* out_levels)
{
    std::string const msg = mrd::checkAttributes(1, 1, 0, spatial_scales, num_levels, canonical_scale, 0);
    if (!msg.empty())
    {
        return fail(msg);
    }
    mrd::levelIndicesCpu(rois, num_rois, canonical_scale, canonical_level, mrd::levelNumberOfScale(spatial_scales[0]),
        num_levels, out_levels);
    gLastError.clear();
    return 0;
}

} // extern "C"
