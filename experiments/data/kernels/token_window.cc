// TbpttTokenWindow: rows of token ids read straight out of a memory-mapped id file.
//
//   window[r, j] = ids[starts[r] + j],  r < rows, j < length,  as int32
//
// where ids are the `num_tokens` ids of type `dtype` (uint8, uint16, uint32 or int32, native byte
// order, as token_cache.py writes them) stored from byte `offset` of the file `path`. A position
// at or past `num_tokens` is an error, or reads 0 with `pad_past_end` (the evaluation layout pads
// the ragged end of its last rows and masks those positions). No Python runs: the training step
// reads its window without the interpreter's lock.
//
// The file is mapped once per process, read-only and MAP_SHARED: the pages are the page cache's,
// which the kernel may drop at any time, so the process's anonymous memory does not grow with the
// file. The mapping is cached per path and identified by the file's device, inode, size and
// modification time, which are checked (one stat) on every call: a file replaced under the same
// path (token_cache.py renames entries into place) is mapped again, and the old mapping is released
// when the last call reading it returns. A file truncated while it is mapped is not supported (as
// with any mmap, reading a page that no longer exists would be a SIGBUS); the token cache never
// truncates an entry.

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tbptt {
namespace {

using tensorflow::DataType;
using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Status;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;
namespace errors = tensorflow::errors;

// One read-only mapping of a whole file, unmapped when the last reader lets go of it.
struct Mapping {
  dev_t device = 0;
  ino_t inode = 0;
  off_t size = 0;
  timespec modified = {0, 0};
  const char* data = nullptr;  // nullptr for an empty file (mmap cannot map 0 bytes)

  bool Describes(const struct stat& st) const {
    return device == st.st_dev && inode == st.st_ino && size == st.st_size &&
           modified.tv_sec == st.st_mtim.tv_sec && modified.tv_nsec == st.st_mtim.tv_nsec;
  }
  ~Mapping() {
    if (data != nullptr) munmap(const_cast<char*>(data), static_cast<size_t>(size));
  }
};

// The process's mappings by path; never destroyed, so no exit-time destructor races a reader.
std::mutex& CacheMutex() {
  static std::mutex* mutex = new std::mutex;
  return *mutex;
}
std::unordered_map<std::string, std::shared_ptr<const Mapping>>& Cache() {
  static auto* cache = new std::unordered_map<std::string, std::shared_ptr<const Mapping>>;
  return *cache;
}

Status CannotRead(const std::string& path, int error) {
  return errors::InvalidArgument("cannot read the token-id file ", path, ": ", strerror(error));
}

// The current mapping of `path`, mapping the file (again) if it is new or has changed.
Status Map(const std::string& path, std::shared_ptr<const Mapping>* out) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return CannotRead(path, errno);
  std::lock_guard<std::mutex> lock(CacheMutex());
  auto& cache = Cache();
  auto found = cache.find(path);
  if (found != cache.end() && found->second->Describes(st)) {
    *out = found->second;
    return Status();
  }
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return CannotRead(path, errno);
  if (fstat(fd, &st) != 0) {  // the file opened, should it have been replaced since the stat
    const int error = errno;
    close(fd);
    return CannotRead(path, error);
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->device = st.st_dev;
  mapping->inode = st.st_ino;
  mapping->size = st.st_size;
  mapping->modified = st.st_mtim;
  if (st.st_size > 0) {
    void* data = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
    if (data == MAP_FAILED) {
      const int error = errno;
      close(fd);
      return CannotRead(path, error);
    }
    mapping->data = static_cast<const char*>(data);
  }
  close(fd);  // the mapping keeps the file's pages reachable
  cache[path] = mapping;
  *out = std::move(mapping);
  return Status();
}

template <typename Id>
void Widen(const char* from, int64_t count, int32_t* to) {
  const Id* ids = reinterpret_cast<const Id*>(from);  // offset and starts keep ids aligned
  for (int64_t j = 0; j < count; ++j) to[j] = static_cast<int32_t>(ids[j]);
}

class TokenWindowOp : public OpKernel {
 public:
  explicit TokenWindowOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    DataType dtype;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("path", &path_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dtype", &dtype));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("offset", &offset_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_tokens", &num_tokens_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pad_past_end", &pad_past_end_));
    switch (dtype) {
      case tensorflow::DT_UINT8: widen_ = Widen<uint8_t>; item_ = 1; break;
      case tensorflow::DT_UINT16: widen_ = Widen<uint16_t>; item_ = 2; break;
      case tensorflow::DT_UINT32: widen_ = Widen<uint32_t>; item_ = 4; break;
      default: widen_ = Widen<int32_t>; item_ = 4; break;  // DT_INT32, the attr allows no other
    }
    dtype_name_ = tensorflow::DataTypeString(dtype);
    OP_REQUIRES(ctx, offset_ >= 0 && offset_ % item_ == 0,
                errors::InvalidArgument("offset must be a non-negative multiple of ", item_,
                                        " (the size of a ", dtype_name_, " id), got ", offset_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& starts = ctx->input(0);
    const Tensor& length_tensor = ctx->input(1);
    OP_REQUIRES(ctx, starts.dims() == 1,
                errors::InvalidArgument("starts must be [rows], got ",
                                        starts.shape().DebugString()));
    OP_REQUIRES(ctx, length_tensor.dims() == 0,
                errors::InvalidArgument("length must be a scalar, got ",
                                        length_tensor.shape().DebugString()));
    const int64_t length = length_tensor.scalar<int64_t>()();
    OP_REQUIRES(ctx, length >= 0, errors::InvalidArgument("length must be >= 0, got ", length));

    std::shared_ptr<const Mapping> mapping;
    OP_REQUIRES_OK(ctx, Map(path_, &mapping));
    const int64_t needed = offset_ + num_tokens_ * item_;
    OP_REQUIRES(ctx, mapping->size >= needed,
                errors::InvalidArgument("the token-id file ", path_, " holds ", mapping->size,
                                        " bytes, fewer than the ", needed, " that ", num_tokens_,
                                        " ", dtype_name_, " ids from byte ", offset_, " need"));

    const auto rows = starts.vec<int64_t>();
    Tensor* window = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows.size(), length}), &window));
    int32_t* out = window->flat<int32_t>().data();
    const char* ids = mapping->data == nullptr ? nullptr : mapping->data + offset_;
    for (int64_t r = 0; r < rows.size(); ++r, out += length) {
      const int64_t start = rows(r);
      OP_REQUIRES(ctx, start >= 0,
                  errors::InvalidArgument("row ", r, " of the window starts at id ", start,
                                          " of ", path_, "; starts must be >= 0"));
      const int64_t available = start < num_tokens_ ? num_tokens_ - start : 0;
      OP_REQUIRES(ctx, pad_past_end_ || length <= available,
                  errors::InvalidArgument("row ", r, " of the window reads ids [", start, ", ",
                                          start + length, ") of ", path_, " (", num_tokens_,
                                          " ids from byte ", offset_, ")"));
      const int64_t count = std::min(length, available);
      if (count > 0) widen_(ids + start * item_, count, out);
      std::fill(out + count, out + length, 0);
    }
  }

 private:
  std::string path_;
  std::string dtype_name_;
  int64_t offset_ = 0;
  int64_t num_tokens_ = 0;
  bool pad_past_end_ = false;
  int64_t item_ = 1;
  void (*widen_)(const char*, int64_t, int32_t*) = nullptr;
};

}  // namespace

REGISTER_OP("TbpttTokenWindow")
    .Input("starts: int64")
    .Input("length: int64")
    .Output("window: int32")
    .Attr("path: string")
    .Attr("dtype: {uint8, uint16, uint32, int32}")
    .Attr("offset: int = 0")
    .Attr("num_tokens: int >= 0")
    .Attr("pad_past_end: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle starts, scalar;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &starts));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 0, &scalar));
      DimensionHandle length;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(1, &length));
      c->set_output(0, c->Matrix(c->Dim(starts, 0), length));
      return Status();
    })
    .Doc("Rows of token ids [rows, length] read from a memory-mapped id file (token_window.cc).");

REGISTER_KERNEL_BUILDER(Name("TbpttTokenWindow").Device(DEVICE_CPU), TokenWindowOp);

}  // namespace tbptt
