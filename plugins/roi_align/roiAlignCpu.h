// CPU implementation of RoIAlign / MultiLevelRoIAlign on the math of roiAlignMath.h.
//
// It is the CPU fast path of the SDK, so it hoists everything that does not depend on the channel out of the
// channel loop: for each RoI the bilinear taps and weights of every sample are computed once (bilinearTaps()), then
// every block of channels is a tight loop of interpolate() and the Reduce steps, all from roiAlignMath.h. RoIs are
// spread over worker threads.
#pragma once

#include "roiAlignMath.h"

namespace mrd
{

//! Pool ``src.numRois`` RoIs from ``levels`` into ``out`` [numRois, C, outH, outW] (contiguous, T = float or Half).
//! ``numThreads`` <= 0 uses the hardware concurrency; 1 runs on the calling thread.
//! A RoI whose batch index is outside [0, params.batch) yields zeros.
template <typename T>
void roiAlignCpu(
    FeatureLevels<T> const& levels, RoiSource const& src, PoolParams const& params, T* out, int32_t numThreads);

//! The same result computed one output element at a time with poolOutputElement(), i.e. exactly the code a CUDA
//! thread runs. Single-threaded and slow: it exists to test the kernel's code path on machines without a GPU.
template <typename T>
void roiAlignElementwiseCpu(FeatureLevels<T> const& levels, RoiSource const& src, PoolParams const& params, T* out);

//! FPN level index (0-based) of each of ``numRois`` fp32 boxes [numRois, 4], written to ``outLevels``.
void levelIndicesCpu(float const* rois, int64_t numRois, float canonicalScale, int32_t canonicalLevel,
    int32_t firstLevel, int32_t numLevels, int32_t* outLevels);

} // namespace mrd
