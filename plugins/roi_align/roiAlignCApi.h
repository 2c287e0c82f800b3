// C ABI of the plugin library, loaded by deploy_sdk.plugins with ctypes (ABI version 2).
//
// One call = one MrdRoiAlignArgs, mirrored field for field by deploy_sdk.plugins.RoiAlignArgs (a ctypes.Structure;
// tests/deploy_sdk/test_plugin_lookup.py compares both layouts through mrd_args_field()). One struct serves both
// ops and both devices: RoIAlign passes one level and explicit batch indices; MultiLevelRoIAlign passes its levels
// and batch_indices = NULL with rois_per_image = R ([B, R, 4] rois). All tensors are contiguous.
//   features:  level l is [batch, channels, heights[l], widths[l]], dtype MRD_DTYPE_FLOAT32 or MRD_DTYPE_FLOAT16
//   rois:      [num_rois, 4] x1 y1 x2 y2 in input-image pixels, fp32 or fp16 (rois_dtype)
//   out:       [num_rois, channels, out_h, out_w], same dtype as the features
// implementation: MRD_IMPLEMENTATION_FAST (the CPU fast path, num_threads: 0 = all cores, n > 0 = n threads) or
//   MRD_IMPLEMENTATION_KERNEL (the CUDA kernel's per-element code; on the CPU single-threaded, for tests). The CUDA
//   entry runs the kernel and takes only MRD_IMPLEMENTATION_KERNEL; it launches on `stream` (a cudaStream_t).
// sampling_ratio: 0 (adaptive) to kMaxSamplingRatio (1024, roiAlignMath.h); larger is MRD_STATUS_INVALID_ARGUMENT.
// A box with a NaN or infinite coordinate is not an error: it pools to zeros (roiAlignMath.h, roiGeometry).
// Return value: 0 on success. Entries return MRD_STATUS_INVALID_ARGUMENT for bad arguments (message from
// mrd_last_error()); the CUDA entry returns the cudaError_t of a failed launch.
#pragma once

#include <stdint.h>

#if defined(_WIN32)
#define MRD_API __declspec(dllexport)
#else
#define MRD_API __attribute__((visibility("default")))
#endif

#define MRD_ABI_VERSION 2
#define MRD_MAX_LEVELS 8
#define MRD_DTYPE_FLOAT32 0
#define MRD_DTYPE_FLOAT16 1
#define MRD_INDEX_NONE 0
#define MRD_INDEX_INT32 32
#define MRD_INDEX_INT64 64
#define MRD_MODE_AVG 0
#define MRD_MODE_MAX 1
#define MRD_IMPLEMENTATION_FAST 0
#define MRD_IMPLEMENTATION_KERNEL 1
#define MRD_STATUS_INVALID_ARGUMENT 100000
//! Field kinds of mrd_op_field() (mrd::FieldKind): one int32, one float32, a float32 list, a string.
#define MRD_FIELD_INT 0
#define MRD_FIELD_FLOAT 1
#define MRD_FIELD_FLOATS 2
#define MRD_FIELD_STRING 3

#ifdef __cplusplus
extern "C" {
#endif

//! The arguments of one RoIAlign call (both ops, both devices).
typedef struct MrdRoiAlignArgs
{
    int32_t dtype;      //!< MRD_DTYPE_* of the features and the output
    int32_t num_levels; //!< 1 .. MRD_MAX_LEVELS
    void const* features[MRD_MAX_LEVELS];
    int32_t heights[MRD_MAX_LEVELS];
    int32_t widths[MRD_MAX_LEVELS];
    float spatial_scales[MRD_MAX_LEVELS];
    int32_t batch;
    int32_t channels;
    void const* rois;
    int32_t rois_dtype;        //!< MRD_DTYPE_*
    int32_t index_type;        //!< MRD_INDEX_INT32 / MRD_INDEX_INT64 (MRD_INDEX_NONE without batch_indices)
    void const* batch_indices; //!< [num_rois], or NULL: image of RoI r = r / rois_per_image
    int64_t rois_per_image;
    int64_t num_rois;
    int32_t out_h;
    int32_t out_w;
    int32_t sampling_ratio;
    int32_t aligned;       //!< 1 = half-pixel offset, 0 = legacy
    int32_t mode;          //!< MRD_MODE_*
    float canonical_scale; //!< level mapping (multi-level op); any positive value for one level
    int32_t canonical_level;
    int32_t implementation; //!< MRD_IMPLEMENTATION_*
    int32_t num_threads;    //!< fast CPU path: 0 = all cores
    int32_t reserved;       //!< 0 (keeps the pointers below 8-byte aligned on every ABI)
    void* out;
    void* stream; //!< CUDA entry: cudaStream_t (NULL = default stream); ignored on the CPU
} MrdRoiAlignArgs;

MRD_API int32_t mrd_abi_version(void);
//! 1 when the library was built with the CUDA kernels, else 0.
MRD_API int32_t mrd_has_cuda(void);
//! 1 when the library contains the TensorRT plugin creators, else 0.
MRD_API int32_t mrd_has_tensorrt(void);
//! Message of the last failed call on this thread ("" if none).
MRD_API char const* mrd_last_error(void);

MRD_API int32_t mrd_roi_align_cpu(MrdRoiAlignArgs const* args);
//! Same arguments with device pointers; asynchronous on args->stream.
MRD_API int32_t mrd_roi_align_cuda(MrdRoiAlignArgs const* args);

//! FPN level index (0-based) of each fp32 box [num_rois, 4] for levels with the given spatial scales.
MRD_API int32_t mrd_level_indices(float const* rois, int64_t num_rois, float const* spatial_scales, int32_t num_levels,
    float canonical_scale, int32_t canonical_level, int32_t* out_levels);

//! The op table of roiAlignOp.h: the plugin version, op names (bit i of a field's op mask = op i), and the fields.
MRD_API char const* mrd_plugin_version(void);
MRD_API int32_t mrd_op_count(void);
MRD_API char const* mrd_op_name(int32_t op);
MRD_API int32_t mrd_op_field_count(void);
//! Row ``i``: its name, MRD_FIELD_* kind, op mask and default as text (NULL = required). Returns 0, or -1 when
//! ``i`` is out of range.
MRD_API int32_t mrd_op_field(int32_t i, char const** name, int32_t* kind, int32_t* ops, char const** default_text);

//! The layout of MrdRoiAlignArgs: its size, and per member its name, offset and size in bytes.
MRD_API int64_t mrd_args_size(void);
MRD_API int32_t mrd_args_field_count(void);
MRD_API int32_t mrd_args_field(int32_t i, char const** name, int64_t* offset, int64_t* size);

#ifdef __cplusplus
}
#endif
