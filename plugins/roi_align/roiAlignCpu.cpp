#include "roiAlignCpu.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace mrd
{
namespace
{

//! One bilinear sample of the per-RoI table; int32 offsets, for planes of fewer than 2^31 pixels.
using SampleTaps = BilinearTaps<int32_t>;

//! Per-thread buffers, reused across the RoIs a thread handles so the hot loop never allocates.
struct Scratch
{
    std::vector<AxisTaps> ys, xs;
    std::vector<SampleTaps> samples;
};

//! Pool ``Block`` consecutive channels starting at ``c0`` over all bins, reusing each sample's taps for every
//! channel of the block: interpolate() and the reduction steps of roiAlignMath.h, with one accumulator per channel
//! kept in registers.
template <typename T, int Block, PoolMode M>
void poolChannels(
    T const* image, int64_t planeSize, int32_t c0, SampleTaps const* taps, int64_t bins, int32_t count, T* outRoi)
{
    using R = Reduce<M>;
    T const* planes[Block];
    for (int j = 0; j < Block; ++j)
    {
        planes[j] = image + (c0 + j) * planeSize;
    }
    SampleTaps const* t = taps;
    for (int64_t bin = 0; bin < bins; ++bin)
    {
        float acc[Block];
        for (int j = 0; j < Block; ++j)
        {
            acc[j] = R::init();
        }
        for (int32_t k = 0; k < count; ++k, ++t)
        {
            for (int j = 0; j < Block; ++j)
            {
                acc[j] = R::add(acc[j], interpolate(planes[j], *t));
            }
        }
        for (int j = 0; j < Block; ++j)
        {
            storeFromFloat(outRoi + (c0 + j) * bins, bin, R::result(acc[j], count));
        }
    }
}

//! Most samples whose taps poolOneRoi() precomputes for one RoI (bins x samples per bin): 2^18 x 32 bytes = 8 MiB
//! per worker thread. Ordinary RoIs need a few thousand (7x7 bins x 2x2 samples = 196); a RoI past this (a huge
//! sampling grid, up to kMaxSamplingRatio^2 samples per bin) takes the separable path, whose memory grows with
//! the bins and samples along each axis only.
constexpr int64_t kMaxPrecomputedSamples = int64_t{1} << 18;

//! The RoI of poolOneRoi() without the per-sample table: the products of the axis taps are formed per channel,
//! exactly as poolBin() forms them (same weights, same order, same reduction), so the results are identical.
template <typename T>
void poolSeparable(T const* image, int64_t planeSize, int32_t width, PoolParams const& p, RoiGeometry const& g,
    Scratch const& s, T* outRoi)
{
    int64_t const bins = static_cast<int64_t>(p.outH) * p.outW;
    int32_t const count = samplesPerBin(g);
    for (int32_t c = 0; c < p.channels; ++c)
    {
        T const* plane = image + c * planeSize;
        T* outChannel = outRoi + c * bins;
        for (int32_t ph = 0; ph < p.outH; ++ph)
        {
            AxisTaps const* ys = s.ys.data() + static_cast<size_t>(ph) * g.gridH;
            for (int32_t pw = 0; pw < p.outW; ++pw)
            {
                AxisTaps const* xs = s.xs.data() + static_cast<size_t>(pw) * g.gridW;
                BinReducer red(p.mode);
                for (int32_t iy = 0; iy < g.gridH; ++iy)
                {
                    for (int32_t ix = 0; ix < g.gridW; ++ix)
                    {
                        red.add(interpolate(plane, width, ys[iy], xs[ix]));
                    }
                }
                storeFromFloat(outChannel, static_cast<int64_t>(ph) * p.outW + pw, red.result(count));
            }
        }
    }
}

template <typename T>
void poolOneRoi(
    FeatureLevels<T> const& levels, RoiSource const& src, PoolParams const& p, int64_t roi, T* out, Scratch& s)
{
    int64_t const binsPerChannel = static_cast<int64_t>(p.outH) * p.outW;
    int64_t const perRoi = binsPerChannel * p.channels;
    T* const outRoi = out + roi * perRoi;
    int64_t const b = batchOfRoi(src, roi);
    Box const box = loadBox(src.rois, src.roisHalf, roi);
    RoiGeometry g{};
    int32_t level = 0;
    if (b >= 0 && b < p.batch)
    {
        level = levelIndexOfBox(box, p.canonicalScale, p.canonicalLevel, levels.firstLevel, levels.numLevels);
        g = roiGeometry(box, levels.scale[level], p.aligned, p.outH, p.outW, p.samplingRatio);
    }
    int32_t const count = samplesPerBin(g); // <= kMaxSamplingRatio^2, see roiAlignMath.h
    if (count == 0)
    {
        // Bad batch index, an empty sampling grid or a non-finite box: every bin is 0 (both modes).
        for (int64_t i = 0; i < perRoi; ++i)
        {
            storeFromFloat(outRoi, i, 0.0f);
        }
        return;
    }
    int32_t const height = levels.height[level];
    int32_t const width = levels.width[level];
    int64_t const planeSize = static_cast<int64_t>(height) * width;
    T const* const image = levels.data[level] + b * p.channels * planeSize;

    // Taps along each axis: the same numbers poolBin() computes, once per RoI instead of once per channel.
    s.ys.resize(static_cast<size_t>(p.outH) * g.gridH);
    s.xs.resize(static_cast<size_t>(p.outW) * g.gridW);
    for (int32_t ph = 0; ph < p.outH; ++ph)
    {
        for (int32_t iy = 0; iy < g.gridH; ++iy)
        {
            s.ys[static_cast<size_t>(ph) * g.gridH + iy]
                = axisTaps(sampleCoord(g.startY, g.binH, ph, iy, g.gridH), height);
        }
    }
    for (int32_t pw = 0; pw < p.outW; ++pw)
    {
        for (int32_t ix = 0; ix < g.gridW; ++ix)
        {
            s.xs[static_cast<size_t>(pw) * g.gridW + ix]
                = axisTaps(sampleCoord(g.startX, g.binW, pw, ix, g.gridW), width);
        }
    }
    // The per-sample table holds int32 plane offsets and grows with bins x samples: planes of 2^31 pixels or
    // more, or very large sampling grids, go through the separable path instead.
    if (planeSize > INT32_MAX || binsPerChannel * count > kMaxPrecomputedSamples)
    {
        poolSeparable(image, planeSize, width, p, g, s, outRoi);
        return;
    }

    // Then the four-tap products of each sample (bilinearTaps(), as poolBin() forms them through interpolate()).
    s.samples.resize(static_cast<size_t>(binsPerChannel) * count);
    SampleTaps* st = s.samples.data();
    for (int32_t ph = 0; ph < p.outH; ++ph)
    {
        for (int32_t pw = 0; pw < p.outW; ++pw)
        {
            for (int32_t iy = 0; iy < g.gridH; ++iy)
            {
                AxisTaps const& ty = s.ys[static_cast<size_t>(ph) * g.gridH + iy];
                for (int32_t ix = 0; ix < g.gridW; ++ix)
                {
                    *st++ = bilinearTaps<int32_t>(ty, s.xs[static_cast<size_t>(pw) * g.gridW + ix], width);
                }
            }
        }
    }

    int32_t c = 0;
    // Blocks of 4 channels share each tap load (offsets and weights are the same for every channel), which
    // halves the memory traffic of the hot loop compared with one channel at a time.
    if (p.mode == PoolMode::kMax)
    {
        for (; c + 4 <= p.channels; c += 4)
        {
            poolChannels<T, 4, PoolMode::kMax>(image, planeSize, c, s.samples.data(), binsPerChannel, count, outRoi);
        }
        for (; c < p.channels; ++c)
        {
            poolChannels<T, 1, PoolMode::kMax>(image, planeSize, c, s.samples.data(), binsPerChannel, count, outRoi);
        }
    }
    else
    {
        for (; c + 4 <= p.channels; c += 4)
        {
            poolChannels<T, 4, PoolMode::kAvg>(image, planeSize, c, s.samples.data(), binsPerChannel, count, outRoi);
        }
        for (; c < p.channels; ++c)
        {
            poolChannels<T, 1, PoolMode::kAvg>(image, planeSize, c, s.samples.data(), binsPerChannel, count, outRoi);
        }
    }
}

} // namespace

template <typename T>
void roiAlignCpu(
    FeatureLevels<T> const& levels, RoiSource const& src, PoolParams const& params, T* out, int32_t numThreads)
{
    int64_t const numRois = src.numRois;
    if (numRois <= 0)
    {
        return;
    }
    if (numThreads <= 0)
    {
        numThreads = static_cast<int32_t>(std::max(1u, std::thread::hardware_concurrency()));
    }
    // Small chunks balance RoIs of different cost (adaptive sampling grids differ per RoI).
    constexpr int64_t kChunk = 4;
    int64_t const chunks = (numRois + kChunk - 1) / kChunk;
    numThreads = static_cast<int32_t>(std::min<int64_t>(numThreads, chunks));
    std::atomic<int64_t> next{0};
    auto worker = [&]() {
        Scratch scratch;
        for (;;)
        {
            int64_t const chunk = next.fetch_add(1, std::memory_order_relaxed);
            if (chunk >= chunks)
            {
                break;
            }
            int64_t const end = std::min(numRois, (chunk + 1) * kChunk);
            for (int64_t r = chunk * kChunk; r < end; ++r)
            {
                poolOneRoi(levels, src, params, r, out, scratch);
            }
        }
    };
    if (numThreads <= 1)
    {
        worker();
        return;
    }
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(numThreads - 1));
    for (int32_t i = 1; i < numThreads; ++i)
    {
        pool.emplace_back(worker);
    }
    worker();
    for (auto& t : pool)
    {
        t.join();
    }
}

