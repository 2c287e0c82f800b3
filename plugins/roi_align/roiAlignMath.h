// RoIAlign math shared by the CPU implementation and the CUDA kernel.
//
// Defined here, __host__ __device__, for both: the sampling positions, the adaptive sampling ratio, the bilinear
// taps of each axis (edges, clamping, per-axis weights), the four-tap weight products and the interpolation
// (bilinearTaps(), interpolate()), the avg/max reduction (Reduce, BinReducer), the FPN level of a box and the fp16
// conversion, so the CPU code and the kernel cannot drift apart on them. poolOutputElement() is what each CUDA
// thread runs. The CPU fast path (roiAlignCpu.cpp) calls the same functions in another loop order: it keeps the
// BilinearTaps of every sample of a RoI in a table and runs the reduction over blocks of channels; the tests
// compare it with poolOutputElement() run on the CPU (roiAlignElementwiseCpu).
//
// Conventions (see plugins/README.md and the RoIAlign op contract in docs/architecture.md):
//   * boxes are x1 y1 x2 y2 in input-image pixels; a level's spatial scale maps them to feature pixels;
//   * aligned = half-pixel offset (detectron2 ROIAlignV2, ONNX coordinate_transformation_mode="half_pixel");
//     legacy (aligned = false) forces the RoI size to at least 1 (torchvision Mask R-CNN, "output_half_pixel");
//   * a sample with y < -1 or y > H (likewise x) counts as 0, otherwise it is clamped into the map and
//     interpolated bilinearly (torchvision / ONNX reference);
//   * avg divides by the number of samples of the bin; max takes the maximum of the interpolated sample values;
//   * coordinates and accumulation are fp32 whatever the tensor type;
//   * a box with a NaN or infinite coordinate (or one whose position or size on the level is not a finite fp32
//     number) pools to zeros, like an empty box; it maps to the first level;
//   * samples per bin and axis are at most kMaxSamplingRatio: callers refuse a larger explicit sampling_ratio, and
//     the adaptive count ceil(roi_size / out_size) is capped there, so a bin never has more than
//     kMaxSamplingRatio^2 samples and every count fits in int32.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define MRD_HD __host__ __device__ __forceinline__
#else
#include <math.h>
#define MRD_HD inline
#endif

namespace mrd
{

//! Most feature levels a multi-level op accepts (P2..P9 would be 8; Mask R-CNN uses 4).
constexpr int kMaxLevels = 8;

//! Most samples per bin along one axis, for an explicit sampling_ratio (larger ones are refused by the C ABI, the
//! Python entries and the TensorRT plugin's field checks) and for the adaptive count (capped here).
//! Why 1024: the adaptive count is the bin size in feature pixels, and 1024 keeps it exact for bins up to 1024
//! pixels (7 bins: boxes up to 7168 pixels on their level, far past any real feature map), while bounding the
//! work of one bin to 2^20 samples (the GPU thread of one output element loops over all of them) and keeping
//! gridH * gridW, outH * gridH and the sample counts well inside int32.
constexpr int32_t kMaxSamplingRatio = 1024;
static_assert(static_cast<int64_t>(kMaxSamplingRatio) * kMaxSamplingRatio <= (int64_t{1} << 30),
    "samples per bin must fit in int32 with room to spare");

//! True for a finite float (not NaN, not +-inf). Tests the exponent bits, so it holds under fast-math flags that
//! let the compiler assume no NaN/inf exist.
MRD_HD bool isFiniteFloat(float v)
{
#if defined(__CUDA_ARCH__)
    uint32_t const bits = __float_as_uint(v);
#else
    union
    {
        float f;
        uint32_t u;
    } cvt{v};
    uint32_t const bits = cvt.u;
#endif
    return (bits & 0x7F800000u) != 0x7F800000u;
}

enum class PoolMode : int32_t
{
    kAvg = 0,
    kMax = 1,
};

//! IEEE binary16 storage; layout-compatible with CUDA's __half so device pointers can be reinterpreted.
struct Half
{
    uint16_t bits;
};

MRD_HD float halfToFloat(Half h)
{
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(h.bits));
#else
    // Software conversion: the host compiler may have no native half type.
    uint32_t const sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
    uint32_t exp = (h.bits >> 10) & 0x1Fu;
    uint32_t mant = h.bits & 0x3FFu;
    uint32_t bits;
    if (exp == 0x1Fu)
    {
        bits = sign | 0x7F800000u | (mant << 13); // inf / nan
    }
    else if (exp != 0)
    {
        bits = sign | ((exp + 112u) << 23) | (mant << 13); // normal: rebias 15 -> 127
    }
    else if (mant == 0)
    {
        bits = sign; // signed zero
    }
    else
    {
        // Subnormal half: normalise the mantissa into an fp32 normal.
        exp = 113u;
        while ((mant & 0x400u) == 0)
        {
            mant <<= 1;
            --exp;
        }
        bits = sign | (exp << 23) | ((mant & 0x3FFu) << 13);
    }
    union
    {
        uint32_t u;
        float f;
    } cvt{bits};
    return cvt.f;
#endif
}

