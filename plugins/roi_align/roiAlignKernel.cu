#include "roiAlignKernel.h"

namespace mrd
{
namespace
{

constexpr int kThreadsPerBlock = 256;

//! One thread per output element (roi, c, ph, pw); consecutive threads share a RoI and channel, so the box,
//! level and geometry loads are broadcast and neighbouring bins read neighbouring feature pixels.
template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock) roiAlignKernel(
    FeatureLevels<T> const levels, RoiSource const src, PoolParams const p, T* __restrict__ out, int64_t total)
{
    for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < total;
        index += static_cast<int64_t>(gridDim.x) * blockDim.x)
    {
        storeFromFloat(out, index, poolOutputElement(levels, src, p, index));
    }
}

} // namespace

template <typename T>
cudaError_t launchRoiAlign(
    FeatureLevels<T> const& levels, RoiSource const& src, PoolParams const& params, T* out, cudaStream_t stream)
{
    int64_t const total = src.numRois * params.channels * static_cast<int64_t>(params.outH) * params.outW;
    if (total <= 0)
    {
        return cudaSuccess;
    }
    // A grid-stride loop keeps the grid within limits for any RoI count; 2^20 blocks already fill any GPU.
    int64_t const blocks = std::min<int64_t>((total + kThreadsPerBlock - 1) / kThreadsPerBlock, int64_t{1} << 20);
    roiAlignKernel<T><<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(levels, src, params, out, total);
    return cudaGetLastError();
}

template cudaError_t launchRoiAlign<float>(
    FeatureLevels<float> const&, RoiSource const&, PoolParams const&, float*, cudaStream_t);
template cudaError_t launchRoiAlign<Half>(
    FeatureLevels<Half> const&, RoiSource const&, PoolParams const&, Half*, cudaStream_t);

} // namespace mrd