template void roiAlignCpu<float>(FeatureLevels<float> const&, RoiSource const&, PoolParams const&, float*, int32_t);
template void roiAlignCpu<Half>(FeatureLevels<Half> const&, RoiSource const&, PoolParams const&, Half*, int32_t);

template <typename T>
void roiAlignElementwiseCpu(FeatureLevels<T> const& levels, RoiSource const& src, PoolParams const& params, T* out)
{
    int64_t const total = src.numRois * params.channels * static_cast<int64_t>(params.outH) * params.outW;
    for (int64_t i = 0; i < total; ++i)
    {
        storeFromFloat(out, i, poolOutputElement(levels, src, params, i));
    }
}

template void roiAlignElementwiseCpu<float>(FeatureLevels<float> const&, RoiSource const&, PoolParams const&, float*);
template void roiAlignElementwiseCpu<Half>(FeatureLevels<Half> const&, RoiSource const&, PoolParams const&, Half*);

void levelIndicesCpu(float const* rois, int64_t numRois, float canonicalScale, int32_t canonicalLevel,
    int32_t firstLevel, int32_t numLevels, int32_t* outLevels)
{
    for (int64_t r = 0; r < numRois; ++r)
    {
        Box const box = loadBox(rois, false, r);
        outLevels[r] = levelIndexOfBox(box, canonicalScale, canonicalLevel, firstLevel, numLevels);
    }
}

} // namespace mrd
