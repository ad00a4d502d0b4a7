// The 16-bit float formats: exhaustive round trips and rounding at ties. (Conversions of
// random values are also compared with torch in test_parity.)
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>

#include "kiln.h"

using namespace kiln;

namespace {
float from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}
}  // namespace

TEST_CASE("every f16 and bf16 value survives a round trip through float", "[dtype]") {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    f16 h;
    h.bits = static_cast<uint16_t>(bits);
    float value = static_cast<float>(h);
    if (std::isnan(value)) {
      CHECK(std::isnan(static_cast<float>(f16(value))));
    } else {
      REQUIRE(f16(value).bits == h.bits);
    }
    bf16 b;
    b.bits = static_cast<uint16_t>(bits);
    float wide = static_cast<float>(b);
    if (std::isnan(wide)) {
      CHECK(std::isnan(static_cast<float>(bf16(wide))));
    } else {
      REQUIRE(bf16(wide).bits == b.bits);
    }
  }
}

TEST_CASE("conversions round to nearest, ties to even", "[dtype]") {
  // bf16 keeps 7 fraction bits: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
  CHECK(static_cast<float>(bf16(1.0f + std::ldexp(1.0f, -8))) == 1.0f);
  CHECK(static_cast<float>(bf16(1.0f + 3 * std::ldexp(1.0f, -8))) == 1.0f + std::ldexp(1.0f, -6));
  // f16 keeps 10 fraction bits.
  CHECK(static_cast<float>(f16(1.0f + std::ldexp(1.0f, -11))) == 1.0f);
  CHECK(static_cast<float>(f16(1.0f + 3 * std::ldexp(1.0f, -11))) == 1.0f + std::ldexp(1.0f, -9));
  // f16 overflow, the largest finite value and subnormals.
  CHECK(std::isinf(static_cast<float>(f16(70000.0f))));
  CHECK(static_cast<float>(f16(65504.0f)) == 65504.0f);
  CHECK(static_cast<float>(f16(std::ldexp(1.0f, -24))) == std::ldexp(1.0f, -24));
  CHECK(static_cast<float>(f16(std::ldexp(1.0f, -25))) == 0.0f);  // a tie, to the even zero
  CHECK(static_cast<float>(f16(from_bits(0x33000001u))) == std::ldexp(1.0f, -24));
}

TEST_CASE("tensors convert between every pair of dtypes", "[dtype]") {
  Tensor source = from_vector<float>({0.0f, 1.0f, -3.0f, 2.5f});
  for (DType target : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64}) {
    Tensor converted = source.to(target);
    CHECK(converted.dtype() == target);
    std::vector<double> back = converted.to_vector<double>();
    bool integer = target == DType::i32 || target == DType::i64;
    CHECK(back == std::vector<double>{0.0, 1.0, -3.0, integer ? 2.0 : 2.5});
  }
  CHECK(source.to(DType::boolean).to_vector<bool>() == std::vector<bool>{false, true, true, true});
}
