#include "roiAlignCApi.h"

#include "roiAlignArgs.h"
#include "roiAlignCpu.h"
#include "roiAlignOp.h"
#if defined(MRD_WITH_CUDA)
#include "roiAlignKernel.h"
#endif

#include <cstddef>
#include <exception>
#include <string>

static_assert(MRD_FIELD_INT == static_cast<int32_t>(mrd::FieldKind::kInt)
        && MRD_FIELD_FLOAT == static_cast<int32_t>(mrd::FieldKind::kFloat)
        && MRD_FIELD_FLOATS == static_cast<int32_t>(mrd::FieldKind::kFloats)
        && MRD_FIELD_STRING == static_cast<int32_t>(mrd::FieldKind::kString),
    "C ABI field kind codes are FieldKind values");

namespace
{

thread_local std::string gLastError;

int32_t fail(std::string message)
{
    gLastError = std::move(message);
    return MRD_STATUS_INVALID_ARGUMENT;
}

//! The members of MrdRoiAlignArgs in declaration order, for mrd_args_field().
// clang-format off
#define MRD_ARGS_MEMBERS(X) \
    X(dtype) \
    X(num_levels) \
    X(features) \
    X(heights) \
    X(widths) \
    X(spatial_scales) \
    X(batch) \
    X(channels) \
    X(rois) \
    X(rois_dtype) \
    X(index_type) \
    X(batch_indices) \
    X(rois_per_image) \
    X(num_rois) \
    X(out_h) \
    X(out_w) \
    X(sampling_ratio) \
    X(aligned) \
    X(mode) \
    X(canonical_scale) \
    X(canonical_level) \
    X(implementation) \
    X(num_threads) \
    X(reserved) \
    X(out) \
    X(stream)
// clang-format on

struct ArgsMember
{
    char const* name;
    size_t offset;
    size_t size;
};

#define MRD_ARGS_MEMBER(NAME) ArgsMember{#NAME, offsetof(MrdRoiAlignArgs, NAME), sizeof(MrdRoiAlignArgs::NAME)},
constexpr ArgsMember kArgsMembers[] = {MRD_ARGS_MEMBERS(MRD_ARGS_MEMBER)};
#undef MRD_ARGS_MEMBER
constexpr int32_t kNumArgsMembers = static_cast<int32_t>(sizeof(kArgsMembers) / sizeof(kArgsMembers[0]));
// A member added to the struct but not to the list would leave a gap the layout test could miss at the end.
static_assert(
    kArgsMembers[kNumArgsMembers - 1].offset + kArgsMembers[kNumArgsMembers - 1].size == sizeof(MrdRoiAlignArgs),
    "MRD_ARGS_MEMBERS must list every member of MrdRoiAlignArgs, the last one last");

} // namespace

#if defined(MRD_WITH_CUDA)
int32_t mrd::launchRoiAlignCuda(MrdRoiAlignArgs const& a)
{
    return static_cast<int32_t>(withFeatureType(a.dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        return launchRoiAlign<T>(featureLevels<T>(a), roiSource(a), poolParams(a), static_cast<T*>(a.out),
            static_cast<cudaStream_t>(a.stream));
    }));
}
#endif

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

int32_t mrd_roi_align_cpu(MrdRoiAlignArgs const* args)
{
    if (args == nullptr)
    {
        return fail("mrd_roi_align_cpu: args is NULL");
    }
    MrdRoiAlignArgs const& a = *args;
    if (std::string msg = mrd::checkArgs(a); !msg.empty())
    {
        return fail(std::move(msg));
    }
    try
    {
        mrd::withFeatureType(a.dtype, [&](auto tag) {
            using T = typename decltype(tag)::type;
            mrd::FeatureLevels<T> const levels = mrd::featureLevels<T>(a);
            if (a.implementation == MRD_IMPLEMENTATION_KERNEL)
            {
                mrd::roiAlignElementwiseCpu(levels, mrd::roiSource(a), mrd::poolParams(a), static_cast<T*>(a.out));
            }
            else
            {
                mrd::roiAlignCpu(levels, mrd::roiSource(a), mrd::poolParams(a), static_cast<T*>(a.out), a.num_threads);
            }
        });
    }
    catch (std::exception const& e)
    {
        // e.g. std::bad_alloc or std::system_error from thread creation: never let it cross the C boundary.
        return fail(std::string("RoIAlign CPU failed: ") + e.what());
    }
    gLastError.clear();
    return 0;
}

int32_t mrd_roi_align_cuda(MrdRoiAlignArgs const* args)
{
    if (args == nullptr)
    {
        return fail("mrd_roi_align_cuda: args is NULL");
    }
    MrdRoiAlignArgs const& a = *args;
    if (std::string msg = mrd::checkArgs(a); !msg.empty())
    {
        return fail(std::move(msg));
    }
    if (a.implementation != MRD_IMPLEMENTATION_KERNEL)
    {
        return fail("the CUDA entry runs the kernel only: implementation must be MRD_IMPLEMENTATION_KERNEL ("
            + std::to_string(MRD_IMPLEMENTATION_KERNEL) + ")");
    }
#if defined(MRD_WITH_CUDA)
    int32_t const status = mrd::launchRoiAlignCuda(a);
    if (status != 0)
    {
        gLastError
            = std::string("RoIAlign CUDA launch failed: ") + cudaGetErrorString(static_cast<cudaError_t>(status));
        return status;
    }
    gLastError.clear();
    return 0;
#else
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

char const* mrd_plugin_version(void)
{
    return mrd::kPluginVersion;
}

int32_t mrd_op_count(void)
{
    return mrd::kNumOps;
}

char const* mrd_op_name(int32_t op)
{
    return op >= 0 && op < mrd::kNumOps ? mrd::opName(static_cast<mrd::RoiAlignOp>(op)) : nullptr;
}

int32_t mrd_op_field_count(void)
{
    return mrd::kNumOpFields;
}

int32_t mrd_op_field(int32_t i, char const** name, int32_t* kind, int32_t* ops, char const** default_text)
{
    if (i < 0 || i >= mrd::kNumOpFields || name == nullptr || kind == nullptr || ops == nullptr
        || default_text == nullptr)
    {
        return -1;
    }
    mrd::OpField const& f = mrd::kOpFields[i];
    *name = f.name;
    *kind = static_cast<int32_t>(f.kind);
    *ops = f.ops;
    *default_text = f.defaultText;
    return 0;
}

int64_t mrd_args_size(void)
{
    return static_cast<int64_t>(sizeof(MrdRoiAlignArgs));
}

int32_t mrd_args_field_count(void)
{
    return kNumArgsMembers;
}

int32_t mrd_args_field(int32_t i, char const** name, int64_t* offset, int64_t* size)
{
    if (i < 0 || i >= kNumArgsMembers || name == nullptr || offset == nullptr || size == nullptr)
    {
        return -1;
    }
    *name = kArgsMembers[i].name;
    *offset = static_cast<int64_t>(kArgsMembers[i].offset);
    *size = static_cast<int64_t>(kArgsMembers[i].size);
    return 0;
}

} // extern "C"
