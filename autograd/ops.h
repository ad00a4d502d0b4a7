// The op library: every differentiable operation on tensors, one header per family.
#pragma once

#include "autograd/generator.h"
#include "autograd/grad_mode.h"
#include "autograd/ops/attention.h"
#include "autograd/ops/creation.h"
#include "autograd/ops/dropout.h"
#include "autograd/ops/elementwise.h"
#include "autograd/ops/index.h"
#include "autograd/ops/matmul.h"
#include "autograd/ops/norm.h"
#include "autograd/ops/reduce.h"
#include "autograd/ops/shape.h"
#include "autograd/ops/softmax.h"
#include "autograd/tensor.h"
