// C ABI of the plugin library, loaded by deploy_sdk.plugins with ctypes.
//
// One entry per device serves both ops: RoIAlign passes one level and explicit batch indices; MultiLevelRoIAlign
// passes its levels and batch_indices = NULL with rois_per_image = R ([B, R, 4] rois). All tensors are contiguous.
//   features:  level l is [batch, channels, heights[l], widths[l]], dtype MRD_DTYPE_FLOAT32 or MRD_DTYPE_FLOAT16
//   rois:      [num_rois, 4] x1 y1 x2 y2 in input-image pixels, fp32 or fp16 (rois_dtype)
//   out:       [num_rois, channels, out_h, out_w], same dtype as the features
// num_threads: 0 = all cores, n > 0 = n threads, MRD_THREADS_ELEMENTWISE = the kernel's per-element path.
// sampling_ratio: 0 (adaptive) to kMaxSamplingRatio (1024, roiAlignMath.h); larger is MRD_STATUS_INVALID_ARGUMENT.
// A box with a NaN or infinite coordinate is not an error: it pools to zeros (roiAlignMath.h, roiGeometry).
// Return value: 0 on success. CPU entries return MRD_STATUS_INVALID_ARGUMENT for bad arguments (message from
// mrd_last_error()); CUDA entries return the cudaError_t of the launch, or MRD_STATUS_INVALID_ARGUMENT.
#pragma once

#include <stdint.h>

#if defined(_WIN32)
#define MRD_API __declspec(dllexport)
#else
#define MRD_API __attribute__((visibility("default")))
#endif

#define MRD_ABI_VERSION 1
#define MRD_DTYPE_FLOAT32 0
#define MRD_DTYPE_FLOAT16 1
#define MRD_INDEX_NONE 0
#define MRD_INDEX_INT32 32
#define MRD_INDEX_INT64 64
#define MRD_MODE_AVG 0
#define MRD_MODE_MAX 1
#define MRD_STATUS_INVALID_ARGUMENT 100000
//! num_threads value of mrd_roi_align_cpu selecting the per-output-element path (the CUDA kernel's code, on CPU).
#define MRD_THREADS_ELEMENTWISE (-1)

#ifdef __cplusplus
extern "C" {
#endif

MRD_API int32_t mrd_abi_version(void);
//! 1 when the library was built with the CUDA kernels, else 0.
MRD_API int32_t mrd_has_cuda(void);
//! 1 when the library contains the TensorRT plugin creators, else 0.
MRD_API int32_t mrd_has_tensorrt(void);
//! Message of the last failed call on this thread ("" if none).
MRD_API char const* mrd_last_error(void);

MRD_API int32_t mrd_roi_align_cpu(int32_t dtype, void const* const* features, int32_t const* heights,
    int32_t const* widths, float const* spatial_scales, int32_t num_levels, int32_t batch, int32_t channels,
    void const* rois, int32_t rois_dtype, void const* batch_indices, int32_t index_type, int64_t rois_per_image,
    int64_t num_rois, int32_t out_h, int32_t out_w, int32_t sampling_ratio, int32_t aligned, int32_t mode,
    float canonical_scale, int32_t canonical_level, void* out, int32_t num_threads);

//! Same arguments with device pointers and a cudaStream_t (as void*) in place of num_threads.
MRD_API int32_t mrd_roi_align_cuda(int32_t dtype, void const* const* features, int32_t const* heights,
    int32_t const* widths, float const* spatial_scales, int32_t num_levels, int32_t batch, int32_t channels,
    void const* rois, int32_t rois_dtype, void const* batch_indices, int32_t index_type, int64_t rois_per_image,
    int64_t num_rois, int32_t out_h, int32_t out_w, int32_t sampling_ratio, int32_t aligned, int32_t mode,
    float canonical_scale, int32_t canonical_level, void* out, void* stream);

//! FPN level index (0-based) of each fp32 box [num_rois, 4] for levels with the given spatial scales.
MRD_API int32_t mrd_level_indices(float const* rois, int64_t num_rois, float const* spatial_scales, int32_t num_levels,
    float canonical_scale, int32_t canonical_level, int32_t* out_levels);

#ifdef __cplusplus
}
#endif