MRD_HD Half floatToHalf(float f)
{
#if defined(__CUDA_ARCH__)
    return Half{__half_as_ushort(__float2half_rn(f))};
#else
    // Round-to-nearest-even conversion, the same rounding as __float2half_rn and numpy's astype(float16).
    union
    {
        float f;
        uint32_t u;
    } cvt{f};
    uint32_t const x = cvt.u;
    uint16_t const sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    uint32_t const absBits = x & 0x7FFFFFFFu;
    if (absBits >= 0x7F800000u)
    {
        // inf stays inf; nan stays a quiet nan
        return Half{static_cast<uint16_t>(sign | 0x7C00u | (absBits > 0x7F800000u ? 0x200u : 0u))};
    }
    if (absBits >= 0x477FF000u)
    {
        return Half{static_cast<uint16_t>(sign | 0x7C00u)}; // rounds to a value beyond the half range
    }
    if (absBits < 0x38800000u)
    {
        // Result is subnormal (or zero): shift the implicit-1 mantissa into place, rounding to nearest even.
        if (absBits < 0x33000000u)
        {
            return Half{sign}; // below half the smallest subnormal
        }
        uint32_t const e = absBits >> 23;
        uint32_t const m = (absBits & 0x7FFFFFu) | 0x800000u;
        uint32_t const shift = 126u - e; // 14..24
        uint32_t result = m >> shift;
        uint32_t const rem = m & ((1u << shift) - 1u);
        uint32_t const halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (result & 1u)))
        {
            ++result;
        }
        return Half{static_cast<uint16_t>(sign | result)};
    }
    uint32_t result = ((absBits - 0x38000000u) >> 13); // rebias 127 -> 15, drop 13 mantissa bits
    uint32_t const rem = absBits & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (result & 1u)))
    {
        ++result; // may carry into the exponent, which is the correct rounding
    }
    return Half{static_cast<uint16_t>(sign | result)};
#endif
}

//! Load one tensor element as fp32 and store an fp32 result in the tensor's type.
MRD_HD float loadAsFloat(float const* p, int64_t i)
{
    return p[i];
}
MRD_HD float loadAsFloat(Half const* p, int64_t i)
{
    return halfToFloat(p[i]);
}
MRD_HD void storeFromFloat(float* p, int64_t i, float v)
{
    p[i] = v;
}
MRD_HD void storeFromFloat(Half* p, int64_t i, float v)
{
    p[i] = floatToHalf(v);
}

//! A box read from a rois tensor that is fp32 or fp16 (coordinates are always handled in fp32).
struct Box
{
    float x1, y1, x2, y2;
};

