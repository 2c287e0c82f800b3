// CUDA launcher of RoIAlign / MultiLevelRoIAlign: raw device pointers and a stream in, cudaError_t out.
// No TensorRT type reaches this layer; the C ABI's CUDA entry and the TensorRT plugin's enqueue() both reach it
// through launchRoiAlignCuda() (roiAlignArgs.h), which builds its arguments from one MrdRoiAlignArgs.
#pragma once

#include "roiAlignMath.h"

#include <cuda_runtime_api.h>

namespace mrd
{

//! Pool ``src.numRois`` RoIs from ``levels`` (device pointers) into ``out`` [numRois, C, outH, outW] on ``stream``.
//! Asynchronous; returns the launch status. T = float or Half.
template <typename T>
cudaError_t launchRoiAlign(
    FeatureLevels<T> const& levels, RoiSource const& src, PoolParams const& params, T* out, cudaStream_t stream);

} // namespace mrd
