// Argument checks shared by the CPU and CUDA kernels of the gdla ops.
//
// Every failed check names the op, the argument, what was expected and what was received, so a
// caller who bypasses the Python wrappers in gdla/ops.py still gets a message they can act on.
// Shape and value errors raise Python ValueError, dtype errors TypeError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace gdla {

// "(3, 3)", "(5,)" or "()", as Python prints a torch.Size.
inline std::string shape_str(c10::IntArrayRef sizes) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < sizes.size(); ++i) {
    out << (i ? ", " : "") << sizes[i];
  }
  out << (sizes.size() == 1 ? ",)" : ")");
  return out.str();
}

// The shape ``batch + tail``: the shape an argument must have to match another one.
inline std::vector<int64_t> with_tail(c10::IntArrayRef batch, std::initializer_list<int64_t> tail) {
  std::vector<int64_t> full(batch.begin(), batch.end());
  full.insert(full.end(), tail.begin(), tail.end());
  return full;
}

inline std::string dtype_str(c10::ScalarType type) {
  switch (type) {
    case c10::ScalarType::Float:
      return "float32";
    case c10::ScalarType::Double:
      return "float64";
    default:
      return std::string(c10::toString(type));
  }
}

// The leading (batch) dimensions of a tensor with ``trailing`` matrix/vector dimensions.
inline c10::IntArrayRef batch_dims(const at::Tensor& t, int64_t trailing) {
  return t.sizes().slice(0, t.dim() - trailing);
}

inline int64_t batch_count(const at::Tensor& t, int64_t trailing) {
  int64_t count = 1;
  for (int64_t size : batch_dims(t, trailing)) count *= size;
  return count;
}

// The data of ``t``, or null where ``t`` is undefined (an optional argument).
template <typename T>
T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

inline void check_defined(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " must be a tensor; received an undefined tensor");
}

// float32 or float64: the two dtypes every kernel is instantiated for.
inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  check_defined(t, op, name);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
                   " must be float32 or float64; received ", dtype_str(t.scalar_type()));
}

// ``t`` must live on the same device and have the same dtype as ``ref``.
inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name,
                       const char* op) {
  check_defined(t, op, name);
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ", ref_name,
                   " (", dtype_str(ref.scalar_type()), "); received ", dtype_str(t.scalar_type()));
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " must be on the device of ", ref_name, " (",
                    ref.device(), "); received a tensor on ", t.device());
}

// A non-empty stack of matrices, shape (..., rows, cols).
inline void check_matrix(const at::Tensor& t, const char* op, const char* name) {
  check_float(t, op, name);
  TORCH_CHECK_VALUE(t.dim() >= 2, op, ": ", name, " must be a matrix of shape (..., m, n); received shape ",
                    shape_str(t.sizes()));
  TORCH_CHECK_VALUE(t.numel() > 0, op, ": ", name, " must be non-empty; received shape ", shape_str(t.sizes()));
}

// ``t`` must have exactly the shape ``expected``; ``why`` says where the expectation comes from.
inline void check_shape(const at::Tensor& t, const char* name, c10::IntArrayRef expected, const std::string& why,
                        const char* op) {
  TORCH_CHECK_VALUE(t.sizes() == expected, op, ": ", name, " must have shape ", shape_str(expected), " ", why,
                    "; received ", shape_str(t.sizes()));
}

// Which product the inverse losses compare with the identity; the values are the side codes the
// per-problem kernels take (small::side_product).
enum class Side { Right = 0, Left = 1, Both = 2 };

// The one parse of a side name. ``expected`` is how the op's message lists the choices; with
// ``both`` false, 'both' is refused too.
inline Side parse_side(c10::string_view side, const char* op,
                       const char* expected = "one of 'right' (A@M), 'left' (M@A) or 'both'", bool both = true) {
  if (side == "right") return Side::Right;
  if (side == "left") return Side::Left;
  if (both && side == "both") return Side::Both;
  TORCH_CHECK_VALUE(false, op, ": side must be ", expected, "; received '", std::string(side.data(), side.size()),
                    "'");
  return Side::Right;  // unreachable
}

inline const char* side_str(Side side) {
  switch (side) {
    case Side::Right:
      return "right";
    case Side::Left:
      return "left";
    default:
      return "both";
  }
}

}  // namespace gdla