MRD_HD Box loadBox(void const* rois, bool roisHalf, int64_t roi)
{
    if (roisHalf)
    {
        Half const* p = static_cast<Half const*>(rois) + roi * 4;
        return Box{halfToFloat(p[0]), halfToFloat(p[1]), halfToFloat(p[2]), halfToFloat(p[3])};
    }
    float const* p = static_cast<float const*>(rois) + roi * 4;
    return Box{p[0], p[1], p[2], p[3]};
}

MRD_HD bool boxIsFinite(Box const& box)
{
    return isFiniteFloat(box.x1) && isFiniteFloat(box.y1) && isFiniteFloat(box.x2) && isFiniteFloat(box.y2);
}

//! Where the bins of one RoI lie on one feature level, in that level's pixels.
struct RoiGeometry
{
    float startY, startX; //!< top-left corner of the RoI
    float binH, binW;     //!< size of one output bin (negative for an inverted box in aligned mode)
    int32_t gridH, gridW; //!< samples per bin along each axis, 0..kMaxSamplingRatio (0 = empty RoI: zeros)
};

//! Samples of one bin (0 for an empty RoI); at most kMaxSamplingRatio^2.
MRD_HD int32_t samplesPerBin(RoiGeometry const& g)
{
    return g.gridH * g.gridW;
}

//! Samples per bin along one axis of extent ``roiSize`` (finite) split into ``outSize`` bins.
MRD_HD int32_t gridCount(float roiSize, int32_t outSize, int32_t samplingRatio)
{
    if (samplingRatio > 0)
    {
        // Larger ratios are refused before they get here; clamping keeps the header safe on its own.
        return samplingRatio < kMaxSamplingRatio ? samplingRatio : kMaxSamplingRatio;
    }
    // Compared as floats before the cast: a float beyond int32 range cast to int is undefined behaviour.
    float const n = ceilf(roiSize / static_cast<float>(outSize));
    if (!(n > 0.0f))
    {
        return 0; // empty or inverted box (aligned mode)
    }
    return n < static_cast<float>(kMaxSamplingRatio) ? static_cast<int32_t>(n) : kMaxSamplingRatio;
}

//! Bin layout of ``box`` at ``spatialScale``. ``samplingRatio`` 0 = adaptive: ceil(roi_size / out_size) per axis,
//! capped at kMaxSamplingRatio. A box that is not finite on this level (a NaN or infinite coordinate, or a
//! position or size that overflows fp32 after scaling) has no meaningful samples, and a NaN turned into a pixel
//! index would address arbitrary memory: its geometry is empty (grid 0), so every bin of it is 0.
MRD_HD RoiGeometry roiGeometry(
    Box const& box, float spatialScale, bool aligned, int32_t outH, int32_t outW, int32_t samplingRatio)
{
    RoiGeometry g{0.0f, 0.0f, 0.0f, 0.0f, 0, 0};
    float const offset = aligned ? 0.5f : 0.0f;
    float const startX = box.x1 * spatialScale - offset;
    float const startY = box.y1 * spatialScale - offset;
    float const endX = box.x2 * spatialScale - offset;
    float const endY = box.y2 * spatialScale - offset;
    float roiW = endX - startX;
    float roiH = endY - startY;
    // Checked before the legacy clamp below: fmaxf(NaN, 1) is 1, which would hide a NaN end coordinate.
    if (!(isFiniteFloat(startX) && isFiniteFloat(startY) && isFiniteFloat(endX) && isFiniteFloat(endY)
            && isFiniteFloat(roiW) && isFiniteFloat(roiH)))
    {
        return g;
    }
    if (!aligned)
    {
        // Legacy behaviour: malformed (empty or inverted) RoIs are forced to size 1.
        roiW = fmaxf(roiW, 1.0f);
        roiH = fmaxf(roiH, 1.0f);
    }
    g.startY = startY;
    g.startX = startX;
    g.binH = roiH / static_cast<float>(outH);
    g.binW = roiW / static_cast<float>(outW);
    g.gridH = gridCount(roiH, outH, samplingRatio);
    g.gridW = gridCount(roiW, outW, samplingRatio);
    return g;
}

