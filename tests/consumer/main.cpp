// Fits y = 3x - 1 with autograd through an installed kiln; exits non-zero if it does not.
#include <kiln/kiln.h>

#include <cmath>
#include <cstdio>

int main() {
  using namespace kiln;
  Tensor x = arange(0.0, 8.0, 1.0, DType::f32).reshape({8, 1}) / 8.0;
  Tensor y = x * 3.0 - 1.0;
  Tensor w = zeros({1, 1}, TensorOptions(DType::f32).requires_grad(true));
  Tensor b = zeros({1}, TensorOptions(DType::f32).requires_grad(true));
  for (int step = 0; step < 500; ++step) {
    Tensor loss = mean(square(linear(x, w, b) - y));
    w.set_grad(Tensor());
    b.set_grad(Tensor());
    loss.backward();
    NoGradGuard no_grad;
    w.sub_(w.grad(), 0.5);
    b.sub_(b.grad(), 0.5);
  }
  double slope = w.item(), intercept = b.item();
  std::printf("fitted y = %.4f x + %.4f\n", slope, intercept);
  return std::abs(slope - 3.0) < 1e-2 && std::abs(intercept + 1.0) < 1e-2 ? 0 : 1;
}
