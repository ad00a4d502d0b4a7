// Element types: the DType tag, the 16-bit float storage types and dtype dispatch.
//
// bf16 and f16 are storage formats: kernels load them into float, compute in float and round
// back on store (round to nearest even), the same contract as mixed-precision GPU kernels.
#pragma once

#include <cstdint>
#include <cstring>
#include <ostream>
#include <string>

#include "kernels/error.h"

#if defined(__CUDACC__)
#define KILN_HOST_DEVICE __host__ __device__
#else
#define KILN_HOST_DEVICE
#endif

namespace kiln {

enum class DType : uint8_t { f32, f64, bf16, f16, i32, i64, boolean };

struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  KILN_HOST_DEVICE explicit bf16(float value) {
    uint32_t u;
    std::memcpy(&u, &value, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a quiet NaN
      bits = static_cast<uint16_t>((u >> 16) | 0x0040u);
    } else {
      uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);  // round half to even
      bits = static_cast<uint16_t>((u + rounding) >> 16);
    }
  }
  KILN_HOST_DEVICE operator float() const {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float value;
    std::memcpy(&value, &u, 4);
    return value;
  }
};

struct f16 {
  uint16_t bits = 0;
  f16() = default;
  KILN_HOST_DEVICE explicit f16(float value) { bits = from_float(value); }
  KILN_HOST_DEVICE operator float() const { return to_float(bits); }

  // IEEE 754 binary16 conversions, round to nearest even, with subnormals, inf and NaN.
  KILN_HOST_DEVICE static uint16_t from_float(float value) {
    uint32_t u;
    std::memcpy(&u, &value, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t magnitude = u & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
    if (magnitude >= 0x47800000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow
    if (magnitude < 0x38800000u) {  // subnormal or zero in half precision
      if (magnitude < 0x33000000u) return static_cast<uint16_t>(sign);  // rounds to zero
      uint32_t exponent = magnitude >> 23;
      uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
      uint32_t shift = 126 - exponent;  // value = mantissa * 2^(exponent-150) = h * 2^-24
      uint32_t half_mantissa = mantissa >> shift;
      uint32_t remainder = mantissa & ((1u << shift) - 1u);
      uint32_t halfway = 1u << (shift - 1);
      if (remainder > halfway || (remainder == halfway && (half_mantissa & 1u))) ++half_mantissa;
      return static_cast<uint16_t>(sign | half_mantissa);
    }
    uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
    return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
  }
  KILN_HOST_DEVICE static float to_float(uint16_t h) {
    uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t u;
    if (exponent == 0x1f) {
      u = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {
      u = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
      u = sign;
    } else {  // subnormal: normalise
      exponent = 113;
      while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        --exponent;
      }
      u = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
    }
    float value;
    std::memcpy(&value, &u, 4);
    return value;
  }
};

inline size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::f16: return 2;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::boolean: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::boolean: return "bool";
  }
  return "?";
}

inline std::ostream& operator<<(std::ostream& os, DType dtype) { return os << dtype_name(dtype); }

inline bool is_floating(DType dtype) {
  return dtype == DType::f32 || dtype == DType::f64 || dtype == DType::bf16 || dtype == DType::f16;
}

// The type arithmetic happens in: float for the 16-bit formats, the type itself otherwise.
template <typename T> struct ComputeType { using type = T; };
template <> struct ComputeType<bf16> { using type = float; };
template <> struct ComputeType<f16> { using type = float; };
template <typename T> using compute_t = typename ComputeType<T>::type;

template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<bf16>() { return DType::bf16; }
template <> constexpr DType dtype_of<f16>() { return DType::f16; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<bool>() { return DType::boolean; }

// dispatch_floating(dtype, "op", [&]<typename T>() { ... }) calls the body with T set to the
// C++ type of a floating dtype, and throws a kiln::Error naming the op for any other dtype.
template <typename Body>
decltype(auto) dispatch_floating(DType dtype, const char* op, Body&& body) {
  switch (dtype) {
    case DType::f32: return body.template operator()<float>();
    case DType::f64: return body.template operator()<double>();
    case DType::bf16: return body.template operator()<bf16>();
    case DType::f16: return body.template operator()<f16>();
    default: KILN_FAIL(op, ": dtype ", dtype_name(dtype), " is not supported (expected a floating dtype)");
  }
}

// Every dtype, including integers and bool.
template <typename Body>
decltype(auto) dispatch_all(DType dtype, const char* op, Body&& body) {
  switch (dtype) {
    case DType::f32: return body.template operator()<float>();
    case DType::f64: return body.template operator()<double>();
    case DType::bf16: return body.template operator()<bf16>();
    case DType::f16: return body.template operator()<f16>();
    case DType::i32: return body.template operator()<int32_t>();
    case DType::i64: return body.template operator()<int64_t>();
    case DType::boolean: return body.template operator()<bool>();
  }
  KILN_FAIL(op, ": unknown dtype");
}

// Numeric dtypes (all but bool).
template <typename Body>
decltype(auto) dispatch_numeric(DType dtype, const char* op, Body&& body) {
  switch (dtype) {
    case DType::f32: return body.template operator()<float>();
    case DType::f64: return body.template operator()<double>();
    case DType::bf16: return body.template operator()<bf16>();
    case DType::f16: return body.template operator()<f16>();
    case DType::i32: return body.template operator()<int32_t>();
    case DType::i64: return body.template operator()<int64_t>();
    default: KILN_FAIL(op, ": dtype ", dtype_name(dtype), " is not supported (expected a numeric dtype)");
  }
}

// Index tensors are i64 or i32.
template <typename Body>
decltype(auto) dispatch_index(DType dtype, const char* op, Body&& body) {
  switch (dtype) {
    case DType::i32: return body.template operator()<int32_t>();
    case DType::i64: return body.template operator()<int64_t>();
    default: KILN_FAIL(op, ": index dtype ", dtype_name(dtype), " is not supported (expected i64 or i32)");
  }
}

}  // namespace kiln