//! Coordinate of sample ``i`` (0..grid-1) of bin ``p`` along one axis. Same operation order as torchvision so
//! fp32 results agree to the last bits.
MRD_HD float sampleCoord(float start, float bin, int32_t p, int32_t i, int32_t grid)
{
    return start + static_cast<float>(p) * bin + (static_cast<float>(i) + 0.5f) * bin / static_cast<float>(grid);
}

//! Bilinear taps of one sample coordinate along one axis of length ``size``.
struct AxisTaps
{
    int32_t low, high; //!< the two neighbouring pixel indices (equal at the border)
    float wLow, wHigh; //!< their weights (both 0 when the sample lies outside [-1, size])
};

MRD_HD AxisTaps axisTaps(float v, int32_t size)
{
    AxisTaps t;
    // Written as !(inside) so that a NaN coordinate, for which every comparison is false, counts as outside
    // instead of reaching the float-to-int cast below (undefined for NaN; a huge negative index in practice).
    if (!(v >= -1.0f && v <= static_cast<float>(size)) || size <= 0)
    {
        t.low = t.high = 0;
        t.wLow = t.wHigh = 0.0f; // outside: the sample counts as 0
        return t;
    }
    if (v <= 0.0f)
    {
        v = 0.0f;
    }
    int32_t low = static_cast<int32_t>(v);
    int32_t high;
    if (low >= size - 1)
    {
        high = low = size - 1;
        v = static_cast<float>(low);
    }
    else
    {
        high = low + 1;
    }
    float const l = v - static_cast<float>(low);
    t.low = low;
    t.high = high;
    t.wLow = 1.0f - l;
    t.wHigh = l;
    return t;
}

//! One bilinear sample resolved to its four neighbours in a row-major [H, W] plane: their offsets and weights.
//! ``Index`` is int64_t for any plane, or int32_t where the caller knows the plane has fewer than 2^31 pixels (the
//! CPU fast path keeps a table of these per RoI and halves its size so).
template <typename Index>
struct BilinearTaps
{
    Index o1, o2, o3, o4; //!< (low y, low x), (low y, high x), (high y, low x), (high y, high x)
    float w1, w2, w3, w4; //!< their weights; all 0 for a sample outside the map
};

//! The taps of the sample whose axis taps are ``ty`` and ``tx``. The weights are the products torchvision forms
//! (hy*hx, hy*lx, ly*hx, ly*lx), so sums match it bit for bit in most cases.
template <typename Index>
MRD_HD BilinearTaps<Index> bilinearTaps(AxisTaps const& ty, AxisTaps const& tx, int32_t width)
{
    Index const rowLow = static_cast<Index>(ty.low) * width;
    Index const rowHigh = static_cast<Index>(ty.high) * width;
    BilinearTaps<Index> t;
    t.o1 = rowLow + tx.low;
    t.o2 = rowLow + tx.high;
    t.o3 = rowHigh + tx.low;
    t.o4 = rowHigh + tx.high;
    t.w1 = ty.wLow * tx.wLow;
    t.w2 = ty.wLow * tx.wHigh;
    t.w3 = ty.wHigh * tx.wLow;
    t.w4 = ty.wHigh * tx.wHigh;
    return t;
}

//! Bilinearly interpolated value of one sample: the weighted sum of its four taps, in this order (an outside sample
//! has zero weights and yields exactly 0).
template <typename T, typename Index>
MRD_HD float interpolate(T const* plane, BilinearTaps<Index> const& t)
{
    return t.w1 * loadAsFloat(plane, t.o1) + t.w2 * loadAsFloat(plane, t.o2) + t.w3 * loadAsFloat(plane, t.o3)
        + t.w4 * loadAsFloat(plane, t.o4);
}

