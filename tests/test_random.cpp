// Seeded Philox streams: reproducibility, independence from the thread count, and the
// distributions' moments.
#include <catch2/catch.hpp>
#include <omp.h>

#include "kiln.h"

using namespace kiln;

TEST_CASE("the same seed gives the same numbers", "[random]") {
  Generator a(42), b(42), c(43);
  std::vector<float> first = rand({1000}, {}, &a).to_vector<float>();
  std::vector<float> second = rand({1000}, {}, &b).to_vector<float>();
  std::vector<float> third = rand({1000}, {}, &c).to_vector<float>();
  CHECK(first == second);
  CHECK(first != third);
  // A generator advances: the next draw differs from the first.
  CHECK(rand({1000}, {}, &a).to_vector<float>() != first);
}

TEST_CASE("random values do not depend on the thread count", "[random]") {
  int threads = omp_get_max_threads();
  Generator a(7), b(7);
  omp_set_num_threads(1);
  std::vector<double> serial = randn({100000}, DType::f64, &a).to_vector<double>();
  omp_set_num_threads(std::max(2, threads));
  std::vector<double> parallel = randn({100000}, DType::f64, &b).to_vector<double>();
  omp_set_num_threads(threads);
  CHECK(serial == parallel);
}

TEST_CASE("generator state can be saved and restored", "[random]") {
  Generator generator(5);
  rand({10}, {}, &generator);
  GeneratorState state = generator.state();
  std::vector<float> expected = rand({17}, {}, &generator).to_vector<float>();
  generator.set_state(state);
  CHECK(rand({17}, {}, &generator).to_vector<float>() == expected);
}

TEST_CASE("uniform and normal draws have the right moments", "[random]") {
  Generator generator(3);
  const int64_t n = 400000;
  Tensor u = rand({n}, DType::f64, &generator);
  // Mean 1/2 and variance 1/12; the standard error of the mean is about 4.6e-4 here.
  CHECK(mean(u).item() == Approx(0.5).margin(3e-3));
  CHECK(var(u).item() == Approx(1.0 / 12).margin(2e-3));
  CHECK(amin(u).item() >= 0.0);
  CHECK(amax(u).item() < 1.0);
  Tensor z = randn({n}, DType::f32, &generator);
  CHECK(mean(z).item() == Approx(0.0).margin(6e-3));
  CHECK(var(z).item() == Approx(1.0).margin(1e-2));
  Tensor w = empty({n}, DType::f32);
  uniform_(w, -2.0, 3.0, &generator);
  CHECK(amin(w).item() >= -2.0);
  CHECK(amax(w).item() < 3.0);
  CHECK(mean(w).item() == Approx(0.5).margin(2e-2));
}

TEST_CASE("dropout keeps about 1-p of the elements, scaled, and is reproducible", "[random][dropout]") {
  Generator a(11), b(11);
  Tensor x = ones({100000});
  Tensor first = dropout(x, 0.25, true, &a);
  Tensor second = dropout(x, 0.25, true, &b);
  CHECK(first.to_vector<float>() == second.to_vector<float>());
  std::vector<float> values = first.to_vector<float>();
  int64_t kept = 0;
  for (float v : values) {
    if (v != 0.0f) {
      ++kept;
      REQUIRE(v == Approx(1.0 / 0.75));
    }
  }
  CHECK(static_cast<double>(kept) / values.size() == Approx(0.75).margin(0.01));
  CHECK(dropout(x, 0.25, false).is_same(x));
  CHECK(sum(dropout(x, 1.0, true, &a)).item() == 0.0);
}