//! Bilinearly interpolated value at the sample given by its two axis taps (row-major [H, W] plane).
template <typename T>
MRD_HD float interpolate(T const* plane, int32_t width, AxisTaps const& ty, AxisTaps const& tx)
{
    return interpolate(plane, bilinearTaps<int64_t>(ty, tx, width));
}

//! FPN level number of a spatial scale: 1/4 -> 2, 1/32 -> 5 (the scales are powers of two).
MRD_HD int32_t levelNumberOfScale(float spatialScale)
{
    return static_cast<int32_t>(floorf(-log2f(spatialScale) + 0.5f));
}

//! Index (0-based, into the given levels) of the level a box is pooled from:
//! floor(canonicalLevel + log2(sqrt(area) / canonicalScale) + 1e-6), clamped to [firstLevel, firstLevel+n-1].
//! Area has no +1 (torchvision's LevelMapper). A box with negative area (inverted on one axis) has no defined
//! level; it goes to the first level, like a zero-area box. So does a box with a non-finite coordinate (it pools
//! to zeros on whatever level; the first one makes the choice explicit).
MRD_HD int32_t levelIndexOfBox(
    Box const& box, float canonicalScale, int32_t canonicalLevel, int32_t firstLevel, int32_t numLevels)
{
    if (numLevels <= 1 || !boxIsFinite(box))
    {
        return 0;
    }
    float const area = (box.x2 - box.x1) * (box.y2 - box.y1);
    float const s = sqrtf(area);
    float const k = floorf(static_cast<float>(canonicalLevel) + log2f(s / canonicalScale) + 1e-6f);
    if (!(k >= static_cast<float>(firstLevel))) // also catches NaN
    {
        return 0;
    }
    int32_t const last = firstLevel + numLevels - 1;
    if (k >= static_cast<float>(last))
    {
        return numLevels - 1;
    }
    return static_cast<int32_t>(k) - firstLevel;
}

//! The reduction of the sample values of one bin in mode ``M``, as steps on an fp32 accumulator: the CPU fast path
//! keeps several accumulators in registers (one per channel of a block) and calls these directly; BinReducer is
//! the same steps with the mode chosen at run time.
template <PoolMode M>
struct Reduce
{
    static MRD_HD float init()
    {
        return M == PoolMode::kMax ? -3.402823466e38f : 0.0f;
    }
    static MRD_HD float add(float acc, float v)
    {
        if (M == PoolMode::kMax)
        {
            return v > acc ? v : acc;
        }
        return acc + v;
    }
    //! ``count`` = number of samples added, > 0 (an empty bin is 0 in both modes: BinReducer::result).
    static MRD_HD float result(float acc, int32_t count)
    {
        return M == PoolMode::kMax ? acc : acc / static_cast<float>(count);
    }
};

//! Running reduction of the sample values of one bin, the mode chosen at run time.
struct BinReducer
{
    float acc;
    PoolMode mode;

    MRD_HD explicit BinReducer(PoolMode m)
        : acc(m == PoolMode::kMax ? Reduce<PoolMode::kMax>::init() : Reduce<PoolMode::kAvg>::init())
        , mode(m)
    {
    }
    MRD_HD void add(float v)
    {
        acc = mode == PoolMode::kMax ? Reduce<PoolMode::kMax>::add(acc, v) : Reduce<PoolMode::kAvg>::add(acc, v);
    }
    //! ``count`` = number of samples added; an empty bin (count 0) gives 0 in both modes.
    MRD_HD float result(int32_t count) const
    {
        if (count <= 0)
        {
            return 0.0f;
        }
        return mode == PoolMode::kMax ? Reduce<PoolMode::kMax>::result(acc, count)
                                      : Reduce<PoolMode::kAvg>::result(acc, count);
    }
};

//! One output bin: the full per-bin computation, used directly by the CUDA kernel and as the reference
//! structure for the CPU path (which hoists the taps out of the channel loop).
template <typename T>
MRD_HD float poolBin(
    T const* plane, int32_t height, int32_t width, RoiGeometry const& g, int32_t ph, int32_t pw, PoolMode mode)
{
    BinReducer red(mode);
    for (int32_t iy = 0; iy < g.gridH; ++iy)
    {
        AxisTaps const ty = axisTaps(sampleCoord(g.startY, g.binH, ph, iy, g.gridH), height);
        for (int32_t ix = 0; ix < g.gridW; ++ix)
        {
            AxisTaps const tx = axisTaps(sampleCoord(g.startX, g.binW, pw, ix, g.gridW), width);
            red.add(interpolate(plane, width, ty, tx));
        }
    }
    return red.result(samplesPerBin(g));
}

//! The feature maps an op pools from: one level for RoIAlign, P2..P5 (or any run of levels) for the
//! multi-level op. Each level is [B, C, H_l, W_l], contiguous NCHW.
template <typename T>
struct FeatureLevels
{
    T const* data[kMaxLevels];
    int32_t height[kMaxLevels];
    int32_t width[kMaxLevels];
    float scale[kMaxLevels];
    int32_t numLevels;
    int32_t firstLevel; //!< FPN level number of data[0] (2 for P2), from its spatial scale
};

//! Where the RoIs come from: ``rois`` [numRois, 4] (fp32 or fp16). The batch image of RoI r is
//! batchIndices[r] (int32 or int64) for RoIAlign, or r / roisPerImage for the multi-level op ([B, R, 4] rois).
struct RoiSource
{
    void const* rois;
    bool roisHalf;
    void const* batchIndices; //!< nullptr for the multi-level op
    bool indicesInt64;
    int64_t roisPerImage;
    int64_t numRois;
};

MRD_HD int64_t batchOfRoi(RoiSource const& src, int64_t roi)
{
    if (src.batchIndices == nullptr)
    {
        return src.roisPerImage > 0 ? roi / src.roisPerImage : 0;
    }
    return src.indicesInt64 ? static_cast<int64_t const*>(src.batchIndices)[roi]
                            : static_cast<int64_t>(static_cast<int32_t const*>(src.batchIndices)[roi]);
}

//! The op's attributes.
struct PoolParams
{
    int32_t channels;
    int32_t batch;
    int32_t outH, outW;
    int32_t samplingRatio;
    bool aligned;
    PoolMode mode;
    float canonicalScale;
    int32_t canonicalLevel;
};

//! Value of output element ``index`` of [numRois, C, outH, outW]: everything one CUDA thread does. The CPU's
//! elementwise path runs this same function, which is how the kernel's code path is tested without a GPU.
template <typename T>
MRD_HD float poolOutputElement(FeatureLevels<T> const& levels, RoiSource const& src, PoolParams const& p, int64_t index)
{
    int32_t const pw = static_cast<int32_t>(index % p.outW);
    int32_t const ph = static_cast<int32_t>((index / p.outW) % p.outH);
    int32_t const c = static_cast<int32_t>((index / (static_cast<int64_t>(p.outW) * p.outH)) % p.channels);
    int64_t const roi = index / (static_cast<int64_t>(p.outW) * p.outH * p.channels);
    int64_t const b = batchOfRoi(src, roi);
    if (b < 0 || b >= p.batch)
    {
        return 0.0f;
    }
    Box const box = loadBox(src.rois, src.roisHalf, roi);
    int32_t const level = levelIndexOfBox(box, p.canonicalScale, p.canonicalLevel, levels.firstLevel, levels.numLevels);
    int32_t const height = levels.height[level];
    int32_t const width = levels.width[level];
    RoiGeometry const g = roiGeometry(box, levels.scale[level], p.aligned, p.outH, p.outW, p.samplingRatio);
    T const* plane = levels.data[level] + (b * p.channels + c) * static_cast<int64_t>(height) * width;
    return poolBin(plane, height, width, g, ph, pw, p.mode);
}

} // namespace mrd
